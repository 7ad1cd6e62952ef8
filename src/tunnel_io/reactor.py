"""The whole contract between the runtime-neutral I/O layer and a runtime: a small callback "reactor".

Everything in ``tunnel_io`` (the driver of a Peer over UDP sockets, the local TCP/UDP forwarding, happy eyeballs)
is written once against this interface; each runtime (``tunnel_asyncio``, ``tunnel_trio``, ``tunnel_gevent``)
implements it in a few dozen lines, and ``tunnel_io.testing.SelectReactor`` is the reference implementation the
contract suite (tests/io/test_reactor_contract.py) holds every runtime to.

Why synchronous callbacks on readiness and not ``await wait_readable``: gevent cannot await, and on asyncio an
awaited wait costs a future and a re-registration per wake-up (88 µs against 19 µs per ping-pong round trip on the
dev machine, adapters-study.md). The hot path is already "readable -> drain -> feed the machine -> flush", which is a
callback.

Rules every implementation keeps (the contract suite checks them):

- callbacks run on the runtime's own thread, one at a time, never re-entered from inside another callback;
- a callback may call any member (arm, disarm, close, schedule) of any watch or timer, its own included;
- after ``Watch.close()`` or ``Timer.cancel()`` the callback never runs again, even if it was already due;
- ``call_at`` fires no earlier than ``time() >= when`` as the reactor measures it (a few µs of scheduling jitter
  later is fine); the order of timers due at the same moment is unspecified (asyncio and libev differ);
- ``call_soon`` callbacks run in the order they were scheduled, one scheduled from inside a callback after those
  already queued;
- ``run_blocking`` reports on the reactor's thread; its ``fn`` runs elsewhere.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any, Protocol


class Watch(Protocol):
    """Readiness interest in one socket. Neither direction is armed until ``want`` says so."""

    def want(self, *, read: bool, write: bool) -> None:
        """Arm or disarm the two callbacks (pause reading = ``read=False``). A watch disarmed in both directions
        holds nothing: dropping it and watching the same socket anew is how a socket changes hands."""

    def close(self) -> None:
        """Disarm both callbacks for good, then close the socket (in the order the runtime needs)."""


class Timer(Protocol):
    def cancel(self) -> None:
        """The callback will not run (idempotent; harmless after it ran)."""


class Reactor(Protocol):
    """What a runtime must offer the neutral layer."""

    def time(self) -> float:
        """The monotonic clock the runtime's timers use."""

    def call_at(self, when: float, fn: Callable[[], None]) -> Timer:
        """Run ``fn`` once ``time() >= when``."""

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` after the current callback returns, before waiting for I/O again (flush coalescing)."""

    def watch(self, sock: Any, on_readable: Callable[[], None], on_writable: Callable[[], None]) -> Watch:
        """Start watching ``sock`` (a non-blocking socket); arm directions with ``Watch.want``."""

    def run_blocking(self, fn: Callable[[], Any], done: Callable[[bool, Any], None], *, subject: Any = None) -> None:
        """Run ``fn`` where it may block (a thread), then call ``done(True, result)`` or ``done(False, exception)``
        on the reactor. ``subject`` is what ``fn`` blocks on (stdin): gevent calls ``fn`` from a greenlet instead
        when that object is cooperative. Never keeps the process alive: a call still blocked (stdin) when the
        program ends is abandoned."""

    def defer(self, fn: Callable[[], None]) -> None:
        """Like ``call_soon``, for steps that run user code which may block briefly or switch (console streams,
        the flow itself): a greenlet of its own on gevent, whose hub callbacks must never block."""


class AlarmTimers:
    """Many timers over one alarm, for runtimes whose cheapest timer primitive is a single movable deadline (trio's
    cancel-scope deadline, a select timeout).

    ``set_alarm(when | None)`` is told whenever the earliest live timer changes; the runtime calls ``fire(now)`` when
    the alarm goes off. Cancelled entries are dropped lazily when they reach the top.
    """

    def __init__(self, set_alarm: Callable[[float | None], None]) -> None:
        self._heap: list[tuple[float, int, _AlarmTimer]] = []
        self._seq = itertools.count()
        self._set_alarm = set_alarm
        self._alarm: float | None = None

    def call_at(self, when: float, fn: Callable[[], None]) -> _AlarmTimer:
        timer = _AlarmTimer(fn)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        if self._alarm is None or when < self._alarm:
            self._alarm = when
            self._set_alarm(when)
        return timer

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].fn is None:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def fire(self, now: float) -> None:
        """Run every timer due at ``now`` (in deadline order), then re-arm the alarm for the next one."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _when, _seq, timer = heapq.heappop(heap)
            fn, timer.fn = timer.fn, None
            if fn is not None:
                fn()
        self._alarm = self.next_deadline()
        self._set_alarm(self._alarm)


class _AlarmTimer:
    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn: Callable[[], None] | None = fn

    def cancel(self) -> None:
        self.fn = None
