"""UDP as QUIC datagrams (docs/datagrams.md): the tunnel-datagram codec with golden bytes, reassembly bounds,
negotiation (and the byte-exact stream fallback with a peer that does not support it), sizes, the bounded send
queue, and - on the in-memory network with loss, duplication and reordering - no head-of-line blocking and no
duplicates."""

from __future__ import annotations

import random

import pytest
from aioquic.quic import events as qe

from test_forwarding_kit import Tunnel
from test_peer import _identity
from tunnel_core import assembly
from tunnel_core.datagram import (
    MAX_FRAGMENTS,
    MAX_PARTIALS,
    REASSEMBLY_TIMEOUT,
    DatagramError,
    Fragment,
    Reassembler,
    Whole,
    decode_datagram,
    encode_fragments,
    encode_whole,
)
from tunnel_core.forwarding import events as fe
from tunnel_core.ice.events import GatheringComplete
from tunnel_core.iroh_session import SendBytes, SourceAccepted, StartForwarding
from tunnel_core.iroh_session.client import ClientStream
from tunnel_core.iroh_session.server import ServerStream
from tunnel_core.peer import Peer, TunnelReady
from tunnel_core.policy import AccessPolicy
from tunnel_core.quic.connection import DATAGRAM_QUEUE_LIMIT, TRANSPORT_PARAMETER_TUNNEL_DATAGRAMS
from tunnel_core.testing import VirtualClock
from tunnel_core.testing.network import Network
from tunnel_core.wire import (
    SourceRequest,
    SourceResponse,
    WireError,
    decode_source_request,
    decode_source_response,
    encode_source_request,
    encode_source_response,
    encode_udp_frame,
)

PEER = ("127.0.0.1", 51820)


# ------------------------------------------------------------------------------------------ codec, golden bytes


def test_whole_datagram_golden_bytes() -> None:
    assert encode_whole(0, b"hi") == bytes.fromhex("00 00 6869")
    assert encode_whole(4, b"") == bytes.fromhex("04 00")
    # Flow ids from 64 on take a 2-byte QUIC varint, from 16384 on 4 bytes.
    assert encode_whole(64, b"\xff") == bytes.fromhex("4040 00 ff")
    assert encode_whole(16384, b"x") == bytes.fromhex("80004000 00 78")
    assert decode_datagram(bytes.fromhex("4040 00 ff")) == Whole(64, b"\xff")


def test_fragment_golden_bytes() -> None:
    frames = encode_fragments(8, 0x1234, b"abcde", budget=9)
    # flow 8 | kind 01 | packet 1234 | index | count 2 | piece (3 + 2 bytes: as equal as possible)
    assert frames == [bytes.fromhex("08 01 1234 00 02 616263"), bytes.fromhex("08 01 1234 01 02 6465")]
    assert [decode_datagram(f) for f in frames] == [Fragment(8, 0x1234, 0, 2, b"abc"), Fragment(8, 0x1234, 1, 2, b"de")]
    wrapped = encode_fragments(8, 0x1_0005, b"abcde", budget=9) or [b""]
    assert wrapped[0][2:4] == b"\x00\x05"  # the packet number wraps at u16


def test_fragmenting_gives_up_past_max_fragments() -> None:
    room = 100 - 6  # budget minus the fragment header of a 1-byte flow id
    assert len(encode_fragments(0, 0, bytes(room * MAX_FRAGMENTS), budget=100) or []) == MAX_FRAGMENTS
    assert encode_fragments(0, 0, bytes(room * MAX_FRAGMENTS + 1), budget=100) is None
    assert encode_fragments(0, 0, b"abc", budget=6) is None  # no room for any payload


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\x40", "truncated"),
        (b"\x04", "no kind"),
        (b"\x04\x02abc", "unknown"),
        (b"\x04\x01\x00\x01\x00\x02", "too short"),
        (b"\x04\x01\x00\x01\x00\x01x", "bad fragment"),
        (b"\x04\x01\x00\x01\x02\x02x", "bad fragment"),
        (b"\x04\x01\x00\x01\x00" + bytes([MAX_FRAGMENTS + 1]) + b"x", "bad fragment"),
        (b"\x04\x00" + bytes(65536), "too large"),
    ],
)
def test_malformed_datagrams_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(DatagramError, match=message):
        decode_datagram(data)


def test_reassembly_in_any_order_ignores_duplicates_and_times_out() -> None:
    payload = random.Random(1).randbytes(5000)
    frames = [decode_datagram(f) for f in encode_fragments(4, 7, payload, budget=1300) or []]
    assert len(frames) == 4 and all(isinstance(f, Fragment) for f in frames)
    r = Reassembler()
    assert r.add(frames[3], 0.0) is None  # type: ignore[arg-type]
    assert r.add(frames[3], 0.0) is None  # type: ignore[arg-type]
    assert r.add(frames[0], 0.1) is None  # type: ignore[arg-type]
    assert r.add(frames[2], 0.2) is None  # type: ignore[arg-type]
    assert r.add(frames[1], 0.3) == payload  # type: ignore[arg-type]
    assert len(r) == 0
    # A datagram missing a piece is given up after the timeout; a late piece then starts over and never completes.
    assert r.add(frames[0], 1.0) is None  # type: ignore[arg-type]
    assert r.get_timer() == 1.0 + REASSEMBLY_TIMEOUT
    r.handle_timer(1.0 + REASSEMBLY_TIMEOUT)
    assert len(r) == 0 and r.expired == 1


def test_reassembly_memory_is_bounded_and_contradictions_are_dropped() -> None:
    r = Reassembler()
    for packet in range(MAX_PARTIALS + 10):
        r.add(Fragment(0, packet, 0, 2, b"x" * 1000), 0.0)
    assert len(r) == MAX_PARTIALS and r.expired == 10
    r.add(Fragment(0, MAX_PARTIALS + 9, 1, 3, b"y"), 0.0)  # count disagrees with its sibling
    assert r.malformed == 1 and len(r) == MAX_PARTIALS - 1
    r.add(Fragment(4, 0, 0, 2, b"z" * 40000), 0.0)
    r.add(Fragment(4, 0, 1, 2, b"z" * 30000), 0.0)  # would exceed 64 KiB
    assert r.malformed == 2
    r.forget_flow(0)
    assert len(r) == 0


# ------------------------------------------------------------------------------------------ negotiation


def _negotiated(t: Tunnel) -> tuple[bool, bool]:
    return t.client.session.datagrams, t.server.session.datagrams


def test_both_ends_negotiate_datagrams() -> None:
    t = Tunnel("udp", packet_size=1350).start()
    assert _negotiated(t) == (True, True)
    assert t.pair.client._peer_datagram_version == 1
    assert TRANSPORT_PARAMETER_TUNNEL_DATAGRAMS == 0x74756E64


@pytest.mark.parametrize("old", ["client", "server"])
def test_with_a_peer_without_datagram_support_udp_stays_on_streams_byte_exact(old: str) -> None:
    t = Tunnel("udp", packet_size=1350, **{f"{old}_datagrams": False}).start()  # type: ignore[arg-type]
    assert _negotiated(t) == (False, False)
    t.udp_target = lambda data: data[::-1]
    sent = [bytes([i]) * n for i, n in enumerate([1, 100, 1452, 8192, 30000, 0])]
    for data in sent:
        t.client.send_udp(PEER, data)
    t.run(lambda: len(t.client.udp_inbox.get(PEER, [])) == len(sent))
    assert t.client.udp_inbox[PEER] == [d[::-1] for d in sent]
    # On the wire: exactly today's u16 framing on one stream each way, and not a single DATAGRAM frame.
    for side in ("client", "server"):
        events = t.quic_events[side]
        assert not any(isinstance(e, qe.DatagramFrameReceived) for e in events)
        stream = b"".join(e.data for e in events if isinstance(e, qe.StreamDataReceived))
        expected = sent if side == "server" else [d[::-1] for d in sent]
        assert stream == b"".join(encode_udp_frame(d) for d in expected)
    assert t.client.session.stats.stream == len(sent) and t.client.session.stats.datagrams == 0


# ------------------------------------------------------------------------------------------ sizes


def test_sizes_on_a_1500_mtu_path_whole_fragmented_stream_or_refused() -> None:
    t = Tunnel("udp", packet_size=1350).start()  # what a real path with a 1500-byte MTU gets
    t.udp_target = lambda data: data
    sizes = [0, 1, 1000, 1452, 1452, 8192, 30000, 65535]
    for i, n in enumerate(sizes):
        t.client.send_udp(PEER, bytes([i]) * n)
    t.run(lambda: len(t.client.udp_inbox.get(PEER, [])) == len(sizes))
    got = sorted(t.client.udp_inbox[PEER], key=len)
    assert got == sorted((bytes([i]) * n for i, n in enumerate(sizes)), key=len)
    client, server = t.client.session.stats, t.server.session.stats
    # The first datagram opened the stream; 1 and 1000 went whole; 1452 x2 and 8192 in fragments; the rest on the
    # stream (more than MAX_FRAGMENTS fragments). The echo goes the same way back (the first reply included).
    assert (client.stream, client.datagrams, client.fragmented, client.stream_fallback) == (3, 2, 3, 2)
    assert (server.stream, server.datagrams, server.fragmented, server.stream_fallback) == (2, 3, 3, 2)
    assert server.reassembled == 3 and client.reassembled == 3
    t.client.send_udp(PEER, bytes(65536))
    assert client.too_big == 1


def test_a_full_datagram_queue_drops_the_oldest() -> None:
    t = Tunnel("udp", packet_size=1350).start()
    t.udp_target = lambda data: None
    t.client.send_udp(PEER, b"open")
    t.run(lambda: len(t.server.udp) == 1)
    burst = [i.to_bytes(4, "big") for i in range(1000)]
    for data in burst:  # all queued before the connection may send any (no flush in between)
        t.client.session.udp_received(PEER, data, t.pair.now)
    t.idle(1.0)
    (flow,) = t.server.udp.values()
    assert flow.sent[1:] == burst[-DATAGRAM_QUEUE_LIMIT:]
    assert t.client.session.stats.dropped_oldest == len(burst) - DATAGRAM_QUEUE_LIMIT


def test_datagrams_before_their_stream_are_held_and_delivered_after_it() -> None:
    t = Tunnel("udp", packet_size=1350).start()
    t.udp_target = lambda data: None
    t.pair.drop = lambda side, data: side == "client"
    before = t.pair.datagrams["client"]
    t.client.send_udp(PEER, b"first")  # opens the stream; the packet carrying it is lost
    t.run(lambda: t.pair.datagrams["client"] > before)
    t.pair.drop = lambda side, data: False
    t.client.send_udp(PEER, b"second")
    t.client.send_udp(PEER, b"third")
    t.run(lambda: sum(len(f.sent) for f in t.server.udp.values()) == 3)
    (flow,) = t.server.udp.values()
    assert flow.sent == [b"first", b"second", b"third"]  # the held datagrams follow the stream's first one
    assert t.server.session.stats.received == 2 and t.server.session.stats.unknown_flow == 0


def test_malformed_datagrams_are_counted_and_the_tunnel_survives() -> None:
    t = Tunnel("udp", packet_size=1350).start()
    t.client.send_udp(PEER, b"a")
    t.run(lambda: len(t.client.udp_inbox.get(PEER, [])) == 1)
    t.pair.client.send_datagram_frame(b"\x00\x07junk")
    t.pair.client.send_datagram_frame(encode_whole(400, b"no such flow"))
    t.client.send_udp(PEER, b"b")
    t.run(lambda: len(t.client.udp_inbox[PEER]) == 2)
    assert t.server.session.stats.malformed == 1
    t.idle(2.0)
    assert t.server.session.stats.unknown_flow == 1  # held as possibly early, then given up


def test_idle_expiry_and_peer_cap_work_the_same_over_datagrams() -> None:
    t = Tunnel("udp", packet_size=1350, udp_idle_timeout=30.0, max_udp_peers=2).start()
    assert _negotiated(t) == (True, True)
    a, b, c = ("127.0.0.1", 1), ("127.0.0.1", 2), ("127.0.0.1", 3)
    for peer in (a, b, a, b):
        t.client.send_udp(peer, b"x")
    t.run(lambda: len(t.client.udp_inbox.get(b, [])) == 2)
    assert t.client.session.stats.datagrams == 2
    t.client.send_udp(c, b"x")  # over the cap: a (least recently active) is retired
    t.run(lambda: sum(f.closed for f in t.server.udp.values()) == 1)
    t.idle(40.0)
    assert t.client.session.flows == 0 and t.server.session.flows == 0


# ------------------------------------------------------------------------------------------ under loss


class _Side:
    def __init__(self, *, is_client: bool, seed: int, identity, pin: str | None, datagrams: bool) -> None:
        r = random.Random(seed)
        self.agent = assembly.new_agent(controlling=is_client, rng=lambda n: r.randbytes(n))

        def quic_factory(odcid, local, remote):
            return assembly.new_quic(is_client=is_client, odcid=odcid, identity=identity, expected_fingerprint=pin,
                                     packet_size=1350, datagrams=datagrams)

        def session_factory(quic):
            return assembly.new_session(quic, is_client=is_client, protocol="udp",
                                        targets=() if is_client else (("10.0.0.9", 51820),))

        self.peer = Peer(ice=self.agent, is_client=is_client, quic_factory=quic_factory,
                         session_factory=session_factory)
        self.events: list = []

    def drain(self) -> list:
        new = []
        while (ev := self.peer.next_event()) is not None:
            new.append(ev)
        self.events += new
        return new


def _echo_under_loss(datagrams: bool, *, loss: float, count: int = 300, size: int = 200, seed: int = 5):
    """A 20/s UDP echo across a 10 ms RTT link with ``loss`` (and some duplication and reordering) both ways.

    Returns {probe: (sent_at, received_at list)} as seen by the client's local peer."""
    net = Network(VirtualClock(), rand=random.Random(seed))
    identity = _identity()
    client = _Side(is_client=True, seed=1, identity=None, pin=identity.fingerprint, datagrams=datagrams)
    server = _Side(is_client=False, seed=2, identity=identity, pin=None, datagrams=datagrams)
    for side, ip in ((client, "198.51.100.1"), (server, "198.51.100.2")):
        side.agent.add_local_address(net.add_host(ip).bind(side.peer))
        side.agent.gather(net.clock.now)
    assert net.run_until(lambda: all(any(isinstance(e, GatheringComplete) for e in s.drain() + s.events)
                                     for s in (client, server)), net.clock.now + 10)
    client.agent.set_remote(server.agent.local_ufrag, server.agent.local_pwd, server.agent.local_candidates)
    server.agent.set_remote(client.agent.local_ufrag, client.agent.local_pwd, client.agent.local_candidates)
    server.agent.connect(net.clock.now)
    client.agent.connect(net.clock.now)
    assert net.run_until(lambda: all(any(isinstance(e, TunnelReady) for e in s.drain() + s.events)
                                     for s in (client, server)), net.clock.now + 30)
    assert client.peer.session.datagrams is datagrams and server.peer.session.datagrams is datagrams
    net.loss, net.duplicate, net.reorder, net.reorder_delay = loss, 0.02, 0.02, 0.004
    sent: dict[int, float] = {}
    received: dict[int, list[float]] = {}

    def pump() -> bool:
        now = net.clock.now
        for ev in server.drain():
            if isinstance(ev, fe.SendUdp):
                server.peer.session.udp_reply(ev.flow_id, ev.data, now)
        for ev in client.drain():
            if isinstance(ev, fe.SendUdpTo):
                assert ev.peer == PEER
                received.setdefault(int.from_bytes(ev.data[:4], "big"), []).append(now)
        return False

    for probe in range(count):
        sent[probe] = net.clock.now
        client.peer.session.udp_received(PEER, probe.to_bytes(4, "big") + bytes(size - 4), net.clock.now)
        net.run_until(pump, net.clock.now + 0.05)
    net.run_until(pump, net.clock.now + 3.0)
    return sent, received


def test_datagrams_under_loss_no_head_of_line_blocking_and_no_duplicates() -> None:
    sent, received = _echo_under_loss(True, loss=0.03)
    assert all(len(times) == 1 for times in received.values()), "a datagram was delivered twice"
    delays = sorted(times[0] - sent[p] for p, times in received.items())
    # Every echo that arrives does so within one round trip plus reordering: a lost packet delays no other.
    assert delays[-1] < 0.010 + 2 * 0.004 + 0.001
    lost = len(sent) - len(received)
    assert 0 < lost < len(sent) * 0.15  # ~6 % (3 % each way): lost, not late


def test_streams_under_the_same_loss_deliver_late_instead() -> None:
    """The contrast that motivates datagrams: the same run with an old peer retransmits and stalls."""
    sent, received = _echo_under_loss(False, loss=0.03)
    assert len(received) == len(sent) and all(len(t) == 1 for t in received.values())
    delays = sorted(times[0] - sent[p] for p, times in received.items())
    assert delays[-1] > 0.05  # head-of-line blocking behind retransmissions


# ------------------------------------------------------------------------------------------ iroh mode's offer


def test_iroh_source_messages_carry_the_datagram_offer_only_when_made() -> None:
    # Without an offer the bytes are upstream's, exactly; with one, the field follows the struct's fields.
    assert encode_source_request(SourceRequest("udp://127.0.0.1:53", version=2)) == \
        b'\x00\x00\x00\x2b{"version":2,"source":"udp://127.0.0.1:53"}'
    offer = encode_source_request(SourceRequest("udp://127.0.0.1:53", version=2, datagram_flow=0))
    assert offer == b'\x00\x00\x00\x3d{"version":2,"source":"udp://127.0.0.1:53","datagram_flow":0}'
    assert decode_source_request(offer[4:], expected_version=2).datagram_flow == 0
    taken = encode_source_response(SourceResponse(True, version=2, datagram_flow=0))
    assert taken == b'\x00\x00\x00\x2f{"version":2,"accepted":true,"datagram_flow":0}'
    assert decode_source_response(b'{"version":2,"accepted":true,"datagram_flow":null}',
                                  expected_version=2).datagram_flow is None
    with pytest.raises(WireError):
        decode_source_response(b'{"version":2,"accepted":true,"datagram_flow":-1}', expected_version=2)


def _serve(machine: ServerStream, request: bytes) -> list:
    machine.feed(request)
    events = []
    while (ev := machine.next_event()) is not None:
        events.append(ev)
    return events


@pytest.mark.parametrize(("source", "server_datagrams", "taken"), [
    ("udp://127.0.0.1:53", True, 7),
    ("udp://127.0.0.1:53", False, None),  # a server forced to the old behaviour
    ("tcp://127.0.0.1:22", True, None),  # only UDP takes datagrams
])
def test_iroh_server_takes_the_offer_for_udp_only(source: str, server_datagrams: bool, taken: int | None) -> None:
    policy = AccessPolicy.from_strings(["127.0.0.0/8"], ["127.0.0.0/8"])
    machine = ServerStream(policy, permit=True, version=2, datagrams=server_datagrams)
    events = _serve(machine, encode_source_request(SourceRequest(source, version=2, datagram_flow=7)))
    start = next(e for e in events if isinstance(e, StartForwarding))
    assert start.datagram_flow == taken
    client = ClientStream(source, version=2, datagram_flow=7)
    client.feed(next(e for e in events if isinstance(e, SendBytes)).data)
    accepted = client.next_event()
    assert isinstance(accepted, SourceAccepted) and accepted.datagram_flow == taken


def test_iroh_client_with_an_upstream_server_stays_on_the_stream() -> None:
    client = ClientStream("udp://127.0.0.1:53", version=2, datagram_flow=0)
    client.feed(encode_source_response(SourceResponse(True, version=2)))  # upstream: no field
    accepted = client.next_event()
    assert isinstance(accepted, SourceAccepted) and accepted.datagram_flow is None
    client = ClientStream("udp://127.0.0.1:53", version=2, datagram_flow=0)
    client.feed(encode_source_response(SourceResponse(True, version=2, datagram_flow=5)))  # not our offer
    accepted = client.next_event()
    assert isinstance(accepted, SourceAccepted) and accepted.datagram_flow is None
