"""tunnel_iroh.heal.StallDetector in virtual time: when a connection counts as stalled (so the client dials a
probe connection and moves its durable streams to it), when it does not, and how many probes a long cut costs.
The real-process check is tests/outage/test_cut.py (a 20 s cut, iroh e4 back within 2 s of the heal)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from tunnel_iroh.heal import ACTIVE, PROBE_INTERVAL, SLOW_AFTER, SLOW_PROBE_INTERVAL, STALL, StallDetector

STEP = 0.25
#: the nudges of the last ``run``
nudges: list[float] = []


Offsets = list[tuple[int, int, int, int]]


def run(detector: StallDetector, start: float, end: float, rx: Callable[[float], int],
        streams: Callable[[float], Offsets]) -> list[float]:
    """Sample from ``start`` to ``end``; nudge and start a probe whenever due; the probe times."""
    probes = []
    now = start
    while now <= end + 1e-9:
        detector.observe(now, rx(now), streams(now))
        if detector.nudge_due(now):
            detector.nudged(now)
            nudges.append(now)
        if detector.probe_due(now):
            detector.probe_started(now)
            probes.append(now)
        now += STEP
    return probes


class Counter:
    """udp_rx_datagrams: grows by one per sample while ``alive(now)``."""

    def __init__(self, alive: Callable[[float], bool]) -> None:
        self.alive = alive
        self.value = 0

    def __call__(self, now: float) -> int:
        if self.alive(now):
            self.value += 1
        return self.value


class Streams:
    """One durable stream that sent 1 MiB; the peer confirms 64 KiB per sample while ``confirming(now)``."""

    def __init__(self, confirming: Callable[[float], bool], end: int = 1 << 20) -> None:
        self.confirming = confirming
        self.confirmed = 0
        self.end = end

    def __call__(self, now: float) -> Offsets:
        if self.confirming(now):
            self.confirmed = min(self.end, self.confirmed + 65536)
            if self.confirmed == self.end:
                self.end += 1 << 20  # the application keeps writing
        return [(1, self.confirmed, self.end, 0)]


def test_a_cut_with_bytes_waiting_is_a_stall_after_2s_and_probes_every_second() -> None:
    detector = StallDetector(0.0)
    cut = 10.0
    probes = run(detector, 0.0, 20.0, Counter(lambda t: t < cut), Streams(lambda t: t < cut))
    assert detector.stalled
    assert probes[0] == cut + STALL - STEP or probes[0] == cut + STALL, probes  # the last sample before the cut
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert all(abs(g - PROBE_INTERVAL) < 1e-6 for g in gaps), gaps


def test_a_live_slow_path_is_not_a_stall_even_when_nothing_is_confirmed_for_long() -> None:
    """QUIC ACKs keep arriving (rx grows) while the peer's application confirms nothing for 10 s."""
    detector = StallDetector(0.0)
    probes = run(detector, 0.0, 10.0, Counter(lambda t: True), Streams(lambda t: t < 1.0))
    assert probes == [] and not detector.stalled


def test_an_idle_connection_is_not_a_stall() -> None:
    """Nothing waits for a confirmation and nothing moves: iroh's keep-alives come every few seconds, silence
    means nothing. (The streams' first sample counts as movement, so for ACTIVE seconds silences are nudged;
    a live path answers them.)"""
    nudges.clear()
    detector = StallDetector(0.0)

    def rx(now: float) -> int:
        return sum(1 for n in nudges if n < now)  # each nudge answered by the next sample

    probes = run(detector, 0.0, 30.0, rx, lambda now: [(1, 4096, 4096, 77), (2, 0, 0, 0)])
    assert probes == [] and not detector.stalled
    assert nudges and all(n <= ACTIVE + STEP for n in nudges), nudges


def test_a_cut_right_after_the_first_bytes_is_still_noticed() -> None:
    """The stream opened, received its first bytes and the path was cut all before the healer's second sample."""
    nudges.clear()
    detector = StallDetector(0.0)
    probes = run(detector, 0.0, 5.0, Counter(lambda t: False), lambda now: [(1, 0, 0, 4 << 20)])
    assert detector.stalled and detector.kind == "receive" and probes


def test_a_confirmation_ends_the_stall_and_the_probing() -> None:
    detector = StallDetector(0.0)
    streams = Streams(lambda t: t < 1.0 or t >= 6.0)
    probes = run(detector, 0.0, 5.0, Counter(lambda t: t < 1.0), streams)
    assert detector.stalled and probes
    ended = detector.observe(6.0, 999, streams(6.0))
    assert ended and not detector.stalled and not detector.probe_due(6.0)


def test_packets_from_the_server_do_not_end_a_stall_without_a_confirmation() -> None:
    """After the heal the server's own probe may arrive first; our sent bytes still wait for our backed-off PTO,
    so the client keeps probing until it moves (or a confirmation arrives)."""
    detector = StallDetector(0.0)
    probes = run(detector, 0.0, 8.0, Counter(lambda t: t < 1.0 or t > 5.0), Streams(lambda t: t < 1.0))
    assert detector.stalled
    assert probes[-1] >= 7.0


def test_a_long_cut_costs_a_bounded_number_of_probes() -> None:
    detector = StallDetector(0.0)
    end = 300.0
    probes = run(detector, 0.0, end, Counter(lambda t: t < 1.0), Streams(lambda t: t < 1.0))
    fast = SLOW_AFTER / PROBE_INTERVAL + 1
    slow = (end - SLOW_AFTER) / SLOW_PROBE_INTERVAL + 1
    assert len(probes) <= fast + slow, len(probes)
    late = [b - a for a, b in itertools.pairwise(probes) if a > 1.0 + STALL + SLOW_AFTER]
    assert late and all(abs(g - SLOW_PROBE_INTERVAL) < 1e-6 for g in late)


class Download:
    """One durable stream that only receives: 64 KiB per sample while ``flowing(now)``; we confirm it all."""

    def __init__(self, flowing: Callable[[float], bool]) -> None:
        self.flowing = flowing
        self.received = 0

    def __call__(self, now: float) -> Offsets:
        if self.flowing(now):
            self.received += 65536
        return [(1, 0, 0, self.received)]


def test_a_cut_during_a_download_is_a_stall_after_an_unanswered_nudge() -> None:
    """Nothing of ours waits for a confirmation; the server's data stops. A second into the silence the client
    sends its confirmations again; when that is not answered either, the connection is stalled."""
    nudges.clear()
    detector = StallDetector(0.0)
    cut = 10.0
    probes = run(detector, 0.0, 14.0, Counter(lambda t: t < cut), Download(lambda t: t < cut))
    assert detector.stalled and detector.kind == "receive"
    assert nudges and cut + 0.75 <= nudges[0] <= cut + 1.25, nudges
    assert probes and probes[0] <= cut + 2.25, probes


def test_a_download_that_pauses_on_a_live_path_is_not_a_stall() -> None:
    """The nudge is answered (QUIC acknowledges it): the silence was the application's, nothing is dialled."""
    nudges.clear()
    detector = StallDetector(0.0)
    answered: list[float] = []

    def rx(now: float) -> int:
        if now < 3.0 or any(now - 0.25 <= n < now for n in nudges):
            answered.append(now)
        return len(answered)

    probes = run(detector, 0.0, 20.0, rx, Download(lambda t: t < 3.0))
    assert nudges and probes == [] and not detector.stalled
    assert all(n <= 3.0 + 5.0 + 0.25 for n in nudges), nudges  # no nudging once the stream was idle for ACTIVE


def test_data_arriving_again_ends_a_download_stall() -> None:
    detector = StallDetector(0.0)
    download = Download(lambda t: t < 1.0 or t >= 6.0)
    run(detector, 0.0, 5.0, Counter(lambda t: t < 1.0), download)
    assert detector.stalled
    assert detector.observe(6.0, 999, download(6.0)) and not detector.stalled
