"""Packetization-layer path MTU discovery (RFC 8899 DPLPMTUD, adapted to QUIC as RFC 9000 section 14.3 allows).

Why it exists: a tunnel starts with 1350-byte QUIC packets because that fits nearly every real path, but a
1500-byte-MTU path carries ~1450-byte packets; at a fixed per-packet CPU cost (issue 13) that is 7 % more data for
the same CPU. Probes are PING + PADDING packets of the candidate size; an acknowledged probe raises the size, a
probe lost ``MAX_PROBES`` times in a row lowers the ceiling. The search is a binary search between the confirmed
size and the ceiling, trying the ceiling itself first (most paths have a plain 1500-byte MTU), and stops when the
interval is narrower than ``GRANULARITY``. After ``RAISE_INTERVAL`` a complete search starts again (RFC 8899's
PMTU_RAISE_TIMER), in case the path got better. A *black hole* (packets of the raised size stop arriving, e.g. the
path changed) reverts to the base size, which is known to work.

This module is only the search state (sans-IO, no aioquic); tunnel_core.quic.connection sends the probes.
"""

from __future__ import annotations

import enum

#: Consecutive losses of one probe size before that size is given up (RFC 8899 MAX_PROBES).
MAX_PROBES = 3
#: Stop searching when the confirmed size and the ceiling are this close (bytes).
GRANULARITY = 8
#: Search again this long after a search completed or a black hole was detected (RFC 8899: 600 s).
RAISE_INTERVAL = 600.0
#: Largest UDP payload of a 1500-byte Ethernet MTU: IPv4 (20-byte header) and IPv6 (40-byte header), less UDP's 8.
ETHERNET_UDP_PAYLOAD_V4 = 1472
ETHERNET_UDP_PAYLOAD_V6 = 1452


class PmtuState(enum.Enum):
    SEARCHING = "searching"
    COMPLETE = "complete"


class PmtuSearch:
    """The DPLPMTUD search for one path. ``base`` is the size known to work, ``ceiling`` the largest to try."""

    def __init__(self, base: int, ceiling: int) -> None:
        if ceiling < base:
            raise ValueError("the PMTU ceiling is below the base size")
        self.base = base
        self.ceiling = ceiling
        self.size = base
        self.state = PmtuState.SEARCHING if ceiling - base >= GRANULARITY else PmtuState.COMPLETE
        self._hi = ceiling
        self._candidate: int | None = ceiling
        self._losses = 0
        self._in_flight: int | None = None
        self._search_again_at: float | None = None
        #: sizes confirmed / given up, for tests and logs
        self.history: list[tuple[int, bool]] = []

    def probe_size(self, now: float) -> int | None:
        """The size to probe now, or None (search complete, or a probe is outstanding)."""
        if self.state is PmtuState.COMPLETE:
            if self._search_again_at is None or now < self._search_again_at:
                return None
            self._restart()
        if self._in_flight is not None or self._candidate is None:
            return None
        self._in_flight = self._candidate
        return self._candidate

    def on_probe_acked(self, size: int, now: float) -> None:
        """A probe of ``size`` arrived: the path carries it."""
        if size != self._in_flight:
            return
        self._in_flight = None
        self._losses = 0
        self.history.append((size, True))
        if size > self.size:
            self.size = size
        self._next(now)

    def on_probe_lost(self, size: int, now: float) -> None:
        """A probe of ``size`` was declared lost; after MAX_PROBES in a row that size is too big."""
        if size != self._in_flight:
            return
        self._in_flight = None
        self._losses += 1
        if self._losses < MAX_PROBES:
            return
        self._losses = 0
        self.history.append((size, False))
        self._hi = size - 1
        self._next(now)

    def on_black_hole(self, now: float) -> None:
        """Packets of the current size stopped getting through: fall back to the base size, search later."""
        self.size = self.base
        self._hi = self.base
        self._in_flight = None
        self._candidate = None
        self.state = PmtuState.COMPLETE
        self._search_again_at = now + RAISE_INTERVAL

    def _next(self, now: float) -> None:
        if self._hi - self.size < GRANULARITY:
            self.state = PmtuState.COMPLETE
            self._candidate = None
            self._search_again_at = now + RAISE_INTERVAL
            return
        self._candidate = (self.size + self._hi + 1) // 2

    def _restart(self) -> None:
        self._hi = self.ceiling
        self._losses = 0
        self._search_again_at = None
        if self.ceiling - self.size < GRANULARITY:
            return
        self.state = PmtuState.SEARCHING
        self._candidate = self.ceiling
