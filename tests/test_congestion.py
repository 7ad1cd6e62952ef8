"""The congestion controllers on a virtual bottleneck (issue 13): two real aioquic connections with the tunnel's QUIC
configuration move bulk data through ``tunnel_core.testing.Link`` s in virtual time.

These are not speed tests: a virtual-time run does not depend on the machine's speed, so rates, queueing delays and
the BBR-versus-CUBIC comparison are deterministic properties of the algorithms (seeded loss).

The path is issue 13's ``broadband`` profile: 100 Mbit/s, 50 ms round trip (25 ms each way), a 200 ms tail-drop
queue (the deep buffer of the fairness scenario), so a loss-based controller can hide a large standing queue in it.
One BDP is 100 Mbit/s x 50 ms = 625 kB = 50 ms of queue.
"""

from __future__ import annotations

import random

import pytest
from tests.helpers.bulk import MBIT, Flow, add_flow, run_for

from tunnel_core.errors import LocalProtocolError
from tunnel_core.quic import CONGESTION_CONTROLLERS, DEFAULT_CONGESTION, check_congestion, make_configuration
from tunnel_core.quic.bbr import (
    CWND_GAIN,
    CWND_RTT_CAP,
    EXTRA_ACKED_MAX_TIME,
    BbrCongestionControl,
    ModelPacer,
)
from tunnel_core.quic.connection import ACK_EVERY
from tunnel_core.testing import Link, Network, VirtualClock

RATE = 100 * MBIT
RTT = 0.05
QUEUE = int(RATE / 8 * 0.2)


def _path(*, loss: float = 0.0, seed: int = 1, queue: int = QUEUE) -> tuple[Network, Link, Link]:
    rand = random.Random(seed)
    network = Network(VirtualClock(), rand)
    forward = Link(rate=RATE, delay=RTT / 2, queue_bytes=queue, loss=loss, rand=rand)
    backward = Link(rate=RATE, delay=RTT / 2, queue_bytes=queue)
    return network, forward, backward


def _bulk(congestion: str, *, loss: float = 0.0, queue: int = QUEUE) -> tuple[Network, Link, Link, Flow, float]:
    network, forward, backward = _path(loss=loss, queue=queue)
    flow = add_flow(network, 1, forward=forward, backward=backward, congestion=congestion)
    start = network.clock.now
    flow.sender.start(start)
    return network, forward, backward, flow, start


def test_the_controllers_offered_and_the_default() -> None:
    assert CONGESTION_CONTROLLERS == ("bbr", "cubic", "reno")
    assert DEFAULT_CONGESTION in CONGESTION_CONTROLLERS
    assert check_congestion("bbr") == "bbr"
    with pytest.raises(LocalProtocolError, match="unknown congestion controller 'vegas'"):
        check_congestion("vegas")
    assert make_configuration(is_client=True, congestion_control="bbr").congestion_control_algorithm == "bbr"
    assert make_configuration(is_client=True).congestion_control_algorithm == DEFAULT_CONGESTION


def test_bbr_fills_the_link_and_keeps_the_queue_short() -> None:
    network, forward, _back, flow, start = _bulk("bbr")
    run_for(network, 1.5)  # STARTUP and DRAIN are over well within 1.5 s (~30 round trips)
    forward.reset_stats()
    run_for(network, 2.5)
    cc = flow.conn._loss._cc
    assert isinstance(cc, BbrCongestionControl) and isinstance(flow.conn._loss._pacer, ModelPacer)
    assert cc.mode == "probe_bw"
    assert flow.goodput(start + 1.5, start + 4.0) >= 0.85 * RATE
    # BBR paces at the bottleneck rate: the mean queueing delay stays near zero (< 0.2 BDP) and even the
    # 1.25-gain probes stay below one BDP (50 ms), in a buffer that would hold four.
    assert forward.mean_queue_delay() < 0.2 * RTT
    assert forward.stats.queue_delay_max < RTT
    assert forward.stats.dropped_queue == 0


@pytest.mark.parametrize("granularity,delay", [(0.001, 0.0003), (0.001, 0.003)])
def test_bbr_fills_the_link_when_its_timers_fire_late(granularity: float, delay: float) -> None:
    """A real event loop wakes late: asyncio's epoll rounds every wait up to whole milliseconds, and a busy host
    adds more. The sender's timers here fire like that; the link must still be full, the estimate right and the
    queue short (the pacer measures the lateness and keeps the credit it brings, ModelPacer). What this model does
    not have - the CPU time each wake-up costs, ACKs read late by a busy process - is why the first pacer passed
    here too and still fell short in the WAN lab (docs/congestion.md)."""
    network, forward, _back, flow, start = _bulk("bbr")
    flow.sender.wake_granularity = granularity
    flow.sender.wake_delay = delay
    run_for(network, 1.5)
    forward.reset_stats()
    run_for(network, 2.5)
    cc = flow.conn._loss._cc
    assert flow.goodput(start + 1.5, start + 4.0) >= 0.85 * RATE
    assert cc.bandwidth * 8 >= 0.85 * RATE
    assert forward.mean_queue_delay() < 0.2 * RTT


def test_cubic_in_the_same_buffer_builds_a_standing_queue() -> None:
    """The contrast that makes the previous test mean something: a loss-based controller fills the buffer."""
    network, forward, _back, flow, start = _bulk("cubic")
    run_for(network, 1.5)
    forward.reset_stats()
    run_for(network, 1.0)
    assert flow.goodput(start + 1.5, start + 2.5) >= 0.85 * RATE
    assert forward.mean_queue_delay() > 0.5 * RTT


def test_one_percent_random_loss_bbr_keeps_the_link_where_cubic_and_reno_collapse() -> None:
    rates = {}
    for congestion in ("bbr", "cubic", "reno"):
        network, _fwd, _back, flow, start = _bulk(congestion, loss=0.01)
        run_for(network, 3.0)
        rates[congestion] = flow.goodput(start + 1.0, start + 3.0)
    # The Mathis bound for a Reno-like sender here is ~2.6 Mbit/s (issue 13); BBR ignores loss below 2 %.
    assert rates["bbr"] >= 0.7 * RATE, rates
    assert rates["cubic"] < 0.1 * RATE and rates["reno"] < 0.1 * RATE, rates
    assert rates["bbr"] >= 10 * max(rates["cubic"], rates["reno"]), rates


def test_two_percent_random_loss_is_learned_as_the_paths_own() -> None:
    """A mobile-like path losing 2 % at random sits at the 2 % threshold; the loss rate measured in cruise rounds
    is the path's own and raises the threshold, so bbr keeps most of the link. Before that it was cut every few
    rounds (the WAN lab's ``mobile``: 7-8 Mbit/s of 20)."""
    network, _fwd, _back, flow, start = _bulk("bbr", loss=0.02)
    run_for(network, 6.0)
    cc = flow.sender.conn._loss._cc
    assert 0.01 < cc.base_loss < 0.03, cc.base_loss
    assert flow.goodput(start + 2.0, start + 6.0) >= 0.7 * RATE


@pytest.mark.parametrize("seed", [2, 3])
def test_a_mobile_path_whose_delay_wanders_keeps_most_of_its_rate(seed: int) -> None:
    """The WAN lab's ``mobile``: 20 Mbit/s, 50 ms +- 15 ms of jitter and 2 % loss each way, a 50 ms queue. min_rtt
    is the delay's rare low point (~60 ms where a round takes ~100), so a loss bound of bw x min_rtt held the window
    to ~60 % of what the path carries, and a probe phase (one min_rtt) often began and ended inside one round and
    was never counted as one, so the bound barely grew: 8.8 and 10.2 Mbit/s for these seeds before, BBR TCP in
    the lab keeps 17."""
    rand = random.Random(seed)
    network = Network(VirtualClock(), rand)
    rate = 20 * MBIT
    links = [Link(rate=rate, delay=0.05, jitter=0.015, loss=0.02, queue_bytes=int(rate / 8 * 0.05), rand=rand)
             for _ in range(2)]
    flow = add_flow(network, 1, forward=links[0], backward=links[1], congestion="bbr")
    start = network.clock.now
    flow.sender.start(start)
    run_for(network, 10.0)
    assert flow.goodput(start + 2.0, start + 10.0) >= 0.75 * rate

def test_bbr_backs_off_when_the_rate_drops() -> None:
    network, forward, _back, flow, _start = _bulk("bbr")
    run_for(network, 2.0)
    forward.set_rate(20 * MBIT, network.clock.now)
    run_for(network, 1.0)  # the bandwidth filter forgets 100 Mbit/s within ~10 min_rtt
    forward.reset_stats()
    t = network.clock.now
    run_for(network, 1.0)
    cc = flow.conn._loss._cc
    assert cc.bandwidth * 8 < 25 * MBIT
    assert flow.goodput(t, t + 1.0) >= 0.85 * 20 * MBIT
    # Before the drop the queue was empty; after it, BBR's standing queue stays within its design bound - the window
    # is 2 x bw x RTT (RTT capped at CWND_RTT_CAP = 4 min_rtt) plus at most EXTRA_ACKED_MAX_TIME of sending for ACK
    # aggregation, so 7 BDP + 20 ms of queue - in a buffer that is 1 s deep at 20 Mbit/s. (Measured: ~180 ms, one
    # bandwidth-filter span after the drop; with the cap at 2 it was ~100 ms, but BBR starved next to kernel CUBIC.)
    bound = (CWND_GAIN * CWND_RTT_CAP - 1) * RTT + EXTRA_ACKED_MAX_TIME
    assert forward.stats.queue_delay_max < bound + 0.005
    assert forward.stats.dropped_queue == 0


def test_bbr_on_a_shallow_buffer_bounds_its_loss() -> None:
    """A buffer of 0.1 BDP: BBRv1 with a 2-BDP window would overflow it every round; the loss bound
    (inflight_hi) brings the loss rate back under control while keeping most of the link."""
    network, forward, _back, flow, start = _bulk("bbr", queue=int(RATE / 8 * RTT * 0.1))
    run_for(network, 2.0)
    forward.reset_stats()
    run_for(network, 2.0)
    stats = forward.stats
    assert flow.goodput(start + 2.0, start + 4.0) >= 0.8 * RATE
    assert stats.dropped_queue < 0.02 * (stats.sent + stats.dropped_queue)


def test_bbr_and_cubic_share_a_deep_buffered_bottleneck() -> None:
    """Issue 13's fairness scenario in virtual time: one BBR and one CUBIC flow (aioquic's, standing in for the
    kernel's CUBIC TCP, which the WAN lab checks) on one 100 Mbit/s link with a 200 ms queue. Neither flow may get
    less than a quarter of the link."""
    network, forward, backward = _path()
    bbr = add_flow(network, 1, forward=forward, backward=backward, congestion="bbr")
    cubic = add_flow(network, 2, forward=forward, backward=backward, congestion="cubic")
    start = network.clock.now
    bbr.sender.start(start)
    cubic.sender.start(start)
    run_for(network, 12.0)  # past BBR's first PROBE_RTT (5 s) and the min_rtt expiry (10 s)
    shares = {name: flow.goodput(start + 2.0, start + 12.0) / RATE for name, flow in (("bbr", bbr), ("cubic", cubic))}
    assert min(shares.values()) >= 0.25, shares
    assert sum(shares.values()) >= 0.85, shares


@pytest.mark.parametrize("congestion", ["bbr", "cubic"])
def test_fewer_ack_only_packets_under_bulk_load(congestion: str) -> None:
    """aioquic acks 1 ms after the first unacknowledged packet: at 20 Mbit/s (~1.9 packets per ms) that is one ACK
    for every two data packets. Ours waits for ACK_EVERY packets or srtt/8, at no cost in throughput."""
    results = {}
    for ack_every in (1, ACK_EVERY):  # 1: aioquic's own policy, untouched
        rate = 20 * MBIT
        network = Network(VirtualClock(), random.Random(1))
        forward = Link(rate=rate, delay=RTT / 2, queue_bytes=int(rate / 8 * 0.2))
        backward = Link(rate=rate, delay=RTT / 2, queue_bytes=int(rate / 8 * 0.2))
        flow = add_flow(network, 1, forward=forward, backward=backward, congestion=congestion, ack_every=ack_every)
        start = network.clock.now
        flow.sender.start(start)
        run_for(network, 1.5)
        forward.reset_stats()
        backward.reset_stats()
        run_for(network, 1.5)
        results[ack_every] = (backward.stats.sent / forward.stats.sent, flow.goodput(start + 1.5, start + 3.0))
    (stock_ratio, stock_rate), (ours_ratio, ours_rate) = results[1], results[ACK_EVERY]
    assert stock_ratio > 0.4
    assert ours_ratio < 0.25 * stock_ratio, results
    assert ours_rate >= 0.97 * stock_rate, results


def test_bbr_never_believes_a_round_trip_below_aioquics_granularity() -> None:
    """A same-instant harness (or loopback) gives RTT samples of ~0; a zero min_rtt would make every BDP zero and
    pin the window at its floor."""
    cc = BbrCongestionControl(max_datagram_size=1350)
    cc.on_rtt_measurement(now=1.0, rtt=0.0)
    assert cc.min_rtt == 0.001


def test_loss_beside_a_standing_queue_is_congestion_random_loss_is_not() -> None:
    """1 % loss on a path without a queue (Wi-Fi) is ignored; the same 1 % while the round's smallest RTT shows a
    standing queue of 3 x min_rtt (a loss-based flow filling a deep buffer) is congestion - the rule that lets BBR
    yield to CUBIC TCP in the WAN lab's fairness run. STARTUP keeps 2 %: its queue is its own."""
    cc = BbrCongestionControl(max_datagram_size=1350)
    cc.min_rtt = 0.05

    def congested(mode: str, recent_rtt: float) -> bool:
        cc.mode = mode
        cc._recent_rtt = recent_rtt
        cc._loss_window.clear()
        cc._round_delivered, cc._round_lost, cc._round_lost_packets = 99 * 1350 * 20, 1350 * 20, 20  # 1 % of 2000
        return cc._round_congested()

    assert not congested("probe_bw", 0.055)  # jitter, no queue
    assert not congested("probe_bw", 0.09)  # our own probing queue (< 2.5 x min_rtt)
    assert congested("probe_bw", 0.15)  # 100 ms of someone else's queue
    assert not congested("startup", 0.15)
