"""Short outages end nothing, and traffic resumes within about a second of the path's return (issue 15, item 1).

In-memory network, virtual time: a transfer runs, the path between the two hosts is cut for 20 s (shorter than
consent's 30 s and QUIC's idle limit), then healed. During the cut QUIC's probe timeout backs off exponentially; the
ICE consent check that is answered again makes the Peer probe at once (``TunnelQuicConnection.probe_now``).
"""

from __future__ import annotations

import logging

import pytest
from tests.test_peer import Side, _pair

from tunnel_core.forwarding import events as fe
from tunnel_core.ice import ConsentDegraded, ConsentRestored, IceAgent
from tunnel_core.peer import TunnelClosed, TunnelReady
from tunnel_core.testing import VirtualClock
from tunnel_core.testing.network import Network

CLIENT_IP, SERVER_IP = "198.51.100.1", "198.51.100.2"
PAYLOAD = bytes(range(256)) * 8192  # 2 MiB


class Received:
    """What the server's application got so far, and when it last grew (virtual time)."""

    def __init__(self, server: Side, net: Network) -> None:
        self.server = server
        self.net = net
        self.data = bytearray()
        self.grew_at: list[float] = []
        self._seen = 0

    def poll(self) -> int:
        self.server.drain()
        events = self.server.events
        for e in events[self._seen:]:
            if isinstance(e, fe.SendTcp):
                self.data += e.data
                self.grew_at.append(self.net.clock.now)
        self._seen = len(events)
        return len(self.data)


def _start_transfer(net: Network, cut_after: int) -> tuple[Side, Side, Received]:
    client, server = _pair(net, CLIENT_IP, SERVER_IP)
    assert net.run_until(lambda: client.has(TunnelReady) and server.has(TunnelReady), net.clock.now + 30)
    flow = client.peer.session.open_tcp(net.clock.now)
    client.peer.session.flow_data(flow, PAYLOAD)
    assert net.run_until(lambda: server.has(fe.DialTcp), net.clock.now + 5)
    server.peer.session.flow_connected(server.first(fe.DialTcp).flow_id)
    got = Received(server, net)
    assert net.run_until(lambda: got.poll() >= cut_after, net.clock.now + 30)
    assert got.poll() < len(PAYLOAD), "the cut must fall inside the transfer"
    return client, server, got


def _cut_and_heal(net: Network, got: Received, seconds: float) -> float:
    """Cut the path for ``seconds``, heal it; how long after the heal the server's application got more bytes."""
    net.cut(CLIENT_IP, SERVER_IP)
    net.run_for(seconds)
    during = got.poll()
    healed_at = net.clock.now
    net.heal(CLIENT_IP, SERVER_IP)
    assert net.run_until(lambda: got.poll() > during, healed_at + 60)
    return got.grew_at[-1] - healed_at


def test_a_20s_cut_mid_transfer_ends_nothing_and_traffic_resumes_within_a_second(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tunnel_core.peer")
    net = Network(VirtualClock())
    client, server, got = _start_transfer(net, cut_after=256 * 1024)
    resumed_after = _cut_and_heal(net, got, 20.0)
    assert resumed_after <= 1.5, resumed_after
    assert net.run_until(lambda: got.poll() >= len(PAYLOAD), net.clock.now + 60)
    assert bytes(got.data) == PAYLOAD
    for side in (client, server):
        assert not side.has(TunnelClosed) and not side.peer.closed
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("Tunnel degraded") for line in lines), lines
    assert any(line.startswith("Tunnel back after") for line in lines), lines


def test_without_the_prod_quic_would_wait_for_its_backed_off_probe() -> None:
    """The control experiment: the same cut with probe_now disabled resumes only at QUIC's next (late) probe.

    This is what makes the test above meaningful: the one-second resume comes from the consent check's prod."""
    net = Network(VirtualClock())
    client, server, got = _start_transfer(net, cut_after=256 * 1024)
    for side in (client, server):
        side.peer.quic.probe_now = lambda now: None  # type: ignore[union-attr]
    assert _cut_and_heal(net, got, 20.0) > 1.5


def test_the_agent_reports_degraded_once_then_restored_with_the_outage() -> None:
    net = Network(VirtualClock())
    client, server = _pair(net, CLIENT_IP, SERVER_IP)
    assert net.run_until(lambda: client.has(TunnelReady) and server.has(TunnelReady), net.clock.now + 30)
    seen: list[tuple[object, float]] = []
    agent: IceAgent = client.agent
    original = agent.next_event

    def spy():  # the Peer consumes agent events; record them on the way
        e = original()
        if e is not None:
            seen.append((e, net.clock.now))
        return e

    agent.next_event = spy  # type: ignore[method-assign]
    cut_at = net.clock.now
    net.cut(CLIENT_IP, SERVER_IP)
    net.run_for(15.0)
    degraded = [(e, t) for e, t in seen if isinstance(e, ConsentDegraded)]
    assert len(degraded) == 1
    assert degraded[0][1] - cut_at <= 8.5  # the next check after the cut (<= 6 s), unanswered for 2 s
    healed_at = net.clock.now
    net.heal(CLIENT_IP, SERVER_IP)
    net.run_for(3.0)
    restored = [(e, t) for e, t in seen if isinstance(e, ConsentRestored)]
    assert len(restored) == 1
    event, at = restored[0]
    assert at - healed_at <= 1.1  # checks run every second while degraded
    assert 15.0 <= event.outage <= 22.0
    net.run_for(30.0)  # back to the ordinary pace: no further reports, nothing closed
    assert len([e for e, _ in seen if isinstance(e, ConsentDegraded | ConsentRestored)]) == 2
    assert not client.peer.closed and not server.peer.closed
