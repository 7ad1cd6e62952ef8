"""Virtual time for deterministic tests of sans-IO machines."""

from __future__ import annotations

import attrs


@attrs.define
class VirtualClock:
    """A clock that only moves when a test says so; machines read ``clock.now`` through their callers."""

    now: float = 1000.0

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self.now += seconds
        return self.now

    def advance_to(self, when: float) -> float:
        self.now = max(self.now, when)
        return self.now
