"""Relay candidates end to end on loopback: two Peers whose only usable remote candidates are relayed, through a
real coturn. Checks, consent and the QUIC handshake must all travel wrapped in TURN, and the adapter-facing side must
only ever see the peers' real sockets talking to the TURN server."""

from __future__ import annotations

import datetime
import os
import socket
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from tests.helpers.coturn import run_coturn

from tunnel_core import assembly
from tunnel_core.candidate import CandidateType, compute_priority
from tunnel_core.ice.events import GatheringComplete
from tunnel_core.peer import IceConnected, Peer, TunnelReady, classify
from tunnel_core.quic.identity import make_identity
from tunnel_core.turn import TurnServer

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
DEADLINE = 10.0


class RealSide:
    def __init__(self, *, is_client: bool, turn: TurnServer, identity=None, pin=None) -> None:  # type: ignore[no-untyped-def]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.addr = self.sock.getsockname()
        self.agent = assembly.new_agent(controlling=is_client, rng=os.urandom, turn_servers=(turn,))
        self.agent.add_local_address(self.addr)
        self.events: list[object] = []
        self.sent_to: list[tuple[tuple[str, int], int]] = []

        def quic_factory(odcid, local, remote):  # type: ignore[no-untyped-def]
            return assembly.new_quic(is_client=is_client, odcid=odcid, identity=identity,
                                     expected_fingerprint=pin, packet_size=1350)

        def session_factory(quic):  # type: ignore[no-untyped-def]
            return assembly.new_session(quic, is_client=is_client, protocol="tcp",
                                        targets=() if is_client else (("127.0.0.1", 9),))

        self.peer = Peer(ice=self.agent, is_client=is_client, quic_factory=quic_factory,
                         session_factory=session_factory)

    def pump(self) -> None:
        now = time.monotonic()
        while True:
            try:
                data, remote = self.sock.recvfrom(65536)
            except BlockingIOError:
                break
            self.peer.receive_datagram(data, self.addr, remote, now)
        timer = self.peer.get_timer()
        if timer is not None and timer <= now:
            self.peer.handle_timer(now)
        for t in self.peer.datagrams_to_send(now):
            assert t.local == self.addr, "adapters must only be asked to send from real sockets"
            self.sent_to.append((t.remote, t.data[0]))
            self.sock.sendto(t.data, t.remote)
        while (ev := self.peer.next_event()) is not None:
            self.events.append(ev)

    def has(self, kind: type) -> bool:
        return any(isinstance(e, kind) for e in self.events)


def _run(sides: list[RealSide], done) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + DEADLINE
    while not done():
        assert time.monotonic() < deadline, [s.events for s in sides]
        for s in sides:
            s.pump()
        time.sleep(0.002)


def test_relayed_pair_carries_ice_and_quic(tmp_path: Path) -> None:
    with run_coturn(tmp_path) as coturn:
        turn = TurnServer(coturn.address, coturn.user, coturn.password)
        identity = make_identity(ec.generate_private_key(ec.SECP256R1()), not_before=T0,
                                 not_after=T0 + datetime.timedelta(days=1))
        client = RealSide(is_client=True, turn=turn, pin=identity.fingerprint)
        server = RealSide(is_client=False, turn=turn, identity=identity)
        try:
            for s in (client, server):
                s.agent.gather(time.monotonic())
            _run([client, server], lambda: client.has(GatheringComplete) and server.has(GatheringComplete))
            relay = [c for c in client.agent.local_candidates if c.type is CandidateType.RELAY]
            assert len(relay) == 1
            assert relay[0].priority == compute_priority(CandidateType.RELAY, 16383)
            assert coturn.min_relay_port <= relay[0].port <= coturn.max_relay_port
            # Offer each side only the other's relay candidate: every path then crosses coturn.
            for me, other in ((client, server), (server, client)):
                only_relay = [c for c in other.agent.local_candidates if c.type is CandidateType.RELAY]
                me.agent.set_remote(other.agent.local_ufrag, other.agent.local_pwd, only_relay)
            for s in (server, client):
                s.agent.connect(time.monotonic())
            _run([client, server], lambda: client.has(TunnelReady) and server.has(TunnelReady))
            for s in (client, server):
                connected = next(e for e in s.events if isinstance(e, IceConnected))
                assert connected.connection_type == "Relay (TURN)"
                assert connected.local_address == s.addr
            # QUIC crossed as ChannelData (first byte 0x40-0x4F) to the TURN server, never straight to the peer.
            assert any(remote == coturn.address and 0x40 <= first <= 0x4F for remote, first in client.sent_to)
            assert all(remote == coturn.address or remote[1] in range(coturn.min_relay_port,
                                                                      coturn.max_relay_port + 1)
                       for remote, _ in client.sent_to)
        finally:
            client.sock.close()
            server.sock.close()


def test_classify_routes_everything_from_a_turn_server_to_turn() -> None:
    channel_data = b"\x40\x00\x00\x04abcd"  # also a plausible QUIC short header (0x40..0x7F)
    assert classify(channel_data) == "quic"
    assert classify(channel_data, from_turn_server=True) == "turn"
    assert classify(b"\x01\x17" + bytes(18), from_turn_server=True) == "turn"  # a Data indication
    assert classify(b"\x00\x01" + bytes(18)) == "stun"
