"""tunnel_core.testing.Link: the bottleneck the congestion tests stand on must itself be right."""

from __future__ import annotations

import random

import pytest

from tunnel_core.testing import Link, Network, VirtualClock
from tunnel_core.types import Transmit


def test_serialises_at_the_rate_and_adds_the_delay() -> None:
    link = Link(rate=8_000_000, delay=0.01)  # 1 MB/s: a 1000-byte packet takes 1 ms
    assert link.admit(1000, 0.0) == pytest.approx(0.011)
    assert link.admit(1000, 0.0) == pytest.approx(0.012)  # waited 1 ms behind the first
    assert link.queued_bytes(0.0) == 2000
    assert link.admit(1000, 0.5) == pytest.approx(0.511)  # the queue drained meanwhile
    assert link.stats.queue_delay_max == pytest.approx(0.001)


def test_tail_drop_when_the_queue_is_full() -> None:
    link = Link(rate=8_000_000, delay=0.0, queue_bytes=2500)
    assert link.admit(1000, 0.0) is not None
    assert link.admit(1000, 0.0) is not None
    assert link.admit(1000, 0.0) is None  # 3000 > 2500
    assert link.stats.dropped_queue == 1 and link.stats.sent == 2


def test_a_rate_change_retimes_the_backlog() -> None:
    link = Link(rate=8_000_000, delay=0.0)
    for _ in range(10):
        link.admit(1000, 0.0)
    link.set_rate(800_000, 0.005)  # 5000 bytes still queued, now at 100 kB/s: 50 ms
    assert link.admit(1000, 0.005) == pytest.approx(0.005 + 0.05 + 0.01)


def test_random_loss_and_mtu() -> None:
    link = Link(rate=None, delay=0.0, loss=0.5, rand=random.Random(3), mtu=1400)
    assert link.admit(1401, 0.0) is None and link.stats.dropped_mtu == 1
    results = [link.admit(100, 0.0) for _ in range(1000)]
    assert 400 < sum(r is None for r in results) < 600
    with pytest.raises(ValueError):
        Link(rate=None, delay=0.0, loss=0.1)



def test_jitter_wanders_the_delay_without_reordering() -> None:
    """The WAN lab's jitter model: the delay spreads over about +-2 jitter around its mean, and packets keep their
    order (a sparse probe sees the spread; a dense stream is never reordered)."""
    link = Link(rate=None, delay=0.05, jitter=0.01, rand=random.Random(5))
    sends = [i * 0.001 for i in range(5000)]  # 5 s at one packet per ms
    arrivals = [link.admit(100, t) for t in sends]
    assert all(a is not None for a in arrivals)
    delays = [a - t for a, t in zip(arrivals, sends, strict=True) if a is not None]
    assert arrivals == sorted(arrivals)  # type: ignore[type-var]
    assert min(delays) >= 0.05 - 0.02 - 1e-9 and max(delays) <= 0.05 + 0.02 + 0.001
    assert max(delays) - min(delays) > 0.02  # it does wander
    assert abs(sum(delays) / len(delays) - 0.05) < 0.005
    with pytest.raises(ValueError):
        Link(rate=None, delay=0.0, jitter=0.01)

class _Sink:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, float]] = []

    def receive_datagram(self, data: bytes, local: object, remote: object, now: float) -> None:
        self.got.append((data, now))

    def datagrams_to_send(self, now: float) -> list[Transmit]:
        return []

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        pass


def test_network_routes_one_direction_through_a_link() -> None:
    network = Network(VirtualClock(now=0.0), delay=0.001)
    a, b = network.add_host("10.0.0.1"), network.add_host("10.0.0.2")
    sink_a, sink_b = _Sink(), _Sink()
    addr_a, addr_b = a.bind(sink_a, 1), b.bind(sink_b, 2)
    link = network.add_link(a.ip, b.ip, Link(rate=8_000_000, delay=0.02, queue_bytes=1500))
    network.send(Transmit(b"x" * 1000, addr_a, addr_b))
    network.send(Transmit(b"y" * 1000, addr_a, addr_b))  # does not fit the 1500-byte queue
    network.send(Transmit(b"z", addr_b, addr_a))  # the reverse direction has no link: plain 1 ms delay
    network.run_until_quiet(1.0)
    assert [(d[:1], round(t, 6)) for d, t in sink_b.got] == [(b"x", 0.021)]
    assert [(d, round(t, 6)) for d, t in sink_a.got] == [(b"z", 0.001)]
    assert link.stats.dropped_queue == 1
