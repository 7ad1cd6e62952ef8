"""Holding on past the consent limit and roaming, in virtual time on the in-memory network (issue 15 items 2-3).

- A cut longer than ICE consent's 30 s: with ``hold`` the Peer keeps the QUIC connection (and its streams), says
  it lost the tunnel, and once the path is back the transfer completes intact - no new signalling; without the path
  back it gives up after ``hold`` with the documented wording.
- The client's address changes (a socket on a new address, the old address gone): the client re-checks the
  server's candidates with the session's credentials, moves once one answers, and the server's QUIC validates the
  move; the transfer completes intact.
"""

from __future__ import annotations

import logging

import pytest
from tests.test_peer import Side
from tests.test_peer_outage import CLIENT_IP, PAYLOAD, SERVER_IP, _start_transfer

from tunnel_core.ice import ConsentLost, PairState
from tunnel_core.peer import TunnelClosed
from tunnel_core.testing import VirtualClock
from tunnel_core.testing.network import Network

NEW_CLIENT_IP = "198.51.100.11"


def _hold(*sides: Side, seconds: float) -> None:
    for side in sides:
        side.peer.hold = seconds
        side.agent.hold_on_consent_loss = True


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_a_90s_cut_is_held_the_quic_connection_survives_and_the_transfer_completes(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tunnel_core.peer")
    net = Network(VirtualClock())
    client, server, got = _start_transfer(net, cut_after=256 * 1024)
    _hold(client, server, seconds=300.0)
    net.cut(CLIENT_IP, SERVER_IP)
    net.run_for(90.0)
    during = got.poll()
    assert client.agent.consent_missing and not client.peer.closed and not server.peer.closed
    healed_at = net.clock.now
    net.heal(CLIENT_IP, SERVER_IP)
    assert net.run_until(lambda: got.poll() > during, healed_at + 30)
    assert got.grew_at[-1] - healed_at <= 3.0
    assert net.run_until(lambda: got.poll() >= len(PAYLOAD), net.clock.now + 120)
    assert bytes(got.data) == PAYLOAD
    for side in (client, server):
        assert not side.has(TunnelClosed) and not side.peer.closed
    lines = _messages(caplog)
    assert sum(line.startswith("Tunnel lost: no answer from the peer for 30 s") for line in lines) == 2, lines
    assert sum(line.startswith("Tunnel back after") for line in lines) == 2, lines


def _cut_while_held(hold: float, within: float) -> tuple[Network, Side, Side, float]:
    """A cut that never heals under a held tunnel; the client's end and how long after the cut it came."""
    net = Network(VirtualClock())
    client, server, _got = _start_transfer(net, cut_after=64 * 1024)
    _hold(client, server, seconds=hold)
    net.cut(CLIENT_IP, SERVER_IP)
    cut_at = net.clock.now
    assert net.run_until(lambda: client.has(TunnelClosed), net.clock.now + within)
    return net, client, server, net.clock.now - cut_at


def test_a_held_tunnel_gives_up_after_its_timeout_with_how_long_it_tried() -> None:
    net, client, server, took = _cut_while_held(10.0, within=60)
    closed = client.first(TunnelClosed)
    assert closed.was_up and closed.reason.startswith("Gave up reconnecting after 10s (")
    assert "ICE consent lost" in closed.reason
    assert took < 30 + 10 + 5
    assert net.run_until(lambda: server.has(TunnelClosed), net.clock.now + 10)
    assert server.first(TunnelClosed).reason.startswith("Gave up waiting for the client to come back after 10s")


def test_without_hold_consent_loss_ends_the_tunnel_as_before() -> None:
    net = Network(VirtualClock())
    client, _server, _got = _start_transfer(net, cut_after=256 * 1024)
    net.cut(CLIENT_IP, SERVER_IP)
    assert net.run_until(lambda: client.has(TunnelClosed), net.clock.now + 40)
    assert "consent lost" in client.first(TunnelClosed).reason
    assert not any(isinstance(e, ConsentLost) for e in client.events)  # the Peer turned it into TunnelClosed


def test_the_client_moves_to_a_new_address_mid_transfer_and_the_server_validates_the_move(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tunnel_core.peer")
    net = Network(VirtualClock())
    client, server, got = _start_transfer(net, cut_after=256 * 1024)
    old_path = server.peer.selected
    assert old_path is not None
    # The machine gets a new address and loses the old one: a socket there, the old address unreachable.
    new_addr = net.add_host(NEW_CLIENT_IP).bind(client.peer)
    net.cut(CLIENT_IP, SERVER_IP)
    moved_at = net.clock.now
    client.peer.local_addresses_changed([new_addr], [CLIENT_IP], moved_at)
    before = got.poll()
    assert net.run_until(lambda: got.poll() > before, moved_at + 10)
    assert got.grew_at[-1] - moved_at <= 2.0
    assert net.run_until(lambda: got.poll() >= len(PAYLOAD), net.clock.now + 120)
    assert bytes(got.data) == PAYLOAD
    assert client.peer.selected is not None and client.peer.selected[0] == new_addr
    assert server.peer.selected is not None and server.peer.selected[1][0] == NEW_CLIENT_IP
    for side in (client, server):
        assert not side.has(TunnelClosed)
    lines = _messages(caplog)
    assert any(line.startswith(f"Path moved to {NEW_CLIENT_IP}:") for line in lines), lines
    assert any(line.startswith("Path moved from ") and "(validated by QUIC)" in line for line in lines), lines


def test_a_path_answered_on_the_server_moves_nothing_there() -> None:
    """Only the QUIC client acts on a re-check answer; the server moves only after QUIC validated the path."""
    net = Network(VirtualClock())
    client, server, _got = _start_transfer(net, cut_after=64 * 1024)
    selected = server.peer.selected
    new_addr = net.add_host("198.51.100.12").bind(server.peer)
    server.peer.local_addresses_changed([new_addr], [], net.clock.now)
    net.run_for(5.0)
    assert server.peer.selected == selected
    assert not server.has(TunnelClosed) and not client.has(TunnelClosed)


def test_a_hold_longer_than_quic_idle_limit_ends_at_the_idle_limit() -> None:
    _net, client, _server, took = _cut_while_held(600.0, within=400)
    assert 290 <= took <= 320
    reason = client.first(TunnelClosed).reason
    assert reason.startswith("Gave up reconnecting after ") and "last error: QUIC: Idle timeout" in reason, reason


@pytest.mark.parametrize("state", list(PairState))
def test_a_recheck_starts_from_any_pair_state(state: PairState) -> None:
    """After selection a pair can be left in any state (in-flight checks are dropped at selection, leaving pairs
    in progress without a transaction): a re-check round must start from each (the NAT suite's killed-server run
    found IN_PROGRESS crashing it)."""
    net = Network(VirtualClock())
    client, _server, _got = _start_transfer(net, cut_after=64 * 1024)
    extra = net.add_host(NEW_CLIENT_IP).bind(client.peer)
    client.agent.add_roaming_address(extra, net.clock.now)
    for pair in client.agent.pairs:
        pair.state = state
    assert client.agent.recheck(net.clock.now) == len(client.agent.pairs)
    assert client.agent.recheck(net.clock.now) == 0  # all in flight: nothing twice


def test_a_new_address_gathers_from_the_stun_and_turn_servers_too() -> None:
    """Roaming gathers as at the start (issue 15 item 3): from the new address, a Binding to the STUN server and an
    Allocate to the TURN server go out (tests/wan/test_roaming.py shows the relay bringing a client back)."""
    from tunnel_core import stun
    from tunnel_core.turn import TurnServer

    net = Network(VirtualClock())
    client, _server, _got = _start_transfer(net, cut_after=64 * 1024)
    client.agent.stun_servers = [("192.0.2.50", 3478)]
    client.agent.turn_servers = [TurnServer(("192.0.2.51", 3478), "user", "secret")]
    new_addr = net.add_host(NEW_CLIENT_IP).bind(client.peer)
    now = net.clock.now
    assert client.agent.add_roaming_address(new_addr, now)
    sent = list(client.agent.datagrams_to_send(now))
    client.agent.handle_timer(now + 0.1)
    sent += client.agent.datagrams_to_send(now + 0.1)
    methods = {(t.local, t.remote, stun.decode(t.data).method) for t in sent if stun.is_stun(t.data)}
    assert (new_addr, ("192.0.2.50", 3478), stun.Method.BINDING) in methods, methods
    assert (new_addr, ("192.0.2.51", 3478), stun.Method.ALLOCATE) in methods, methods


def test_a_relay_that_fails_after_roaming_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    """From the new address the TURN server never answers: the allocation times out and the user is told there is
    no relay through it (before, the failure after selection was dropped without a word)."""
    from tunnel_core.ice import RoamingRelayFailed
    from tunnel_core.turn import TurnServer

    net = Network(VirtualClock())
    client, _server, _got = _start_transfer(net, cut_after=64 * 1024)
    client.agent.turn_servers = [TurnServer(("192.0.2.51", 3478), "user", "secret")]
    new_addr = net.add_host(NEW_CLIENT_IP).bind(client.peer)
    now = net.clock.now
    assert client.agent.add_roaming_address(new_addr, now)
    failed = []
    end = now + 90.0
    while now < end and not failed:
        list(client.agent.datagrams_to_send(now))  # nothing answers them
        while (event := client.agent.next_event()) is not None:
            if isinstance(event, RoamingRelayFailed):
                failed.append(event)
        timer = client.agent.get_timer()
        now = min(end, timer if timer is not None and timer > now else now + 0.5)
        client.agent.handle_timer(now)
    assert failed and failed[0].base == new_addr and failed[0].server == ("192.0.2.51", 3478), failed
    with caplog.at_level(logging.WARNING, logger="tunnel_core.peer"):
        client.peer._on_ice_event(failed[0], now)
    assert any(m.startswith(f"No relay from {NEW_CLIENT_IP}:") and "192.0.2.51:3478" in m
               for m in _messages(caplog)), _messages(caplog)
