"""A one-way bottleneck link for the in-memory network: a rate, a bounded tail-drop queue, a delay, random loss and
an MTU, in virtual time.

Why it exists: a congestion controller is only tested when something can be congested. ``Network``'s plain delay
and loss model an infinitely fast path; a :class:`Link` models what netem + tbf give the WAN lab (issue 13): packets
are serialised at ``rate`` bits/s behind a FIFO of at most ``queue_bytes``; a packet that would overflow it is
dropped at the tail, as a router does. It is deterministic (randomness only from the test's seeded ``rand``), so
throughput and queueing in virtual time are exact properties of the algorithms, not of the machine's speed.

Changing ``rate`` mid-run (:meth:`set_rate`) re-times the backlog still queued at the new rate; packets already
past the queue keep their arrival time.
"""

from __future__ import annotations

from typing import Protocol

import attrs


class _Random(Protocol):
    def random(self) -> float: ...

    def gauss(self, mu: float, sigma: float) -> float: ...


class Wander:
    """A link's wandering delay: a smooth random process that heads for a new N(0, jitter) target (clipped to
    +-2 jitter) every max(10 ms, 4 jitter), linear in between. Shared by this module's :class:`Link` and the WAN
    lab's user-space link (tests/wan/link.py), so virtual time sees the jitter the lab has. Why smooth: a sparse
    probe still sees the configured spread, while netem-style per-packet jitter reorders a dense stream heavily,
    which real access links do not (and TCP reads as loss)."""

    def __init__(self, rand: _Random) -> None:
        self._rand = rand
        self._segment = (0.0, 0.0, 0.0, 0.0)  # (t0, offset0, t1, offset1)

    def offset(self, t: float, jitter: float) -> float:
        """The delay's deviation (seconds) for a packet leaving at ``t``; times must not go backwards."""
        if jitter <= 0:
            return 0.0
        t0, o0, t1, o1 = self._segment
        if t >= t1:
            step = max(0.010, 4 * jitter)
            t0, o0 = (t1 if t < t1 + step else t), o1  # continuous; after an idle gap restart from now
            target = min(2 * jitter, max(-2 * jitter, self._rand.gauss(0.0, jitter)))
            t1, o1 = t0 + step, target
            self._segment = (t0, o0, t1, o1)
        return o0 + (o1 - o0) * (t - t0) / (t1 - t0)


@attrs.define
class LinkStats:
    """Counters a test asserts on."""

    sent: int = 0
    sent_bytes: int = 0
    dropped_queue: int = 0
    dropped_loss: int = 0
    dropped_mtu: int = 0
    #: queueing delay of every admitted packet: sum and maximum (seconds), for averages after a warm-up reset
    queue_delay_sum: float = 0.0
    queue_delay_max: float = 0.0
    max_queue_bytes: int = 0


class Link:
    """One direction of a bottleneck. ``rate`` in bits/s (None: no limit), ``queue_bytes`` the FIFO's capacity,
    ``delay`` the propagation delay added after serialisation, ``loss`` a random-loss probability applied before
    the queue (needs ``rand``), ``mtu`` the largest datagram (UDP payload) that passes (None: any).

    ``jitter`` (needs ``rand``) varies the delay as the WAN lab's link does (:class:`Wander`), and never lets a
    packet overtake the one before - a mobile link's delay wanders; it does not reorder."""

    def __init__(
        self,
        *,
        rate: float | None,
        delay: float,
        queue_bytes: int = 1 << 30,
        loss: float = 0.0,
        rand: _Random | None = None,
        mtu: int | None = None,
        jitter: float = 0.0,
    ) -> None:
        if (loss or jitter) and rand is None:
            raise ValueError("random loss and jitter need a seeded rand")
        if rate is not None and rate <= 0:
            raise ValueError("the rate must be positive (or None for no limit)")
        self.delay = delay
        self.queue_bytes = queue_bytes
        self.loss = loss
        self.mtu = mtu
        self._rand = rand
        self._rate_bytes = None if rate is None else rate / 8
        self._busy_until = 0.0
        self.jitter = jitter
        self._wander = None if rand is None else Wander(rand)
        #: the latest arrival handed out (no overtaking)
        self._last_arrival = 0.0
        self.stats = LinkStats()

    @property
    def rate(self) -> float | None:
        return None if self._rate_bytes is None else self._rate_bytes * 8

    def set_rate(self, rate: float | None, now: float) -> None:
        """Change the rate at ``now``; what is still queued drains at the new rate."""
        backlog = self.queued_bytes(now)
        self._rate_bytes = None if rate is None else rate / 8
        self._busy_until = now if self._rate_bytes is None else now + backlog / self._rate_bytes

    def queued_bytes(self, now: float) -> int:
        if self._rate_bytes is None or self._busy_until <= now:
            return 0
        return int((self._busy_until - now) * self._rate_bytes)

    def reset_stats(self) -> None:
        self.stats = LinkStats()

    def admit(self, size: int, now: float) -> float | None:
        """A datagram of ``size`` bytes enters the link at ``now``: its arrival time, or None if it is dropped."""
        stats = self.stats
        if self.mtu is not None and size > self.mtu:
            stats.dropped_mtu += 1
            return None
        if self.loss and self._rand is not None and self._rand.random() < self.loss:
            stats.dropped_loss += 1
            return None
        if self._rate_bytes is None:
            stats.sent += 1
            stats.sent_bytes += size
            return self._arrival(now)
        queued = self.queued_bytes(now)
        if queued + size > self.queue_bytes:
            stats.dropped_queue += 1
            return None
        start = max(now, self._busy_until)
        wait = start - now
        self._busy_until = start + size / self._rate_bytes
        stats.sent += 1
        stats.sent_bytes += size
        stats.queue_delay_sum += wait
        if wait > stats.queue_delay_max:
            stats.queue_delay_max = wait
        if queued + size > stats.max_queue_bytes:
            stats.max_queue_bytes = queued + size
        return self._arrival(self._busy_until)

    def _arrival(self, departure: float) -> float:
        if not self.jitter or self._wander is None:
            return departure + self.delay
        offset = self._wander.offset(departure, self.jitter)
        arrival = max(departure, departure + self.delay + offset, self._last_arrival)
        self._last_arrival = arrival
        return arrival

    def mean_queue_delay(self) -> float:
        return self.stats.queue_delay_sum / self.stats.sent if self.stats.sent else 0.0
