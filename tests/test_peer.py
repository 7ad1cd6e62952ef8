"""The Peer composition (ICE -> QUIC -> forwarding) on the in-memory network, in virtual time."""

from __future__ import annotations

import datetime
import random

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tunnel_core import assembly
from tunnel_core.forwarding import events as fe
from tunnel_core.ice.events import GatheringComplete
from tunnel_core.peer import IceConnected, Peer, TunnelClosed, TunnelReady, classify, connection_type
from tunnel_core.quic.identity import make_identity
from tunnel_core.testing import VirtualClock
from tunnel_core.testing.network import Nat, NatType, Network, StunResponder

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _rng(seed: int):
    r = random.Random(seed)
    return lambda n: bytes(r.getrandbits(8) for _ in range(n))


def _identity():
    key = ec.generate_private_key(ec.SECP256R1())
    return make_identity(key, not_before=T0, not_after=T0 + datetime.timedelta(days=1))


class Side:
    """One peer plus the events it produced, as an adapter would see them."""

    def __init__(self, *, is_client: bool, seed: int, identity=None, pin: str | None = None,
                 stun=(), protocol: str = "tcp", targets=(("10.0.0.9", 22),)) -> None:
        self.events: list = []
        agent = assembly.new_agent(controlling=is_client, rng=_rng(seed), stun_servers=stun)
        self.agent = agent

        def quic_factory(odcid, local, remote):
            return assembly.new_quic(is_client=is_client, odcid=odcid, identity=identity,
                                     expected_fingerprint=pin, packet_size=1350)

        def session_factory(quic):
            return assembly.new_session(quic, is_client=is_client, protocol=protocol,
                                        targets=() if is_client else targets)

        self.peer = Peer(ice=agent, is_client=is_client, quic_factory=quic_factory, session_factory=session_factory)

    def drain(self) -> None:
        while (ev := self.peer.next_event()) is not None:
            self.events.append(ev)

    def has(self, kind: type) -> bool:
        self.drain()
        return any(isinstance(e, kind) for e in self.events)

    def first(self, kind: type):
        self.drain()
        return next(e for e in self.events if isinstance(e, kind))


def _pair(net: Network, client_ip: str, server_ip: str, *, client_nat: Nat | None = None,
          server_nat: Nat | None = None, stun=(), server_pin: str | None = None):
    identity = _identity()
    client = Side(is_client=True, seed=1, pin=server_pin or identity.fingerprint, stun=stun)
    server = Side(is_client=False, seed=2, identity=identity, stun=stun)
    for side, ip, nat in ((client, client_ip, client_nat), (server, server_ip, server_nat)):
        host = net.add_host(ip, nat)
        addr = host.bind(side.peer)
        side.agent.add_local_address(addr)
        side.agent.gather(net.clock.now)
    assert net.run_until(lambda: client.has(GatheringComplete) and server.has(GatheringComplete),
                         net.clock.now + 10)
    client.agent.set_remote(server.agent.local_ufrag, server.agent.local_pwd, server.agent.local_candidates)
    server.agent.set_remote(client.agent.local_ufrag, client.agent.local_pwd, client.agent.local_candidates)
    server.agent.connect(net.clock.now)
    client.agent.connect(net.clock.now)
    return client, server


def test_classify_by_first_byte() -> None:
    assert classify(b"\x00\x01rest") == "stun"
    assert classify(b"\x03") == "stun"
    assert classify(b"\x40quic") == "quic"
    assert classify(b"\xc0long header") == "quic"
    assert classify(b"") == "quic"


def test_two_peers_connect_and_forward_tcp_bytes() -> None:
    net = Network(VirtualClock())
    client, server = _pair(net, "198.51.100.1", "198.51.100.2")
    assert net.run_until(lambda: client.has(TunnelReady) and server.has(TunnelReady), net.clock.now + 30)
    connected = client.first(IceConnected)
    assert connected.connection_type == "Direct (Host)"
    assert connected.remote_address == ("198.51.100.2", server.first(IceConnected).local_address[1])

    flow = client.peer.session.open_tcp(net.clock.now)
    client.peer.session.flow_data(flow, b"hello through the tunnel")
    assert net.run_until(lambda: server.has(fe.DialTcp), net.clock.now + 5)
    dial = server.first(fe.DialTcp)
    assert list(dial.addresses) == [("10.0.0.9", 22)]
    server.peer.session.flow_connected(dial.flow_id)
    got = bytearray()

    def arrived() -> bool:
        server.drain()
        got[:] = b"".join(e.data for e in server.events if isinstance(e, fe.SendTcp))
        return bytes(got) == b"hello through the tunnel"

    assert net.run_until(arrived, net.clock.now + 5)


def test_nat_traversal_uses_server_reflexive_or_peer_reflexive_path() -> None:
    net = Network(VirtualClock())
    stun_host = net.add_host("203.0.113.10")
    stun_server = StunResponder()
    stun_addr = stun_host.bind(stun_server, 3478)
    nat_a = net.add_nat("198.51.100.101", NatType.PORT_RESTRICTED_CONE)
    nat_b = net.add_nat("198.51.100.102", NatType.FULL_CONE)
    client, server = _pair(net, "10.0.1.2", "10.0.2.2", client_nat=nat_a, server_nat=nat_b, stun=(stun_addr,))
    assert net.run_until(lambda: client.has(TunnelReady) and server.has(TunnelReady), net.clock.now + 30)
    kind = client.first(IceConnected).connection_type
    assert kind in ("NAT Traversal (Server Reflexive)", "Peer Reflexive")
    assert stun_server.requests >= 2


def test_fingerprint_mismatch_fails_with_auth_and_no_forwarding() -> None:
    net = Network(VirtualClock())
    client, _server = _pair(net, "198.51.100.1", "198.51.100.2", server_pin="00" * 32)
    assert net.run_until(lambda: client.has(TunnelClosed), net.clock.now + 30)
    closed = client.first(TunnelClosed)
    assert closed.auth_failed and not closed.was_up
    assert not client.has(TunnelReady)
    assert client.peer.session is None


def test_lost_peer_is_reported_as_lost_after_consent_timeout() -> None:
    net = Network(VirtualClock())
    client, server = _pair(net, "198.51.100.1", "198.51.100.2")
    assert net.run_until(lambda: client.has(TunnelReady) and server.has(TunnelReady), net.clock.now + 30)
    up_at = net.clock.now
    net.cut("198.51.100.1", "198.51.100.2")
    assert net.run_until(lambda: client.has(TunnelClosed), net.clock.now + 60)
    closed = client.first(TunnelClosed)
    assert closed.was_up
    assert 20 <= net.clock.now - up_at <= 45


def test_orderly_close_reaches_the_other_side_as_done() -> None:
    net = Network(VirtualClock())
    client, server = _pair(net, "198.51.100.1", "198.51.100.2")
    assert net.run_until(lambda: client.has(TunnelReady) and server.has(TunnelReady), net.clock.now + 30)
    client.peer.close(net.clock.now, "done")
    assert net.run_until(lambda: server.has(TunnelClosed), net.clock.now + 10)
    closed = server.first(TunnelClosed)
    assert closed.by_peer and closed.reason == "done" and closed.error_code == 0 and closed.was_up


@pytest.mark.parametrize(("local", "remote", "expected"), [
    ("host", "host", "Direct (Host)"),
    ("srflx", "host", "NAT Traversal (Server Reflexive)"),
    ("host", "prflx", "Peer Reflexive"),
    ("relay", "srflx", "Relay (TURN)"),
])
def test_connection_type_names(local: str, remote: str, expected: str) -> None:
    from tunnel_core.candidate import Candidate, CandidateType

    def cand(t: str) -> Candidate:
        return Candidate("1", 1, "udp", 1, "192.0.2.1", 1, CandidateType(t))

    assert connection_type(cand(local), cand(remote)) == expected
