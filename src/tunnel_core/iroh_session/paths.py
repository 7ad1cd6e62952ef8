"""What the user is told about the network path of an iroh connection (reference 3.2 step 6).

iroh may start on a relay and move to a direct UDP path a few milliseconds later, or fall back to the relay
when the direct path dies. Users debugging "why is it slow" need each of those moves, and only those: the
reporter turns path snapshots into one line per change of the selected path.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs


@attrs.frozen
class PathView:
    """The adapter's copy of one iroh PathSnapshot, reduced to what the report needs."""

    remote: str
    is_relay: bool
    selected: bool
    rtt_ms: float | None = None


def _rtt(rtt_ms: float | None) -> str:
    if rtt_ms is None:
        return "rtt ?"
    if rtt_ms < 1:
        return "rtt <1ms"
    return f"rtt {rtt_ms:.0f}ms"


def describe_path(path: PathView) -> str:
    """``Direct 1.2.3.4:5 (rtt 3ms)`` or ``Relay https://relay.example (rtt 40ms)``."""
    kind = "Relay" if path.is_relay else "Direct"
    return f"{kind} {path.remote} ({_rtt(path.rtt_ms)})"


class PathReporter:
    """Remembers the selected path and says something only when it changes (kind or address).

    RTT changes alone are not news: they happen continually and would flood the log.
    """

    def __init__(self) -> None:
        self._current: tuple[str, bool] | None = None

    def update(self, paths: Iterable[PathView]) -> str | None:
        selected = [p for p in paths if p.selected]
        if not selected:
            return None
        path = selected[0]
        key = (path.remote, path.is_relay)
        if key == self._current:
            return None
        self._current = key
        return f"Connection: {describe_path(path)}"
