"""PeerDriver's clock on the receive path: each datagram is stamped when it is read (issue 13).

A process that is descheduled in the middle of a drain reads the rest of the batch late; stamped with the time the
drain began, a late ACK made every RTT sample short by the stall (WAN lab: min_rtt 18-37 ms on a 50 ms path, and a
BBR window sized on it that collapsed four streams to 1.6 Mbit/s). A scripted reactor and socket stand in for the
runtime here, because the point is the clock the driver hands the machine, not the kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tunnel_io.driver import PeerDriver


class _Clock:
    now = 100.0


class _Reactor:
    """Just enough of tunnel_io.reactor.Reactor: a clock the socket advances, watches kept for the test to fire."""

    def __init__(self, clock: _Clock) -> None:
        self.clock = clock
        self.readable: list[Callable[[], None]] = []

    def time(self) -> float:
        return self.clock.now

    def watch(self, sock: Any, on_readable: Callable[[], None], on_writable: Callable[[], None]) -> Any:
        self.readable.append(on_readable)
        reactor = self

        class _Watch:
            def want(self, *, read: bool, write: bool) -> None:
                pass

            def close(self) -> None:
                reactor.readable.remove(on_readable)

        return _Watch()

    def call_at(self, when: float, fn: Callable[[], None]) -> Any:
        class _Timer:
            def cancel(self) -> None:
                pass

        return _Timer()

    def call_soon(self, fn: Callable[[], None]) -> None:
        pass


class _SlowSocket:
    """Three queued datagrams; reading each takes 10 ms of the clock (the process was descheduled meanwhile)."""

    def __init__(self, clock: _Clock) -> None:
        self.clock = clock
        self.queued = [b"one", b"two", b"three"]

    def recvfrom(self, n: int) -> tuple[bytes, tuple[str, int]]:
        if not self.queued:
            raise BlockingIOError
        self.clock.now += 0.01
        return self.queued.pop(0), ("192.0.2.1", 4433)

    def fileno(self) -> int:
        return 3


class _Machine:
    def __init__(self) -> None:
        self.received: list[tuple[bytes, float]] = []

    def receive_datagram(self, data: bytes, local: Any, remote: Any, now: float) -> None:
        self.received.append((data, now))

    def datagrams_to_send(self, now: float) -> list[Any]:
        return []

    def next_event(self) -> None:
        return None

    def get_timer(self) -> None:
        return None


def test_each_datagram_of_a_drain_gets_the_time_it_was_read() -> None:
    clock = _Clock()
    reactor = _Reactor(clock)
    machine = _Machine()
    driver = PeerDriver(reactor, machine, {("0.0.0.0", 1): _SlowSocket(clock)}, lambda ev: None)  # type: ignore[arg-type]
    reactor.readable[0]()
    assert [data for data, _ in machine.received] == [b"one", b"two", b"three"]
    times = [now for _, now in machine.received]
    assert times == pytest.approx([100.01, 100.02, 100.03])
    driver.close()



class _PacedMachine(_Machine):
    """A sender held by pacing: after every timer it wants the next one 0.4 ms after the time it was handed; it
    notes how far that time stood ahead of the reactor's clock."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self.clock = clock
        self.timer: float | None = clock.now + 0.0004
        self.ahead: list[float] = []

    def get_timer(self) -> float | None:  # type: ignore[override]
        return self.timer

    def handle_timer(self, now: float) -> None:
        self.ahead.append(now - self.clock.now)
        self.timer = now + 0.0004


class _SoonReactor(_Reactor):
    """call_soon callbacks run when the test turns the loop; each turn takes 20 us of the clock."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__(clock)
        self.soon: list[Callable[[], None]] = []
        self.at: float | None = None

    def call_soon(self, fn: Callable[[], None]) -> None:
        self.soon.append(fn)

    def call_at(self, when: float, fn: Callable[[], None]) -> Any:
        self.at = when
        return super().call_at(when, fn)

    def turn(self) -> None:
        self.clock.now += 0.00002
        ready, self.soon = self.soon, []
        for fn in ready:
            fn()


def test_timers_fired_early_never_move_the_clock_ahead_of_the_reactor() -> None:
    """A timer under TIMER_SLACK away fires at once, as if due. Measured from the machine's clock (which already
    stands at the last such timer) rather than the reactor's, a pacing chain moved the clock ahead without bound:
    packets were stamped in the future, sent faster than the pacing rate, and RTT samples came out shorter than
    the path (41 ms on a 50 ms path in the WAN lab)."""
    from tunnel_io.driver import TIMER_SLACK

    clock = _Clock()
    reactor = _SoonReactor(clock)
    machine = _PacedMachine(clock)
    driver = PeerDriver(reactor, machine, {}, lambda ev: None)  # type: ignore[arg-type]
    driver.flush()
    for _ in range(300):
        if reactor.soon:
            reactor.turn()
        else:  # the loop sleeps until the timer it was given
            assert reactor.at is not None
            clock.now = max(clock.now, reactor.at)
            reactor.at = None
            driver._on_timer_at()
    assert len(machine.ahead) >= 200
    assert max(machine.ahead) <= TIMER_SLACK + 1e-9
    driver.close()
