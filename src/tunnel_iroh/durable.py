"""Durable streams in iroh mode (docs/durable.md): one local TCP connection over a framed iroh bi-stream, able to
continue on the next connection's stream where it stopped.

The replay state is the core's ``DurableStream`` (what we sent and the peer has not confirmed, what we received);
the frames are ``tunnel_core.resume``'s DATA / ACK / FIN. ``bridge`` runs one stream until the connection ends
(``LOST``: keep the local socket for the next one), the local socket fails (``RESET``) or both directions are done
and confirmed (``DONE``). Reading the local socket waits while more than ``REPLAY_LIMIT`` bytes are unconfirmed,
and does not happen at all between connections, so memory stays bounded however long an outage lasts.

Confirmations travel on a separate stream per connection (``Control``, opened by the client with a
SourceRequest naming key 0): on the data stream itself an ACK would wait behind DATA held up by flow control, and
a writer paused at its replay bound would then wait for the ACK forever.

The server keeps held connections by client token and stream key (``Parking``) for ``GRACE`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable
from typing import Any

from tunnel_core.errors import LocalProtocolError
from tunnel_core.forwarding.durable import REPLAY_LIMIT, REPLAY_LOW, DurableRegistry, DurableStream
from tunnel_core.resume import Ack, ControlDecoder, Data, DurableWireError, Fin, encode_ack, encode_data, encode_fin
from tunnel_core.wire import DurableRequest
from tunnel_iroh import ffi
from tunnel_iroh.bridge import CHUNK, READ_LIMIT, RESET_CODE

log = logging.getLogger("tunnel_iroh")

#: How long a server holds a lost client's durable connections (the client's default reconnect budget).
GRACE = 300.0
#: The reason a server refuses to resume a stream it does not hold (the client then resets it with one line).
UNKNOWN_STREAM = "unknown durable stream"
#: After both FINs, how long to wait for the confirmation of ours once the peer ended its side.
FIN_WAIT = 5.0


class Outcome(enum.Enum):
    DONE = "done"
    LOST = "lost"
    RESET = "reset"


#: The key of a connection's control stream in its SourceRequest (data streams count from 1).
CONTROL_KEY = 0
#: The first key of the streams a server opens for a reverse forward's connections (it names them; the client's
#: own keys count from 1 and never get here).
REVERSE_KEYS = 1 << 62


class Control:
    """A connection's control stream: ACK frames both ways. ``want(stream)`` asks for a confirmation of what
    ``stream`` received (sent by the writer soon, batched); ``on_ack(key, offset)`` gets the peer's."""

    def __init__(self, on_ack: Callable[[int, int], None]) -> None:
        self.on_ack = on_ack
        self.dirty: dict[int, DurableStream] = {}
        self.wake = asyncio.Event()
        self.repeat = False

    def want(self, stream: DurableStream) -> None:
        if stream.key is not None:
            self.dirty[stream.key] = stream
            self.wake.set()

    def nudge(self, streams: list[DurableStream]) -> None:
        """Send the confirmations of ``streams`` again, even those already sent: something the peer's QUIC must
        acknowledge (tunnel_iroh.heal: is the path alive?); a repeated ACK changes nothing at the peer."""
        self.repeat = True
        for stream in streams:
            self.want(stream)

    async def run(self, send: Any, recv: Any, first: bytes = b"") -> None:
        """Until the stream (or its connection) ends."""

        async def writer() -> None:
            while True:
                await self.wake.wait()
                self.wake.clear()
                batch, self.dirty = list(self.dirty.values()), {}
                repeat, self.repeat = self.repeat, False
                due = [(s, s.received) for s in batch if s.key is not None and (s.received > s.told or repeat)]
                if not due:
                    continue
                try:
                    await send.write_all(encode_ack([(s.key or 0, offset) for s, offset in due]))
                except BaseException:
                    for s in batch:  # not sent: the next control stream sends them
                        self.want(s)
                    raise
                for s, offset in due:
                    s.told = max(s.told, offset)

        async def reader() -> None:
            decoder = ControlDecoder()
            data = first
            while True:
                for frame in decoder.feed(data) if data else ():
                    if isinstance(frame, Ack):
                        for key, offset in frame.offsets:
                            self.on_ack(key, offset)
                data = await recv.read(READ_LIMIT)
                if not data:
                    return

        tasks = [asyncio.ensure_future(writer()), asyncio.ensure_future(reader())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def confirm(stream: DurableStream, room: asyncio.Event, offset: int) -> None:
    """The peer confirmed ``offset`` bytes: forget them, and read the local socket again below REPLAY_LOW."""
    stream.confirm(offset)
    if stream.unconfirmed <= REPLAY_LOW:
        room.set()


async def bridge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, send: Any, recv: Any,
                 stream: DurableStream, peer_offset: int, first: bytes, room: asyncio.Event,
                 want_ack: Callable[[DurableStream], None]) -> Outcome:
    """Carry ``stream`` over one iroh bi-stream, starting with what the peer lacks beyond ``peer_offset``.
    ``room`` is set while the replay buffer has room (``confirm`` sets it); ``want_ack`` asks the control stream
    to confirm what we received."""
    f = ffi.load()
    try:
        tail = stream.tail(peer_offset)
    except LocalProtocolError as exc:
        log.debug("%s", exc)
        await _abort(send, recv)
        return Outcome.RESET
    if stream.unconfirmed <= REPLAY_LIMIT:
        room.set()
    else:
        room.clear()
    decoder = ControlDecoder(stream=True)
    sent_all = asyncio.Event()

    async def write(*frames: bytes) -> None:
        for frame in frames:
            await send.write_all(frame)

    async def local_to_stream() -> None:
        if tail:
            await write(*encode_data(tail))
        while not stream.fin_sent:
            await room.wait()
            data = await reader.read(CHUNK)
            if not data:
                stream.fin_sent = True
                break
            stream.record(data)  # before it leaves: a write that fails with the connection is replayed later
            if stream.unconfirmed > REPLAY_LIMIT:
                room.clear()
            await write(*encode_data(data))
        await write(encode_fin())
        sent_all.set()

    async def stream_to_local() -> Outcome:
        data = first
        while True:
            for frame in decoder.feed(data) if data else ():
                if isinstance(frame, Data):
                    if not stream.fin_received:
                        writer.write(frame.payload)
                        stream.received += len(frame.payload)
                elif isinstance(frame, Fin) and not stream.fin_received:
                    stream.fin_received = True
                    stream.received += 1
                    if writer.can_write_eof():
                        writer.write_eof()
            await writer.drain()
            if stream.received > stream.told:
                want_ack(stream)
            if stream.fin_received:
                break
            data = await recv.read(READ_LIMIT)
            if not data:  # the peer ended the stream before its FIN frame: the connection is going
                return Outcome.LOST
        # Both FINs: wait until ours is confirmed (or the connection goes), then end the QUIC stream.
        await sent_all.wait()
        loop = asyncio.get_running_loop()
        peer_ended: float | None = None
        while not stream.done:
            if peer_ended is not None:  # the peer has all it needs; our confirmation is on its way, or lost
                if loop.time() - peer_ended > FIN_WAIT:
                    break
                await asyncio.sleep(0.05)
                continue
            try:
                data = await asyncio.wait_for(recv.read(READ_LIMIT), 0.05)
            except TimeoutError:
                continue
            if not data:
                peer_ended = loop.time()
        await send.finish()
        return Outcome.DONE

    up = asyncio.ensure_future(local_to_stream())
    down = asyncio.ensure_future(stream_to_local())
    try:
        pending: set[asyncio.Future[Any]] = {up, down}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is not None:
                    raise exc
                if task is down:
                    return task.result()  # type: ignore[no-any-return]
        return Outcome.DONE
    except f.IrohError as exc:
        log.debug("durable stream %s: connection gone: %s", stream.key, ffi.error_text(exc))
        return Outcome.LOST
    except DurableWireError as exc:
        log.debug("durable stream %s: %s", stream.key, exc)
        await _abort(send, recv)
        return Outcome.RESET
    except OSError as exc:  # the local socket failed: the stream ends both ways
        log.debug("durable stream %s: local socket: %s", stream.key, exc)
        await _abort(send, recv)
        return Outcome.RESET
    finally:
        for task in (up, down):
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(up, down, return_exceptions=True)


def closed(conn: Any) -> bool:
    """Whether an iroh connection has ended (its close reason is known)."""
    try:
        return conn.close_reason() is not None
    except Exception:
        return False


async def _abort(send: Any, recv: Any) -> None:
    with contextlib.suppress(Exception):
        await send.reset(RESET_CODE)
    with contextlib.suppress(Exception):
        await recv.stop(RESET_CODE)


class Held:
    """A server's durable connection: its local socket, the task carrying it now, and (while no connection carries
    it) the timer that gives up on it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.task: asyncio.Task[Any] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.free = asyncio.Event()  # no task carries it


class Parking:
    """The server's durable streams of every client, by token and key (a client that comes back is a new
    connection)."""

    def __init__(self) -> None:
        self.registry = DurableRegistry()
        #: the control stream now open for each client token, and each stream's room event
        self.controls: dict[bytes, Control] = {}
        self.rooms: dict[tuple[bytes, int], asyncio.Event] = {}

    def room(self, token: bytes, key: int) -> asyncio.Event:
        return self.rooms.setdefault((token, key), asyncio.Event())

    def control(self, token: bytes) -> Control:
        """A new control stream of ``token``'s client: confirmations go there from now on (all of them again)."""

        def on_ack(key: int, offset: int) -> None:
            streams = self.registry.sessions.get(token)
            stream = None if streams is None else streams.streams.get(key)
            if stream is not None:
                confirm(stream, self.room(token, key), offset)

        control = self.controls[token] = Control(on_ack)
        streams = self.registry.sessions.get(token)
        for stream in () if streams is None else streams.streams.values():
            stream.told = 0  # the last confirmations may have died with the old connection
            control.want(stream)
        return control

    async def run_control(self, token: bytes, send: Any, recv: Any, first: bytes) -> None:
        """Serve a client's control stream until it ends; then forget it (unless a newer one replaced it)."""
        control = self.control(token)
        try:
            await control.run(send, recv, first)
        finally:
            if self.controls.get(token) is control:
                del self.controls[token]

    def want_ack(self, token: bytes, stream: DurableStream) -> None:
        control = self.controls.get(token)
        if control is not None:
            control.want(stream)

    def answer(self, request: DurableRequest) -> int | str:
        """ServerStream's question: what have we received of this stream (0 when new), or why not."""
        if request.offset is None:
            return 0
        streams = self.registry.sessions.get(request.token)
        stream = None if streams is None else streams.streams.get(request.key)
        if stream is None or stream.lost or not isinstance(stream.local, Held):
            return UNKNOWN_STREAM
        return stream.received

    def new(self, request: DurableRequest, held: Held) -> DurableStream:
        streams = self.registry.adopt(request.token)
        stream = DurableStream(request.key, local=held)
        streams.add(stream)
        return stream

    def take(self, request: DurableRequest) -> DurableStream | None:
        streams = self.registry.sessions.get(request.token)
        stream = None if streams is None else streams.streams.get(request.key)
        if stream is None or stream.lost or not isinstance(stream.local, Held):
            return None
        return stream

    def forget(self, request: DurableRequest, stream: DurableStream) -> None:
        stream.lost = True
        self.rooms.pop((request.token, request.key), None)
        streams = self.registry.sessions.get(request.token)
        if streams is not None:
            streams.discard(stream)

    def hold(self, request: DurableRequest, stream: DurableStream, peer: str) -> None:
        """The connection is gone: keep the socket for ``GRACE`` seconds."""
        held = stream.local
        assert isinstance(held, Held)

        def expire() -> None:
            held.timer = None
            if held.free.is_set() and not stream.lost:
                log.warning("Connection %s closed: the client did not resume it within %gs", peer, GRACE)
                self.forget(request, stream)
                held.writer.transport.abort()

        held.timer = asyncio.get_running_loop().call_later(GRACE, expire)
