"""Paths never move on STUN alone (issue 18 item 1), and a real peer's new address is followed once QUIC validated it.

In-memory network, virtual time: the attack replays the two forged packets against a connected server; the
rebinding test moves the client's NAT mapping mid-transfer and shows the server's QUIC migrate (PATH_CHALLENGE)
and its ICE agent follow.
"""

from __future__ import annotations

import logging
import random

import pytest
from tests.helpers.hijack import forged_nomination, forged_success
from tests.test_peer import Side, _identity, _pair

from tunnel_core.forwarding import events as fe
from tunnel_core.ice.events import NominationIgnored
from tunnel_core.peer import TunnelReady, _active_path_validated
from tunnel_core.testing import VirtualClock
from tunnel_core.testing.network import NatType, Network
from tunnel_core.types import Address, Transmit

ATTACKER_IP = "198.51.100.66"


class Attacker:
    """Holds both blocks' credentials; answers every check the server sends it, signed as the client would."""

    def __init__(self, client_pwd: str) -> None:
        self.client_pwd = client_pwd
        self.address: Address | None = None
        self.outbox: list[Transmit] = []
        self.checks_seen = 0
        self.quic_seen = 0

    def receive_datagram(self, data: bytes, local: Address, remote: Address, now: float) -> None:
        reply = forged_success(data, self.client_pwd, remote)  # XOR-MAPPED: the server as we see it
        if reply is not None:
            self.checks_seen += 1
            self.outbox.append(Transmit(reply, local, remote))
        elif data and data[0] > 3:
            self.quic_seen += 1

    def datagrams_to_send(self, now: float) -> list[Transmit]:
        out, self.outbox = self.outbox, []
        return out

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        pass


def _transfer(client: Side, server: Side, net: Network, payload: bytes) -> bytes:
    flow = client.peer.session.open_tcp(net.clock.now)
    client.peer.session.flow_data(flow, payload)
    assert net.run_until(lambda: server.has(fe.DialTcp), net.clock.now + 15)
    server.peer.session.flow_connected(server.first(fe.DialTcp).flow_id)
    got = bytearray()

    def arrived() -> bool:
        server.drain()
        got[:] = b"".join(e.data for e in server.events if isinstance(e, fe.SendTcp))
        return len(got) >= len(payload)

    net.run_until(arrived, net.clock.now + 30)
    return bytes(got)


def test_forged_nomination_after_connection_moves_nothing(caplog: pytest.LogCaptureFixture) -> None:
    net = Network(VirtualClock())
    client, server = _pair(net, "198.51.100.1", "198.51.100.2")
    assert net.run_until(lambda: client.has(TunnelReady) and server.has(TunnelReady), net.clock.now + 30)
    before = server.agent.selected_pair
    attacker = Attacker(client.agent.local_pwd)
    attacker.address = net.add_host(ATTACKER_IP).bind(attacker, 4444)
    packet = forged_nomination(server.agent.local_ufrag, client.agent.local_ufrag, server.agent.local_pwd)
    server_addr = server.peer.selected[0]
    caplog.set_level(logging.INFO, logger="tunnel_core.peer")
    for _ in range(3):  # repeated: still one log line
        net.send(Transmit(packet, attacker.address, server_addr))
        net.run_for(0.5)
    got = _transfer(client, server, net, b"x" * 200_000)
    assert got == b"x" * 200_000
    assert server.agent.selected_pair == before
    assert server.peer.selected[1][0] == "198.51.100.1"
    assert attacker.quic_seen == 0 and attacker.checks_seen == 0
    ignored = [e for e in server.events if isinstance(e, NominationIgnored)]
    assert ignored == [], "NominationIgnored is logged by the Peer, not handed to adapters"
    lines = [r.getMessage() for r in caplog.records if "Ignored an ICE nomination" in r.getMessage()]
    assert len(lines) == 1 and f"{ATTACKER_IP}:4444" in lines[0], lines


def test_late_role_conflict_does_not_flip_the_controlling_client() -> None:
    net = Network(VirtualClock())
    client, server = _pair(net, "198.51.100.1", "198.51.100.2")
    assert net.run_until(lambda: client.has(TunnelReady) and server.has(TunnelReady), net.clock.now + 30)
    attacker = Attacker(server.agent.local_pwd)
    attacker.address = net.add_host(ATTACKER_IP).bind(attacker, 4444)
    # Signed with the client's password, claiming to be controlling with the largest tie-breaker.
    packet = forged_nomination(client.agent.local_ufrag, server.agent.local_ufrag, client.agent.local_pwd)
    before = client.agent.selected_pair
    net.send(Transmit(packet, attacker.address, client.peer.selected[0]))
    net.run_for(2)
    assert client.agent.controlling and client.agent.selected_pair == before
    assert attacker.checks_seen == 0


def test_nat_rebinding_mid_transfer_moves_the_path_after_quic_validates_it() -> None:
    net = Network(VirtualClock(), random.Random(7))
    nat = net.add_nat("198.51.100.101", NatType.SYMMETRIC)
    identity = _identity()
    client = Side(is_client=True, seed=1, pin=identity.fingerprint)
    server = Side(is_client=False, seed=2, identity=identity)
    for side, ip, side_nat in ((client, "10.0.1.2", nat), (server, "198.51.100.2", None)):
        addr = net.add_host(ip, side_nat).bind(side.peer)
        side.agent.add_local_address(addr)
        side.agent.gather(net.clock.now)
    net.run_until(lambda: client.peer.ice.gathering_complete and server.peer.ice.gathering_complete,
                  net.clock.now + 10)
    client.agent.set_remote(server.agent.local_ufrag, server.agent.local_pwd, server.agent.local_candidates)
    server.agent.set_remote(client.agent.local_ufrag, client.agent.local_pwd, client.agent.local_candidates)
    server.agent.connect(net.clock.now)
    client.agent.connect(net.clock.now)
    assert net.run_until(lambda: client.has(TunnelReady) and server.has(TunnelReady), net.clock.now + 30)
    old_remote = server.peer.selected[1]
    assert _active_path_validated(server.peer.quic)
    # The NAT forgets every mapping: the client's next datagrams leave from a new public port.
    for m in list(nat._by_port.values()):
        nat._drop(m)
    got = _transfer(client, server, net, b"y" * 300_000)
    assert got == b"y" * 300_000
    new_remote = server.peer.selected[1]
    assert new_remote[0] == "198.51.100.101" and new_remote != old_remote
    assert server.agent.selected_pair[1].address == new_remote
    assert _active_path_validated(server.peer.quic)
    net.run_for(40)  # consent keeps running on the new path: nothing closes
    assert not server.peer.closed and not client.peer.closed
