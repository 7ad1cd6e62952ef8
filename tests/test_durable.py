"""Durable streams (issue 15 item 4; docs/durable.md) in virtual time: two ForwardingSessions over in-memory QUIC
connections, a cut, a new connection, and the same local connections continuing - every byte once, in order.

The local applications outlive the connections (as the adapter's sockets do): a client application and a server
target per stream, each with bytes to send and a record of what arrived. A "cut" drops every datagram and then
abandons the connection (as a client detaches after losing consent); the next connection is a fresh QUIC
handshake. A server restart is a fresh DurableRegistry.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from aioquic.quic import events as qe

from test_quic_pair import PEER, Pair
from tunnel_core import resume as rw
from tunnel_core import wire as tw
from tunnel_core.forwarding import (
    AbortTcp,
    CloseTcp,
    DialTcp,
    DynamicReply,
    ForwardingSession,
    PauseReading,
    ResumeReading,
    Route,
    SendTcp,
    ShutdownTcpWrite,
)
from tunnel_core.forwarding.durable import (
    HOLD,
    OLD_PEER_REASON,
    REPLAY_LIMIT,
    REPLAY_LOW,
    UNKNOWN_REASON,
    DurableRegistry,
    DurableStream,
    DurableStreams,
)
from tunnel_core.forwarding.events import DropTcp, ResumeTcp
from tunnel_core.iroh_session.server import (
    DURABLE_CONTROL_KEY,
    DurableControl,
    ServerStream,
    StartForwarding,
    StartListening,
    StreamRejected,
)
from tunnel_core.iroh_session.server import SendBytes as IrohSendBytes
from tunnel_core.policy import AccessPolicy
from tunnel_core.testing import VirtualClock

MB = 1024 * 1024
CHUNK = 64 * 1024
TARGETS = (("127.0.0.1", 9),)


def _payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# ------------------------------------------------------------------------------------------ wire, golden bytes


def test_hello_golden_bytes() -> None:
    hello = rw.Hello(bytes(range(16)), 2, (rw.stream_key(1, 0), rw.stream_key(1, 4)))
    wire = rw.encode_hello(hello)
    assert wire.hex() == (
        "01" "00000027"  # HELLO, body length 39
        "02" "000102030405060708090a0b0c0d0e0f" "00000002" "0002"  # version, token, generation, two keys
        "0000000100000000" "0000000100000004"
    )
    assert rw.ControlDecoder().feed(wire) == [hello]


def test_ack_golden_bytes_and_chunked_decoding() -> None:
    wire = rw.encode_ack([(rw.stream_key(1, 8), 65536), (5, 1)])
    assert wire.hex() == "02" "00000022" "0002" "0000000100000008" "0000000000010000" "0000000000000005" \
        "0000000000000001"
    decoder = rw.ControlDecoder()
    frames = [f for byte in wire + wire for f in decoder.feed(bytes([byte]))]
    assert frames == [rw.Ack(((rw.stream_key(1, 8), 65536), (5, 1)))] * 2
    assert decoder.buffered == 0


def test_resume_opening_and_answer_golden_bytes() -> None:
    assert rw.encode_resume(0x100000004, 1000).hex() == "ffff" "0000000100000004" "00000000000003e8"
    assert rw.decode_resume(rw.encode_resume(7, 9)) == (7, 9)
    assert rw.encode_offset(258).hex() == "0000000000000102"
    assert rw.decode_offset(rw.encode_offset(2**63)) == 2**63


@pytest.mark.parametrize("wire", [
    bytes.fromhex("09" "00000000"),  # unknown frame type
    bytes.fromhex("01" "00000017" "01" + "00" * 22),  # HELLO of version 1 (no durable dynamic/reverse streams)
    bytes.fromhex("02" "00000003" "0001" "00"),  # ACK shorter than its count says
    bytes.fromhex("01" "7fffffff"),  # larger than any frame may be
])
def test_control_decoder_refuses_malformed_frames(wire: bytes) -> None:
    with pytest.raises(rw.DurableWireError):
        rw.ControlDecoder().feed(wire)


def test_replay_state_confirms_and_refuses_offsets_it_cannot_serve() -> None:
    stream = DurableStream(1)
    stream.record(b"abcdef")
    stream.confirm(2)
    assert bytes(stream.replay) == b"cdef" and stream.unconfirmed == 4
    assert stream.tail(4) == b"ef"
    stream.fin_sent = True
    stream.confirm(100)  # clamped to what was sent, FIN included
    assert stream.confirmed == 7 and stream.unconfirmed == 0
    with pytest.raises(Exception, match="the peer has 3 bytes"):
        stream.tail(3)  # below what the peer confirmed before: it lost state


# ------------------------------------------------------------------------------------------ the world


@attrs.define(eq=False)
class App:
    """A local TCP connection and the application behind it; it outlives every QUIC connection."""

    outbox: bytearray = attrs.Factory(bytearray)
    want_eof: bool = False
    endless: int = 0  # bytes to keep writing (a fast local sender during a long cut)
    received: bytearray = attrs.Factory(bytearray)
    eof_sent: bool = False
    got_eof: bool = False
    aborted: bool = False
    closed: bool = False
    paused: bool = False
    held: bool = False
    written: int = 0
    dropped: str | None = None
    stream: DurableStream | None = None
    socks_reply: int | None = None  # a dynamic flow: the SOCKS5 reply code its application got


class Side:
    """One peer's adapter for the current connection: applies events to the Apps, reports back."""

    def __init__(self, world: World, name: str, session: ForwardingSession) -> None:
        self.world = world
        self.name = name
        self.session = session
        self.apps: dict[int, App] = {}
        self.events: list[Any] = []

    def connect(self, app: App, forward: int = 0) -> int:
        fid = self.session.open_tcp(self.world.clock.now, forward)
        self._bind(fid, app)
        self.drain()
        return fid

    def socks(self, app: App, forward: int, target: str) -> int:
        """A SOCKS5 application's CONNECT to ``target`` on a dynamic forward (the client)."""
        fid = self.session.open_dynamic(self.world.clock.now, forward, target)
        self._bind(fid, app)
        self.drain()
        return fid

    def dial_done(self, fid: int) -> None:
        """A dial the world held back (``World.hold_dials``) succeeds now."""
        app = self.world.new_target()
        self.world.targets.append(app)
        self.session.flow_connected(fid)
        self._bind(fid, app)
        self.drain()

    def _bind(self, fid: int, app: App) -> None:
        self.apps[fid] = app
        stream = self.session.durable_stream(fid)
        if stream is not None:
            stream.local = app
            app.stream = stream

    def poll(self) -> bool:
        busy = False
        for fid, app in list(self.apps.items()):
            if app.aborted or app.closed or app.paused or app.held:
                continue
            if app.endless and app.written < app.endless:
                chunk = b"x" * min(CHUNK, app.endless - app.written)
                app.written += len(chunk)
                self.session.flow_data(fid, chunk)
                busy = True
            elif app.outbox:
                chunk = bytes(app.outbox[:CHUNK])
                del app.outbox[:CHUNK]
                self.session.flow_data(fid, chunk)
                busy = True
            elif app.want_eof and not app.eof_sent and not app.endless:
                app.eof_sent = True
                self.session.flow_eof(fid)
                busy = True
        return self.drain() > 0 or busy

    def drain(self) -> int:
        count = 0
        while (ev := self.session.next_event()) is not None:
            count += 1
            self.events.append(ev)
            self.apply(ev)
        return count

    def apply(self, ev: Any) -> None:
        if isinstance(ev, DialTcp) and self.world.hold_dials:
            self.world.dials.append((self, ev.flow_id))
        elif isinstance(ev, DialTcp):
            app = self.world.new_target()
            self.world.targets.append(app)
            self.session.flow_connected(ev.flow_id)
            self._bind(ev.flow_id, app)
        elif isinstance(ev, SendTcp):
            app = self.apps[ev.flow_id]
            assert not app.got_eof, "data after the FIN"
            app.received += ev.data
            self.session.flow_write_pending(ev.flow_id, 0)
        elif isinstance(ev, ShutdownTcpWrite):
            self.apps[ev.flow_id].got_eof = True
        elif isinstance(ev, CloseTcp):
            self.apps[ev.flow_id].closed = True
        elif isinstance(ev, AbortTcp):
            if ev.flow_id in self.apps:
                self.apps[ev.flow_id].aborted = True
        elif isinstance(ev, PauseReading):
            self.apps[ev.flow_id].paused = True
        elif isinstance(ev, ResumeReading):
            self.apps[ev.flow_id].paused = False
        elif isinstance(ev, ResumeTcp):
            app = ev.stream.local
            assert isinstance(app, App) and app.held
            app.held = app.paused = False
            self.apps[ev.flow_id] = app
            self.session.flow_write_pending(ev.flow_id, 0)
        elif isinstance(ev, DropTcp):
            app = ev.stream.local
            app.aborted, app.dropped = True, ev.reason
        elif isinstance(ev, DynamicReply):
            self.apps[ev.flow_id].socks_reply = ev.code
        else:
            raise AssertionError(f"unexpected event {ev!r}")

    def detach(self) -> None:
        """The connection is gone: durable apps wait for the next one, the others are reset."""
        for app in self.apps.values():
            if app.aborted or app.closed:
                continue
            stream = app.stream
            if stream is not None and stream.key is not None and not stream.lost:
                app.held = True
            else:
                app.aborted = True
        self.apps = {}

    def get_timer(self) -> float | None:
        return self.session.get_timer()

    def handle_timer(self, now: float) -> None:
        t = self.session.get_timer()
        if t is not None and t <= now:
            self.session.handle_timer(now)
        self.drain()


class World:
    """Long-lived state on both ends (the client's DurableStreams, the server's registry, the Apps) and the
    current connection between them."""

    def __init__(self, *, client_durable: bool = True, server_durable: bool = True,
                 routes: list[Route] | None = None, client_routes: list[Route] | None = None,
                 high_water: int = 1 << 20) -> None:
        self.routes = routes
        self.client_routes = client_routes
        #: DialTcp events wait in ``dials`` until the test calls ``Side.dial_done`` (a slow target)
        self.hold_dials = False
        self.dials: list[tuple[Side, int]] = []
        self.high_water = high_water
        self.clock = VirtualClock()
        self.streams = DurableStreams(bytes(16))
        self.registry = DurableRegistry()
        self.targets: list[App] = []
        self.new_target: Callable[[], App] = App
        self.pair: Pair | None = None
        self.sides: dict[str, Side] = {}
        self.connections = 0
        self.connect(client_durable=client_durable, server_durable=server_durable)

    def connect(self, *, client_durable: bool = True, server_durable: bool = True) -> None:
        for side in self.sides.values():
            side.detach()
        self.sides = {}
        pair = Pair(packet_size=16000, start_client=False)
        pair.clock = self.clock
        pair.client._durable_offered = client_durable
        pair._server_kwargs["durable"] = server_durable
        pair.on_event = self._on_event
        pair.client.connect(PEER, self.clock.now)
        self.pair = pair
        self.connections += 1
        pair.run(lambda: len(self.sides) == 2)

    def _on_event(self, side: str, ev: Any) -> None:
        assert self.pair is not None
        if isinstance(ev, qe.HandshakeCompleted):
            is_client = side == "client"
            routes = None if self.routes is None else [Route(r.protocol) if is_client else r for r in self.routes]
            if is_client and self.client_routes is not None:
                routes = self.client_routes
            session = ForwardingSession(self.pair.conn(side), is_client=is_client, protocol="tcp",
                                        target_addresses=() if is_client else TARGETS, routes=routes,
                                        high_water=self.high_water, low_water=self.high_water // 4)
            adapter = self.sides[side] = Side(self, side, session)
            session.enable_durable(self.streams if is_client else self.registry, self.clock.now)
            self.pair.participants.append(adapter)
            adapter.drain()
        elif side in self.sides:
            self.sides[side].session.handle_quic_event(ev, self.clock.now)
            self.sides[side].drain()

    @property
    def client(self) -> Side:
        return self.sides["client"]

    @property
    def server(self) -> Side:
        return self.sides["server"]

    def run(self, until: Callable[[], bool], max_time: float = 120.0) -> None:
        assert self.pair is not None
        self.pair.run(until, max_time=max_time, max_steps=1_000_000)

    def cut(self, seconds: float) -> None:
        """Nothing gets through for ``seconds``; then the connection is abandoned (consent lost)."""
        assert self.pair is not None
        self.pair.drop = lambda side, data: True
        self.pair.idle(seconds)


# ------------------------------------------------------------------------------------------ resuming


def test_a_bulk_transfer_both_ways_survives_a_cut_and_a_new_connection_byte_for_byte() -> None:
    up, down = _payload(1, 6 * MB), _payload(2, 6 * MB)
    world = World()
    assert world.client.session.durable and world.server.session.durable
    world.new_target = lambda: App(outbox=bytearray(down), want_eof=True)
    app = App(outbox=bytearray(up), want_eof=True)
    world.client.connect(app)
    world.run(lambda: len(app.received) >= MB and len(world.targets[0].received) >= MB)
    world.cut(40.0)
    assert 0 < len(app.received) < len(down)
    world.connect()
    target = world.targets[0]
    world.run(lambda: app.closed and target.closed)
    assert len(world.targets) == 1  # the target was never dialled again
    assert hashlib.sha256(app.received).digest() == hashlib.sha256(down).digest()
    assert hashlib.sha256(target.received).digest() == hashlib.sha256(up).digest()
    assert not app.aborted and not target.aborted
    world.idle = None
    world.run(lambda: not world.streams.streams)  # the last confirmations let the state go
    assert any(isinstance(e, ResumeTcp) for e in world.client.events)


def test_two_cuts_half_close_during_a_cut_and_a_second_stream_opened_between_them() -> None:
    world = World()
    first_reply = _payload(3, 3 * MB)
    world.new_target = lambda: App(outbox=bytearray(first_reply))
    one = App(outbox=bytearray(b"request one"), want_eof=True)
    world.client.connect(one)
    world.run(lambda: len(one.received) > 256 * 1024)
    world.cut(5.0)
    world.connect()
    world.new_target = lambda: App(outbox=bytearray(b"pong"), want_eof=True)
    two = App(outbox=bytearray(b"ping"))
    world.client.connect(two)
    world.run(lambda: bytes(two.received) == b"pong")
    world.cut(60.0)
    target_one = world.targets[0]
    target_one.want_eof = True  # the server's application finishes while nothing gets through
    world.connect()
    two.want_eof = True
    world.run(lambda: one.closed and two.closed and all(t.closed for t in world.targets), max_time=300.0)
    assert bytes(one.received) == first_reply and bytes(target_one.received) == b"request one"
    assert bytes(world.targets[1].received) == b"ping"
    assert world.connections == 3


def test_reading_pauses_at_the_replay_bound_during_a_long_cut() -> None:
    world = World(high_water=64 * MB)  # QUIC's own send buffer would stop the writer first
    world.new_target = lambda: App()
    app = App(endless=64 * MB)  # keeps writing as fast as it is read
    world.client.connect(app)
    world.run(lambda: bool(world.targets) and len(world.targets[0].received) > 2 * MB)
    world.pair.drop = lambda side, data: True  # type: ignore[union-attr]
    world.pair.idle(120.0)  # type: ignore[union-attr]
    stream = app.stream
    assert stream is not None
    assert app.paused
    # the replay bound stopped it (QUIC's send buffer may hold 64 MiB here); confirmations in flight when the cut
    # began took it below the limit, not below the low-water mark that would let the writer go on
    assert REPLAY_LOW < stream.unconfirmed <= REPLAY_LIMIT + CHUNK
    written_at_pause = app.written
    world.pair.idle(60.0)  # type: ignore[union-attr]
    assert app.written == written_at_pause  # nothing more is read while paused
    world.connect()
    target = world.targets[0]
    world.run(lambda: len(target.received) == app.written and app.written > written_at_pause + 4 * MB)
    assert bytes(target.received) == b"x" * len(target.received)


# ------------------------------------------------------------------------------------------ not resumable


def _hello_then_cut(world: World) -> App:
    """One exchange on a new stream, then a cut past the consent limit."""
    world.new_target = lambda: App(outbox=bytearray(b"hello"))
    app = App(outbox=bytearray(b"hi"))
    world.client.connect(app)
    world.run(lambda: bytes(app.received) == b"hello")
    world.cut(40.0)
    return app


def test_a_restarted_server_resets_the_held_streams_and_new_ones_work() -> None:
    world = World()
    app = _hello_then_cut(world)
    world.registry = DurableRegistry()  # a new server process: it knows no session
    world.connect()
    world.run(lambda: app.aborted)
    assert app.dropped == UNKNOWN_REASON
    assert not world.streams.streams
    fresh = App(outbox=bytearray(b"again"))
    world.client.connect(fresh)
    world.run(lambda: bytes(fresh.received) == b"hello")
    assert world.client.session.durable


def test_an_old_peer_on_the_new_connection_resets_the_held_streams_with_their_reason() -> None:
    world = World()
    app = _hello_then_cut(world)
    world.connect(server_durable=False)
    world.run(lambda: app.aborted)
    assert app.dropped == OLD_PEER_REASON
    assert not world.client.session.durable


def test_without_the_capability_a_lost_connection_resets_as_before() -> None:
    world = World(client_durable=False)
    assert not world.client.session.durable and not world.server.session.durable
    world.new_target = lambda: App(outbox=bytearray(b"hello"))
    app = App(outbox=bytearray(b"hi"))
    fid = world.client.connect(app)
    world.run(lambda: bytes(app.received) == b"hello")
    assert app.stream is None
    world.client.session.handle_quic_event(qe.ConnectionTerminated(0, None, "idle"), world.clock.now)
    world.client.drain()
    assert AbortTcp(fid) in world.client.events


def test_a_held_stream_the_client_no_longer_has_is_let_go_by_the_server() -> None:
    world = World()
    app = _hello_then_cut(world)
    stream = app.stream
    assert stream is not None
    stream.lost = True  # the local application went away while the tunnel was down
    world.streams.streams.clear()
    world.connect()
    target = world.targets[0]
    world.run(lambda: target.aborted)
    assert target.dropped == "the client no longer has it"


def test_streams_of_a_session_with_several_forwards_resume_on_their_own_forward() -> None:
    world = World(routes=[Route("tcp", TARGETS), Route("tcp", TARGETS)])
    replies = iter([_payload(5, 2 * MB), _payload(6, 2 * MB)])
    world.new_target = lambda: App(outbox=bytearray(next(replies)), want_eof=True)
    first, second = App(outbox=bytearray(b"one"), want_eof=True), App(outbox=bytearray(b"two"), want_eof=True)
    world.client.connect(first, 0)
    world.client.connect(second, 1)
    world.run(lambda: len(first.received) > 256 * 1024 and len(second.received) > 256 * 1024)
    world.cut(40.0)
    world.connect()
    world.run(lambda: first.closed and second.closed and all(t.closed for t in world.targets))
    assert bytes(first.received) == _payload(5, 2 * MB) and bytes(second.received) == _payload(6, 2 * MB)
    assert sorted(bytes(t.received) for t in world.targets) == [b"one", b"two"]


# ------------------------------------------------------------------------------------------ dynamic and reverse

SOCKS_TARGET = "tcp://127.0.0.1:9"


def _socks_and_reverse() -> World:
    """A session with a dynamic forward (0) and a reverse forward (1), as the signaling agrees them."""
    policy = AccessPolicy.from_strings(["127.0.0.0/8"], [])
    return World(routes=[Route("dynamic", policy=policy), Route("reverse", granted=True)],
                 client_routes=[Route("dynamic"), Route("reverse", TARGETS)])


def test_a_socks_stream_and_a_reverse_stream_resume_across_a_cut_byte_for_byte() -> None:
    """A dynamic stream (its SourceRequest/SourceResponse, then payload) and a stream the server opened for its
    reverse listener both continue on the new connection: every byte once, in order, both ways; neither target
    is dialled again and the SOCKS application gets exactly one reply."""
    world = _socks_and_reverse()
    socks_up, socks_down = _payload(11, 3 * MB), _payload(12, 3 * MB)
    reverse_up, reverse_down = _payload(13, 3 * MB), _payload(14, 3 * MB)
    replies = iter([socks_down, reverse_down])
    world.new_target = lambda: App(outbox=bytearray(next(replies)), want_eof=True)
    socks = App(outbox=bytearray(socks_up), want_eof=True)  # sends before the reply, as applications may
    world.client.socks(socks, 0, SOCKS_TARGET)
    world.run(lambda: socks.socks_reply == 0)
    reverse = App(outbox=bytearray(reverse_up), want_eof=True)  # accepted by the server's reverse listener
    world.server.connect(reverse, 1)
    socks_target, reverse_target = world.targets[0], None
    world.run(lambda: len(world.targets) == 2 and min(len(socks.received), len(reverse.received),
                                                       len(socks_target.received)) > 512 * 1024)
    reverse_target = world.targets[1]
    assert socks.stream is not None and socks.stream.key is not None  # resumable
    assert reverse.stream is not None and reverse.stream.key is not None
    world.cut(40.0)
    assert len(socks.received) < len(socks_down) and len(reverse.received) < len(reverse_down)
    world.connect()
    world.run(lambda: all(a.closed for a in (socks, reverse, socks_target, reverse_target)))
    assert len(world.targets) == 2  # neither target was dialled again
    assert bytes(socks.received) == socks_down and bytes(socks_target.received) == socks_up
    assert bytes(reverse.received) == reverse_down and bytes(reverse_target.received) == reverse_up
    assert not any(a.aborted for a in (socks, reverse, socks_target, reverse_target))
    assert sum(isinstance(e, DynamicReply) for e in world.client.events) == 0  # no second reply after the resume
    assert sum(isinstance(e, ResumeTcp) for e in world.client.events) == 2
    assert sum(isinstance(e, ResumeTcp) for e in world.server.events) == 2
    world.run(lambda: not world.streams.streams)  # the last confirmations let the state go


def test_a_socks_stream_whose_exchange_had_not_finished_is_reset_and_a_new_one_works() -> None:
    """The server was still dialling when the connection was lost: the client never learnt whether the target
    was reached, so the flow is not resumable (the adapter resets it with one line, as before)."""
    world = _socks_and_reverse()
    world.hold_dials = True
    socks = App(outbox=bytearray(b"GET /"))
    world.client.socks(socks, 0, SOCKS_TARGET)
    world.run(lambda: bool(world.dials))
    world.cut(40.0)
    world.hold_dials = False
    world.connect()  # the adapters let go of the lost connection: held or reset
    assert socks.aborted and not socks.held and socks.socks_reply is None
    assert socks.stream is not None and socks.stream.key is None
    assert not world.streams.streams and not world.registry.sessions[world.streams.token].streams
    world.new_target = lambda: App(outbox=bytearray(b"pong"))
    fresh = App(outbox=bytearray(b"ping"))
    world.client.socks(fresh, 0, SOCKS_TARGET)
    world.run(lambda: bytes(fresh.received) == b"pong")
    assert fresh.socks_reply == 0 and world.targets[-1].received == b"ping"


def test_a_socks_stream_whose_acceptance_was_lost_is_let_go_by_the_server() -> None:
    """The server dialled and answered, but the answer never reached the client: the server made the stream
    durable, the client could not, so the next HELLO does not name it and the server resets its target with one
    line (``the client no longer has it``)."""
    world = _socks_and_reverse()
    world.hold_dials = True
    socks = App(outbox=bytearray(b"GET /"))
    world.client.socks(socks, 0, SOCKS_TARGET)
    world.run(lambda: bool(world.dials))
    assert world.pair is not None
    world.pair.drop = lambda side, data: True
    side, fid = world.dials.pop()
    world.new_target = lambda: App(outbox=bytearray(b"200 OK"))
    side.dial_done(fid)
    target = world.targets[0]
    assert target.stream is not None and target.stream.key is not None
    world.cut(40.0)
    world.hold_dials = False
    world.connect()
    assert socks.aborted and socks.socks_reply is None
    world.run(lambda: target.aborted)
    assert target.dropped == "the client no longer has it"


def test_a_reverse_stream_whose_client_dial_had_not_finished_is_let_go_by_the_server() -> None:
    world = _socks_and_reverse()
    world.hold_dials = True
    reverse = App(outbox=bytearray(b"hello"))
    world.server.connect(reverse, 1)
    world.run(lambda: bool(world.dials))
    assert reverse.stream is not None and reverse.stream.key is not None  # the server's end is durable at once
    world.cut(40.0)
    world.hold_dials = False
    world.connect()
    assert reverse.held  # the server holds it; the client had nothing to hold
    world.run(lambda: reverse.aborted)
    assert reverse.dropped == "the client no longer has it"


def test_socks_and_reverse_streams_meet_an_old_peer_with_their_reason() -> None:
    world = _socks_and_reverse()
    world.new_target = lambda: App(outbox=bytearray(b"hello"))
    socks, reverse = App(outbox=bytearray(b"hi")), App(outbox=bytearray(b"hi"))
    world.client.socks(socks, 0, SOCKS_TARGET)
    world.server.connect(reverse, 1)
    world.run(lambda: bytes(socks.received) == b"hello" and bytes(reverse.received) == b"hello")
    world.cut(40.0)
    world.connect(server_durable=False)
    assert socks.held and reverse.held
    world.run(lambda: socks.aborted)
    assert socks.dropped == OLD_PEER_REASON


# ------------------------------------------------------------------------------------------ the server's bound


def test_a_server_forgets_a_stream_whose_fin_is_unconfirmed_when_its_client_never_returns() -> None:
    """The leak docs/durable.md named: a stream that ended while its FIN was unconfirmed has no socket to hold, but
    kept its entry on the server forever if the client never came back. Now the session goes HOLD seconds after
    its connection ended (the runner reports the end, as tunnel_io.runner does)."""
    world = World()
    world.new_target = lambda: App(outbox=bytearray(b"bye"), want_eof=True)
    app = App(outbox=bytearray(b"hi"), want_eof=True)
    world.client.connect(app)
    world.run(lambda: bool(world.targets) and world.targets[0].closed)
    assert world.pair is not None
    world.pair.drop = lambda side, data: True  # the client's confirmation of our FIN (50 ms later) never comes
    token = world.streams.token
    left = list(world.registry.sessions[token].streams.values())
    assert left and all(s.local_closed and not s.done for s in left)  # what used to stay forever
    ended = world.clock.now
    world.registry.connection_ended(world.server.session, ended)
    assert world.registry.get_timer() == ended + HOLD
    world.pair.idle(HOLD - 1.0)
    world.registry.expire(world.clock.now)
    assert token in world.registry.sessions  # a client back within the hold still finds it
    world.pair.idle(1.0)
    world.registry.expire(world.clock.now)
    assert not world.registry.sessions and all(s.lost for s in left)
    assert world.registry.get_timer() is None


def test_a_client_that_comes_back_within_the_hold_resumes_and_the_hold_is_off() -> None:
    world = World()
    app = _hello_then_cut(world)
    world.registry.connection_ended(world.server.session, world.clock.now)
    world.pair.idle(HOLD - 60.0)  # type: ignore[union-attr]
    world.connect()
    world.registry.expire(world.clock.now + 3600.0)  # carried by a connection again: no expiry
    app.outbox += b"more"
    target = world.targets[0]
    world.run(lambda: bytes(target.received) == b"himore")
    assert not app.aborted and world.registry.get_timer() is None


def test_a_live_session_without_streams_is_kept_when_another_client_arrives() -> None:
    """A connected client whose streams all ended must keep its session: the registry used to drop every empty
    session at the next client's HELLO, and a stream opened afterwards could not be resumed."""
    world = World()
    world.registry.adopt(bytes(range(16)), world.clock.now)  # another client's HELLO
    assert world.streams.token in world.registry.sessions
    app = _hello_then_cut(world)
    world.connect()
    app.outbox += b"!"
    world.run(lambda: bytes(world.targets[0].received) == b"hi!")
    assert not app.aborted and app.dropped is None


# ------------------------------------------------------------------------------------------ iroh mode's pieces


def test_iroh_source_request_and_response_durable_fields_golden_bytes() -> None:
    token = bytes(range(16))
    request = tw.SourceRequest("tcp://127.0.0.1:22", version=2, durable=tw.DurableRequest(token, 3, 7))
    wire = tw.encode_source_request(request)
    assert wire[4:] == (b'{"version":2,"source":"tcp://127.0.0.1:22","durable":{"token":"000102030405060708090a0b0c0d'
                        b'0e0f","key":3,"offset":7}}')
    assert tw.decode_source_request(wire[4:], expected_version=2) == request
    fresh = tw.encode_source_request(tw.SourceRequest("tcp://h:1", version=2, durable=tw.DurableRequest(token, 4)))
    assert b'"durable":{"token":"000102030405060708090a0b0c0d0e0f","key":4}}' in fresh
    response = tw.SourceResponse(True, version=2, durable=65536)
    assert tw.encode_source_response(response)[4:] == b'{"version":2,"accepted":true,"durable":65536}'
    assert tw.decode_source_response(tw.encode_source_response(response)[4:], expected_version=2) == response


@pytest.mark.parametrize("durable", [
    '"x"', '{"token":"00","key":1}', '{"token":"' + "g" * 32 + '","key":1}', '{"token":"' + "0" * 32 + '","key":-1}',
    '{"token":"' + "0" * 32 + '","key":1,"offset":true}',
])
def test_iroh_malformed_durable_fields_are_refused(durable: str) -> None:
    body = ('{"version":2,"source":"tcp://h:1","durable":' + durable + "}").encode()
    with pytest.raises(tw.WireError):
        tw.decode_source_request(body, expected_version=2)


def test_iroh_stream_frames_golden_bytes() -> None:
    assert b"".join(rw.encode_data(b"hi")).hex() == "03" "00000002" "6869"
    assert rw.encode_fin().hex() == "04" "00000000"
    decoder = rw.ControlDecoder(stream=True)
    wire = b"".join(rw.encode_data(b"x" * (rw.MAX_DATA + 1))) + rw.encode_ack([(1, 9)]) + rw.encode_fin()
    frames = decoder.feed(wire)
    assert [type(f).__name__ for f in frames] == ["Data", "Data", "Ack", "Fin"]
    assert sum(len(f.payload) for f in frames[:2]) == rw.MAX_DATA + 1
    with pytest.raises(rw.DurableWireError):
        rw.ControlDecoder(stream=True).feed(rw.encode_hello(rw.Hello(bytes(16), 1, ())))
    with pytest.raises(rw.DurableWireError):
        rw.ControlDecoder().feed(rw.encode_fin())  # a control stream carries no FIN


def _server_stream(answer: Any) -> ServerStream:
    policy = AccessPolicy.from_strings(["127.0.0.0/8"], [])
    return ServerStream(policy, permit=True, version=2, durable=answer)


def _request(durable: tw.DurableRequest | None) -> bytes:
    return tw.encode_source_request(tw.SourceRequest("tcp://127.0.0.1:22", version=2, durable=durable))


def test_iroh_server_stream_answers_durable_requests() -> None:
    token = bytes(16)
    answers: list[tw.DurableRequest] = []

    def answer(request: tw.DurableRequest) -> int | str:
        answers.append(request)
        return 0 if request.offset is None else ("unknown durable stream" if request.key == 9 else 1234)

    fresh = _server_stream(answer)
    fresh.feed(_request(tw.DurableRequest(token, 1)))
    sent, start = fresh.next_event(), fresh.next_event()
    assert isinstance(sent, IrohSendBytes) and isinstance(start, StartForwarding)
    assert tw.decode_source_response(sent.data[4:], expected_version=2).durable == 0
    assert start.durable == tw.DurableRequest(token, 1)
    resumed = _server_stream(answer)
    resumed.feed(_request(tw.DurableRequest(token, 2, 500)))
    sent = resumed.next_event()
    assert tw.decode_source_response(sent.data[4:], expected_version=2).durable == 1234
    unknown = _server_stream(answer)
    unknown.feed(_request(tw.DurableRequest(token, 9, 500)))
    refused = tw.decode_source_response(unknown.next_event().data[4:], expected_version=2)
    assert not refused.accepted and refused.reason == "unknown durable stream"
    control = _server_stream(answer)
    control.feed(_request(tw.DurableRequest(token, DURABLE_CONTROL_KEY)))
    control.next_event()
    assert control.next_event() == DurableControl(tw.DurableRequest(token, DURABLE_CONTROL_KEY))
    assert len(answers) == 3  # the control stream is not a forwarding stream
    off = _server_stream(None)  # e2, or durable streams off: the field is ignored
    off.feed(_request(tw.DurableRequest(token, 1)))
    sent, start = off.next_event(), off.next_event()
    assert tw.decode_source_response(sent.data[4:], expected_version=2).durable is None
    assert isinstance(start, StartForwarding) and start.durable is None


def test_iroh_reverse_forward_streams_are_durable_when_the_client_asks() -> None:
    """A reverse forward's request with the durable field (our e4 client): the listener is started with the
    client's durable session and the answer says ``"durable":0``; a resume of one of its connections' streams (a
    key the server named) takes the held socket without binding or dialling anything, or is refused when the
    server no longer has it. Without the field the answer is as before."""
    token = bytes(range(16))
    policy = AccessPolicy.from_strings(["127.0.0.0/8"], [])
    held = {(1 << 62): 4096}

    def answer(request: tw.DurableRequest) -> int | str:
        return held.get(request.key, "unknown durable stream") if request.offset is not None else 0

    def stream(durable: tw.DurableRequest | None) -> ServerStream:
        machine = ServerStream(policy, permit=True, version=2, allow_listen=["127.0.0.1:8080"], durable=answer)
        machine.feed(tw.encode_source_request(tw.SourceRequest("reverse://127.0.0.1:8080", version=2,
                                                               durable=durable)))
        return machine

    asked = stream(tw.DurableRequest(token, 7))
    start = asked.next_event()
    assert isinstance(start, StartListening) and start.durable == tw.DurableRequest(token, 7)
    asked.listening()
    response = tw.decode_source_response(asked.next_event().data[4:], expected_version=2)  # type: ignore[union-attr]
    assert response.accepted and response.durable == 0
    plain = stream(None)
    start = plain.next_event()
    assert isinstance(start, StartListening) and start.durable is None
    plain.listening()
    assert tw.decode_source_response(plain.next_event().data[4:], expected_version=2).durable is None  # type: ignore[union-attr]
    resumed = stream(tw.DurableRequest(token, 1 << 62, 100))
    sent, begin = resumed.next_event(), resumed.next_event()
    assert tw.decode_source_response(sent.data[4:], expected_version=2).durable == 4096  # type: ignore[union-attr]
    assert isinstance(begin, StartForwarding) and begin.addresses == ()
    assert begin.durable == tw.DurableRequest(token, 1 << 62, 100)
    gone = stream(tw.DurableRequest(token, (1 << 62) + 1, 100))
    refused = tw.decode_source_response(gone.next_event().data[4:], expected_version=2)  # type: ignore[union-attr]
    assert not refused.accepted and refused.reason == "unknown durable stream"
    assert isinstance(gone.next_event(), StreamRejected)
