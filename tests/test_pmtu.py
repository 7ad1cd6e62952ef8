"""Path MTU discovery (tunnel_core.quic.pmtu + the probes in TunnelQuicConnection), on the in-memory network with an
MTU limit: datagrams over the limit are dropped, as a router with a 1500-byte MTU and DF set does."""

from __future__ import annotations

import random

import pytest
from tests.helpers.bulk import MBIT, Flow, add_flow, run_for

from tunnel_core.quic.pmtu import GRANULARITY, MAX_PROBES, RAISE_INTERVAL, PmtuSearch, PmtuState
from tunnel_core.testing import Link, Network, VirtualClock

BASE = 1350
CEILING = 1472


def _flow(mtu: int, congestion: str = "bbr") -> tuple[Network, Link, Flow]:
    network = Network(VirtualClock(), random.Random(1))
    forward = Link(rate=20 * MBIT, delay=0.01, queue_bytes=300_000, mtu=mtu)
    backward = Link(rate=20 * MBIT, delay=0.01, queue_bytes=300_000, mtu=mtu)
    flow = add_flow(network, 1, forward=forward, backward=backward, congestion=congestion, pmtu_ceiling=CEILING)
    flow.sender.start(network.clock.now)
    return network, forward, flow


def test_search_tries_the_ceiling_first_then_bisects() -> None:
    search = PmtuSearch(BASE, CEILING)
    assert search.probe_size(0.0) == CEILING
    assert search.probe_size(0.0) is None  # one probe at a time
    for _ in range(MAX_PROBES - 1):
        search.on_probe_lost(CEILING, 0.0)
        assert search.probe_size(0.0) == CEILING  # retried until MAX_PROBES losses
    search.on_probe_lost(CEILING, 0.0)
    size = search.probe_size(0.0)
    assert size == (BASE + CEILING - 1 + 1) // 2
    search.on_probe_acked(size, 0.0)
    assert search.size == size
    nxt = search.probe_size(0.0)
    for _ in range(100):  # the path carries anything below 1440
        if nxt is None:
            break
        if nxt < 1440:
            search.on_probe_acked(nxt, 0.0)
        else:
            search.on_probe_lost(nxt, 0.0)
        nxt = search.probe_size(0.0)
    assert search.state is PmtuState.COMPLETE
    assert 1440 - GRANULARITY <= search.size < 1440


def test_search_restarts_after_the_raise_interval_and_black_hole_falls_back() -> None:
    search = PmtuSearch(BASE, CEILING)
    search.on_probe_acked(search.probe_size(0.0) or 0, 0.0)
    assert search.size == CEILING and search.state is PmtuState.COMPLETE
    search.on_black_hole(10.0)
    assert search.size == BASE
    assert search.probe_size(10.0 + RAISE_INTERVAL - 1) is None
    assert search.probe_size(10.0 + RAISE_INTERVAL) == CEILING
    with pytest.raises(ValueError):
        PmtuSearch(1400, 1300)


def test_a_1500_byte_mtu_path_carries_1472_byte_packets() -> None:
    network, forward, flow = _flow(mtu=1472)
    run_for(network, 1.0)
    assert flow.conn.max_datagram_size == CEILING
    assert flow.conn.pmtu is not None and flow.conn.pmtu.state is PmtuState.COMPLETE
    assert forward.stats.dropped_mtu == 0
    # the data packets really are that big now
    before = forward.stats.sent_bytes, forward.stats.sent
    run_for(network, 0.2)
    sent_bytes, sent = forward.stats.sent_bytes - before[0], forward.stats.sent - before[1]
    assert sent_bytes / sent > 1450


def test_lost_probes_narrow_the_search_to_what_the_path_carries() -> None:
    network, forward, flow = _flow(mtu=1400)
    run_for(network, 1.5)
    assert 1400 - GRANULARITY <= flow.conn.max_datagram_size <= 1400
    assert flow.conn.pmtu is not None and flow.conn.pmtu.state is PmtuState.COMPLETE
    # only probes were ever too big: no data packet was dropped for its size
    assert forward.stats.dropped_mtu == flow.conn._pmtu_probes_sent - len(
        [ok for _size, ok in flow.conn.pmtu.history if ok])
    assert flow.receiver.received > 1_000_000


@pytest.mark.parametrize("congestion", ["bbr", "cubic"])
def test_a_black_hole_falls_back_to_the_base_size_and_the_transfer_goes_on(congestion: str) -> None:
    network, forward, flow = _flow(mtu=1472, congestion=congestion)
    run_for(network, 1.0)
    assert flow.conn.max_datagram_size == CEILING
    forward.mtu = 1400  # the path changes under the connection
    run_for(network, 1.0)
    assert flow.conn.max_datagram_size == BASE
    received = flow.receiver.received
    run_for(network, 0.5)
    assert flow.receiver.received - received > 500_000  # 0.5 s at 20 Mbit/s is 1.25 MB
