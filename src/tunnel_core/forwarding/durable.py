"""Durable streams (issue 15 item 4; docs/durable.md): forwarded TCP connections that survive a reconnect.

A reconnect builds a new QUIC connection, so everything QUIC buffered for the old one is gone. To lose no byte,
each side keeps what it sent until the *application* on the other side confirmed it (an ACK frame on the control
stream, ``tunnel_core.resume``), and counts what it received. On the next connection both sides
exchange those counts per stream and continue exactly there: no byte lost, none repeated.

Three pieces, all sans-IO:

* ``DurableStream`` - one forwarded TCP connection's replay state; it outlives the QUIC streams that carry it, and
  carries the adapter's object for the local socket (``local``, opaque here) from one connection to the next;
* ``DurableStreams`` - one durable session (a client process's tunnel), named by a random 16-byte token: its
  streams by key, and which connection carries it now. A client keeps one; a server keeps one per client token in
  a ``DurableRegistry`` shared by its sessions;
* ``DurableLink`` - the part of a ``ForwardingSession`` that speaks the control stream and the resume openings on
  one QUIC connection, used by the session only when both ends advertised the capability.

Bounds: a stream stops reading its local socket while more than ``REPLAY_LIMIT`` bytes are unconfirmed (the
session's ``PauseReading``), so memory per stream stays below the limit plus one read, however long a cut lasts.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import attrs

from tunnel_core.errors import LocalProtocolError
from tunnel_core.forwarding.events import DropTcp, ResumeTcp
from tunnel_core.resume import (
    CONTROL_OPENING,
    RESUME_ANSWER_SIZE,
    RESUME_HEADER_SIZE,
    RESUME_OPENING,
    TOKEN_SIZE,
    Ack,
    ControlDecoder,
    DurableWireError,
    Hello,
    decode_offset,
    decode_resume,
    encode_ack,
    encode_hello,
    encode_offset,
    encode_resume,
    stream_key,
)

if TYPE_CHECKING:
    from tunnel_core.forwarding.session import ForwardingSession, _Flow

log = logging.getLogger("tunnel_core.forwarding")

#: Unconfirmed bytes per stream above which its local socket is no longer read, and below which it is again. As
#: large as the QUIC flow-control window, so on a live connection it never limits more than QUIC does (a stream's
#: unconfirmed bytes are about a round trip of its data; a 50 Mbit/s, 600 ms satellite path holds ~4 MB).
REPLAY_LIMIT = 8 << 20
REPLAY_LOW = 4 << 20
#: A receiver confirms at least every this many bytes of a stream, and at most ACK_DELAY after a smaller amount.
ACK_STEP = 64 << 10
ACK_DELAY = 0.05
#: RESET_STREAM code for a resume the server cannot serve (unknown key: it restarted or let the stream go).
RESET_UNKNOWN_STREAM = 5
#: RESET_STREAM code for a stream that moved to a newer connection of the same durable session.
RESET_MOVED = 6
#: How long a server keeps a durable session no connection carries (the client's default reconnect budget).
HOLD = 300.0

UNKNOWN_REASON = "the server no longer has it (restarted?)"
OLD_PEER_REASON = "the new connection cannot resume streams (an older or upstream peer)"


@attrs.define(eq=False)
class DurableStream:
    """One forwarded TCP connection's replay state. Offsets count bytes from the connection's start; a FIN counts
    as one more byte, so "confirmed the FIN" is just a larger offset."""

    key: int | None
    forward: int = 0
    #: bytes sent and not confirmed yet; replay[0] lies at offset ``confirmed``
    replay: bytearray = attrs.Factory(bytearray)
    confirmed: int = 0
    sent: int = 0
    fin_sent: bool = False
    received: int = 0
    fin_received: bool = False
    #: ``received`` as last told to the peer (ACK or resume)
    told: int = 0
    #: the adapter's object for the local socket (opaque to the core)
    local: Any = None
    #: the local socket ended normally (both directions finished): nothing more to deliver
    local_closed: bool = False
    #: can no longer be resumed (reset, or dropped)
    lost: bool = False

    @property
    def unconfirmed(self) -> int:
        return len(self.replay)

    @property
    def end(self) -> int:
        """The offset just past everything sent, the FIN included."""
        return self.sent + (1 if self.fin_sent else 0)

    @property
    def done(self) -> bool:
        """Both directions finished and the peer confirmed ours: nothing is left to resume."""
        return self.fin_sent and self.fin_received and self.confirmed >= self.end

    def record(self, data: bytes) -> None:
        self.replay += data
        self.sent += len(data)

    def confirm(self, offset: int) -> None:
        """The peer's application has ``offset`` bytes of this stream: forget what lies below."""
        offset = min(offset, self.end)
        if offset > self.confirmed:
            drop = min(offset, self.sent) - self.confirmed
            if drop > 0:
                del self.replay[:drop]
            self.confirmed = offset

    def tail(self, offset: int) -> bytes:
        """What to send again when the peer says it has ``offset`` bytes; LocalProtocolError if that is more than
        was sent or less than it confirmed earlier (the peer lost state: the stream cannot be resumed)."""
        if offset < self.confirmed or offset > self.end:
            raise LocalProtocolError(f"stream {self.key}: the peer has {offset} bytes, we kept {self.confirmed}..")
        self.confirm(offset)
        return bytes(self.replay)


class DurableStreams:
    """One durable session: its token, the number of the connection now carrying it, its streams by key."""

    def __init__(self, token: bytes) -> None:
        if len(token) != TOKEN_SIZE:
            raise LocalProtocolError("a durable session token has 16 bytes")
        self.token = token
        self.generation = 0
        self.streams: dict[int, DurableStream] = {}
        #: the DurableLink of the connection now carrying this session
        self.owner: DurableLink | None = None
        #: server: when the connection carrying it ended (None while one carries it)
        self.orphaned_at: float | None = None

    def add(self, stream: DurableStream) -> None:
        assert stream.key is not None
        self.streams[stream.key] = stream

    def discard(self, stream: DurableStream) -> None:
        if stream.key is not None and self.streams.get(stream.key) is stream:
            del self.streams[stream.key]


class DurableRegistry:
    """A server's durable sessions by token, shared by all of its QUIC connections (a client that comes back is a
    new connection, and in nostr mode a new session of the server).

    Bounded: a session no connection carries is kept ``hold`` seconds for its client, then forgotten with every
    stream it still has - held ones (whose sockets the adapter closes after the same time) and the small entries
    of streams that ended while their last bytes or FIN were unconfirmed (their sockets are already closed). The
    adapter reports a connection's end (``connection_ended``) and calls ``expire`` at ``get_timer``; a session
    with no streams and no connection goes at once. A session a live connection carries stays, streams or not."""

    def __init__(self, hold: float = HOLD) -> None:
        self.hold = hold
        self.sessions: dict[bytes, DurableStreams] = {}

    def adopt(self, token: bytes, now: float | None = None) -> DurableStreams:
        streams = self.sessions.get(token)
        if streams is None:
            streams = self.sessions[token] = DurableStreams(token)
        streams.orphaned_at = None
        self._prune(now, keep=token)
        return streams

    def connection_ended(self, session: object, now: float) -> None:
        """The connection of ``session`` (a ForwardingSession) is over: the durable session it carried, if it
        still did, waits ``hold`` seconds for its client."""
        for streams in self.sessions.values():
            if streams.owner is not None and streams.owner.session is session:
                streams.owner = None
                streams.orphaned_at = now
        self._prune(now)

    def get_timer(self) -> float | None:
        times = [s.orphaned_at + self.hold for s in self.sessions.values() if s.orphaned_at is not None]
        return min(times) if times else None

    def expire(self, now: float) -> None:
        """Forget the sessions no connection carried for ``hold`` seconds; their streams can no longer be
        resumed (a client that comes back later has them reset with one line)."""
        self._prune(now)

    def _prune(self, now: float | None, keep: bytes | None = None) -> None:
        """Sessions no connection carries go when they have no stream left (a token is 128 random bits: no reuse
        by chance), or ``hold`` seconds after their connection ended. A session whose connection the adapter
        never reported ended (iroh mode's Parking, which holds its own sockets) goes only when empty."""
        for token, streams in list(self.sessions.items()):
            if token == keep or streams.owner is not None:
                continue
            if streams.streams:
                if streams.orphaned_at is None or now is None or now < streams.orphaned_at + self.hold:
                    continue
                for stream in streams.streams.values():
                    stream.lost = True
            del self.sessions[token]


class DurableLink:
    """Durable streams on one QUIC connection, for the ``ForwardingSession`` that owns it.

    Client: built with the client's ``DurableStreams``; it opens the control stream with HELLO, and a resume stream
    for every stream still held. Server: built with the ``DurableRegistry``; HELLO names the session.
    """

    def __init__(self, session: ForwardingSession, source: DurableStreams | DurableRegistry, now: float) -> None:
        self.session = session
        self.quic = session._quic
        self.is_client = session._is_client
        self.streams: DurableStreams | None = source if isinstance(source, DurableStreams) else None
        self.registry = source if isinstance(source, DurableRegistry) else None
        self.control: int | None = None
        self.decoder = ControlDecoder()
        #: server: streams whose special opening is still incomplete, and resume streams waiting for HELLO
        self.waiting: dict[int, bytearray] = {}
        self.waiting_fin: set[int] = set()
        self.ack_at: float | None = None
        self.dirty: dict[int, DurableStream] = {}
        self.flows: dict[int, DurableStream] = {}  # stream id -> stream, for the flows this connection carries
        self.pending: list[_Flow] = []  # server: flows opened before HELLO named the session
        self.surrendered = False
        if self.is_client:
            assert self.streams is not None
            self._start_client(now)

    # -------------------------------------------------------------------------------- client: a new connection

    def _start_client(self, now: float) -> None:
        streams = self.streams
        assert streams is not None
        previous = streams.owner
        if previous is not None and previous is not self:
            previous.surrender()
        streams.owner = self
        streams.generation += 1
        held = [s for s in streams.streams.values() if not s.lost]
        self.control = self.quic.get_next_available_stream_id(is_unidirectional=False)
        hello = Hello(streams.token, streams.generation, tuple(s.key for s in held if s.key is not None))
        self.quic.send_stream_data(self.control, CONTROL_OPENING + encode_hello(hello))
        for stream in held:
            self._resume_from_client(stream)

    def _resume_from_client(self, stream: DurableStream) -> None:
        assert stream.key is not None
        flow_id = self.quic.get_next_available_stream_id(is_unidirectional=False)
        self.quic.send_stream_data(flow_id, encode_resume(stream.key, stream.received))
        stream.told = stream.received
        flow = self.session._new_durable_flow(flow_id, stream)
        flow.resuming = bytearray()

    def answer_received(self, flow: _Flow, data: bytes) -> bytes:
        """Client: the first bytes of a resume stream are the server's received offset; then the replay goes out.
        Returns the payload after the answer (empty while it is incomplete)."""
        assert flow.resuming is not None and flow.durable is not None
        need = RESUME_ANSWER_SIZE - len(flow.resuming)
        flow.resuming += data[:need]
        rest = data[need:]
        if len(flow.resuming) < RESUME_ANSWER_SIZE:
            return b""
        offset = decode_offset(bytes(flow.resuming))
        flow.resuming = None
        self.quic.consume(flow.flow_id, RESUME_ANSWER_SIZE)
        self._continue(flow, offset)
        return rest

    # -------------------------------------------------------------------------------- server: openings, HELLO

    def read_opening(self, stream_id: int, buffer: bytearray, fin: bool, now: float) -> bool | None:
        """Server: a new stream's first bytes. None for an ordinary stream; True if it is a durable opening (this
        link owns the stream from now on); False while it may still become one (one byte so far)."""
        if not buffer or buffer[:1] != RESUME_OPENING[:1]:
            return None
        if len(buffer) < 2:
            return False
        if buffer[:2] == CONTROL_OPENING and self.control is None:
            self.control = stream_id
            self.quic.consume(stream_id, 2)
            self.on_control(bytes(buffer[2:]), now)
            return True
        if buffer[:2] != RESUME_OPENING:
            self.session._abort_stream(stream_id, RESET_UNKNOWN_STREAM)
            return True
        self.waiting[stream_id] = bytearray(buffer)
        if fin:
            self.waiting_fin.add(stream_id)
        self._try_resumes()
        return True

    def owns(self, stream_id: int) -> bool:
        return stream_id == self.control or stream_id in self.waiting

    def on_stream(self, stream_id: int, data: bytes, fin: bool, now: float) -> None:
        if stream_id == self.control:
            self.on_control(data, now)
            return
        self.waiting[stream_id] += data
        if fin:
            self.waiting_fin.add(stream_id)
        self._try_resumes()

    def on_control(self, data: bytes, now: float) -> None:
        if not data:
            return
        assert self.control is not None
        self.quic.consume(self.control, len(data))
        try:
            frames = self.decoder.feed(data)
        except DurableWireError as exc:
            log.debug("durable control stream: %s", exc)
            self.session._abort_stream(self.control, RESET_UNKNOWN_STREAM)
            return
        for frame in frames:
            if isinstance(frame, Hello):
                self._on_hello(frame, now)
            elif isinstance(frame, Ack):
                self._on_ack(frame)

    def _on_hello(self, hello: Hello, now: float) -> None:
        if self.is_client or self.registry is None or self.streams is not None:
            return
        streams = self.registry.adopt(hello.token, now)
        previous = streams.owner
        if previous is not None and previous is not self:
            previous.surrender()
        streams.owner = self
        streams.generation = hello.generation
        self.streams = streams
        kept = set(hello.keys)
        for key, stream in list(streams.streams.items()):
            if key not in kept:  # the client no longer has it: the local socket goes too
                self._drop(stream, "the client no longer has it")
        for flow in self.pending:
            if flow.durable is not None and flow.flow_id in self.session._flows:
                flow.durable.key = stream_key(hello.generation, flow.flow_id)
                streams.add(flow.durable)
        self.pending.clear()
        self._try_resumes()

    def _on_ack(self, ack: Ack) -> None:
        if self.streams is None:
            return
        for key, offset in ack.offsets:
            stream = self.streams.streams.get(key)
            if stream is None:
                continue
            stream.confirm(offset)
            if stream.done and stream.local_closed:
                self.streams.discard(stream)

    def _try_resumes(self) -> None:
        """Server: resume streams whose opening is complete, once HELLO named the session."""
        if self.streams is None:
            return
        for stream_id, buffer in list(self.waiting.items()):
            fin = stream_id in self.waiting_fin
            if len(buffer) < RESUME_HEADER_SIZE:
                if fin:  # ended before its opening did
                    del self.waiting[stream_id]
                    self.waiting_fin.discard(stream_id)
                    self.session._abort_stream(stream_id, RESET_UNKNOWN_STREAM)
                continue
            del self.waiting[stream_id]
            self.waiting_fin.discard(stream_id)
            key, offset = decode_resume(bytes(buffer[:RESUME_HEADER_SIZE]))
            rest = bytes(buffer[RESUME_HEADER_SIZE:])
            self.quic.consume(stream_id, RESUME_HEADER_SIZE)
            stream = self.streams.streams.get(key)
            if stream is None or stream.lost:
                self.session._abort_stream(stream_id, RESET_UNKNOWN_STREAM)
                if stream is not None:
                    self._drop(stream, UNKNOWN_REASON)
                continue
            flow = self.session._new_durable_flow(stream_id, stream)
            self.quic.send_stream_data(stream_id, encode_offset(stream.received))
            stream.told = stream.received
            if not self._continue(flow, offset):
                continue
            if rest or fin:
                self.session._on_tcp_data(flow, rest, fin)

    # -------------------------------------------------------------------------------- both: resuming

    def _continue(self, flow: _Flow, offset: int) -> bool:
        """Both sides know where the other is: send the rest of our replay (and FIN), hand the socket over."""
        stream = flow.durable
        assert stream is not None
        try:
            tail = stream.tail(offset)
        except LocalProtocolError as exc:
            log.debug("%s", exc)
            self.session._abort_stream(flow.flow_id, RESET_UNKNOWN_STREAM)
            self.session._forget(flow)
            self._drop(stream, UNKNOWN_REASON)
            return False
        if tail:
            self.quic.send_stream_data(flow.flow_id, tail)
        if stream.fin_sent:  # again, even if confirmed, so the new QUIC stream ends cleanly too
            self.quic.send_stream_data(flow.flow_id, b"", end_stream=True)
        flow.send_done = stream.fin_sent
        flow.recv_done = stream.fin_received
        if not stream.local_closed:
            self.session._events.append(ResumeTcp(flow.flow_id, stream))
        if flow.send_done and flow.recv_done:
            self.session._forget(flow, cleanly=True)
        elif stream.unconfirmed > REPLAY_LIMIT:
            self.session._pause(flow.flow_id)
        return True

    def drop(self, flow: _Flow, reason: str) -> None:
        """A flow whose resume the peer refused."""
        if flow.durable is not None:
            self._drop(flow.durable, reason)

    def _drop(self, stream: DurableStream, reason: str) -> None:
        """A stream that cannot be resumed: its local socket is reset (the adapter says so in one line)."""
        stream.lost = True
        if self.streams is not None:
            self.streams.discard(stream)
        if stream.local is not None and not stream.local_closed:
            self.session._events.append(DropTcp(stream, reason))

    def surrender(self) -> None:
        """A newer connection of the same durable session took over: let go of our flows without touching their
        sockets (the new connection's adapter takes them)."""
        if self.surrendered:
            return
        self.surrendered = True
        session = self.session
        for flow in list(session._flows.values()):
            if flow.durable is not None:
                session._abort_stream(flow.flow_id, RESET_MOVED)
                flow.durable = None  # not ours any more: forgetting the flow must not drop the stream
                session._forget(flow)

    def drop_all(self, reason: str) -> None:
        """Client, on a connection that cannot resume: every held stream is reset with one line."""
        assert self.streams is not None
        for stream in list(self.streams.streams.values()):
            self._drop(stream, reason)

    # -------------------------------------------------------------------------------- data path

    def opened(self, flow: _Flow, *, register: bool = True) -> None:
        """A TCP flow on this connection becomes durable: it keeps what it sends from now on. Without ``register``
        (a client's dynamic flow before the server accepted its target) it cannot be resumed yet: a connection
        lost meanwhile resets it, as the server may never have dialled; ``register`` follows on acceptance."""
        flow.durable = DurableStream(None, forward=flow.forward)
        if register:
            self.register(flow)

    def register(self, flow: _Flow) -> None:
        """From now on ``flow``'s stream is resumed after a reconnect: it gets its key (a server before HELLO: once
        HELLO named the session)."""
        stream = flow.durable
        assert stream is not None
        if self.streams is not None:
            stream.key = stream_key(self.streams.generation, flow.flow_id)
            self.streams.add(stream)
        else:
            self.pending.append(flow)

    def received(self, stream: DurableStream, n: int, now: float) -> None:
        """``n`` more bytes (a FIN counts 1) went to the local socket's queue: confirm them soon."""
        stream.received += n
        if stream.key is None or self.control is None:
            return
        if stream.received - stream.told >= ACK_STEP:
            self._send_acks([stream])
            self.dirty.pop(stream.key, None)
            return
        self.dirty[stream.key] = stream
        if self.ack_at is None:
            self.ack_at = now + ACK_DELAY

    def handle_timer(self, now: float) -> None:
        if self.ack_at is not None and self.ack_at <= now:
            self.ack_at = None
            dirty, self.dirty = list(self.dirty.values()), {}
            self._send_acks(dirty)

    def _send_acks(self, streams: list[DurableStream]) -> None:
        offsets = [(s.key, s.received) for s in streams if s.key is not None and s.received > s.told]
        if not offsets or self.control is None or self.surrendered:
            return
        for s in streams:
            s.told = s.received
        try:
            self.quic.send_stream_data(self.control, encode_ack(offsets))
        except (ValueError, AssertionError):
            pass  # the control stream is gone (the peer reset it): confirmations wait for the next connection

    def released(self, flow: _Flow, *, cleanly: bool) -> None:
        """The session forgets ``flow``: a clean end keeps the stream until the peer confirmed our FIN, anything
        else (a reset either way) ends it."""
        stream = flow.durable
        if stream is None:
            return
        if cleanly:
            stream.local_closed = True
            if stream.done and self.streams is not None:
                self.streams.discard(stream)
            return
        stream.lost = True
        if self.streams is not None:
            self.streams.discard(stream)


__all__ = [
    "ACK_DELAY", "ACK_STEP", "HOLD", "OLD_PEER_REASON", "REPLAY_LIMIT", "REPLAY_LOW", "UNKNOWN_REASON", "DurableLink",
    "DurableRegistry", "DurableStream", "DurableStreams",
]
