"""Moving bytes between local sockets and iroh streams.

Two facts of the binding shape this module: every awaited call costs about 0.2 ms (so writes must be large and
few), and reads return up to ``size_limit`` bytes at C speed (so reads should ask for a lot). TCP therefore
moves in chunks of up to 256 KiB, and UDP datagrams are framed into a buffer that one writer task flushes with a
single ``write_all`` whenever it is free: under load frames batch up by themselves, idle they go out at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any, cast

import attrs

from tunnel_core.datagram import (
    DatagramError,
    Reassembler,
    UdpStats,
    decode_datagram,
    split_datagram,
    take_payload,
)
from tunnel_core.types import Address
from tunnel_core.wire import MAX_UDP_DATAGRAM, UdpFrameDecoder, WireError, encode_udp_frame
from tunnel_iroh import ffi

log = logging.getLogger("tunnel_iroh")

CHUNK = 1024 * 1024
READ_LIMIT = 1024 * 1024
#: Local TCP buffering before asyncio pauses the socket (also the largest single read).
TCP_LIMIT = 4 * 1024 * 1024
#: Framed UDP waiting for the stream beyond this is dropped, as a congested UDP path would.
UDP_BACKLOG = 4 * 1024 * 1024
#: Application error code for stream resets we cause (the peer only learns "reset").
RESET_CODE = 0


def tune_tcp(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = writer.transport
    with contextlib.suppress(AttributeError, NotImplementedError):
        transport.set_write_buffer_limits(high=TCP_LIMIT, low=TCP_LIMIT // 4)


async def bridge_tcp(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, send: Any, recv: Any, first: bytes = b""
) -> None:
    """Copy both ways until both directions ended; half-close is carried (TCP EOF <-> stream FIN).

    An error on either side aborts both: the stream is reset and the TCP connection dropped, so neither peer
    mistakes a broken transfer for a complete one.
    """
    f = ffi.load()

    async def local_to_stream() -> None:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            await send.write_all(data)
        await send.finish()

    async def stream_to_local() -> None:
        if first:
            writer.write(first)
        while True:
            data = await recv.read(READ_LIMIT)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    up = asyncio.ensure_future(local_to_stream())
    down = asyncio.ensure_future(stream_to_local())
    try:
        pending: set[asyncio.Future[None]] = {up, down}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is not None:
                    if isinstance(exc, f.IrohError):
                        log.debug("stream ended: %s", ffi.error_text(exc))
                    else:
                        log.debug("local connection ended: %s", exc)
                    raise _Aborted from exc
    except (_Aborted, asyncio.CancelledError):
        for task in (up, down):
            task.cancel()
        with contextlib.suppress(Exception):
            await send.reset(RESET_CODE)
        with contextlib.suppress(Exception):
            await recv.stop(RESET_CODE)
        writer.transport.abort()
        with contextlib.suppress(BaseException):
            await asyncio.gather(up, down, return_exceptions=True)
        return
    finally:
        if not writer.transport.is_closing():
            writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


class _Aborted(Exception):
    pass


class FrameWriter:
    """Frames datagrams onto a stream with as few ``write_all`` calls as possible."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self._buffer = bytearray()
        self._wake = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def push(self, datagram: bytes) -> None:
        if self._closed or len(datagram) > MAX_UDP_DATAGRAM:
            self.dropped += 1
            return
        if len(self._buffer) + len(datagram) + 2 > UDP_BACKLOG:
            self.dropped += 1
            return
        self._buffer += encode_udp_frame(datagram)
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        """Flush until closed; finishes the stream at the end (a clean FIN at a frame boundary)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._buffer:
                data = bytes(self._buffer)
                self._buffer.clear()
                await self._send.write_all(data)
            elif self._closed:
                break
        await self._send.finish()


async def read_frames(recv: Any, deliver: Callable[[bytes], None]) -> None:
    """Decode u16-framed datagrams from a stream until its FIN; raises WireError on a FIN mid-frame."""
    decoder = UdpFrameDecoder()
    while True:
        data = await recv.read(READ_LIMIT)
        if not data:
            decoder.feed_eof()
            return
        for datagram in decoder.feed(data):
            deliver(datagram)


class DatagramLink:
    """The QUIC datagrams of one iroh connection, shared by its UDP flows (docs/datagrams.md).

    Same tunnel-datagram format and choices as the ICE modes' session: whole, 2..16 fragments, or ``send``
    returns False and the caller frames the datagram on the flow's stream. The room per frame is the binding's
    ``max_datagram_size()``. iroh (quinn) drops the oldest queued datagrams itself when its send buffer is full;
    a send that finds less room than it needs is counted as such a drop.
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._flows: dict[int, Callable[[bytes], None]] = {}
        self._packets: dict[int, int] = {}
        self._reassembler = Reassembler()
        self.stats = UdpStats()

    def register(self, flow_id: int, deliver: Callable[[bytes], None]) -> None:
        self._flows[flow_id] = deliver

    def has(self, flow_id: int) -> bool:
        return flow_id in self._flows

    def unregister(self, flow_id: int) -> None:
        self._flows.pop(flow_id, None)
        self._packets.pop(flow_id, None)
        self._reassembler.forget_flow(flow_id)

    def send(self, flow_id: int, data: bytes) -> bool:
        """Carry one datagram as QUIC datagram(s); False when it is for the stream (too big to fragment)."""
        f = ffi.load()
        if len(data) > MAX_UDP_DATAGRAM:
            self.stats.too_big += 1
            return True
        room = self._conn.max_datagram_size() or 0
        packet = self._packets.get(flow_id, 0)
        frames = split_datagram(flow_id, packet, data, room)
        if frames is None:
            self.stats.stream_fallback += 1
            return False
        if len(frames) == 1:
            self.stats.datagrams += 1
        else:
            self._packets[flow_id] = (packet + 1) & 0xFFFF
            self.stats.fragmented += 1
        for frame in frames:
            try:
                if self._conn.datagram_send_buffer_space() < len(frame):
                    self.stats.dropped_oldest += 1
                self._conn.send_datagram(frame)
            except f.IrohError as exc:
                log.debug("datagram not sent: %s", ffi.error_text(exc))
        return True

    def receive(self, data: bytes, now: float) -> None:
        self._reassembler.handle_timer(now)
        try:
            item = decode_datagram(data)
        except DatagramError:
            self.stats.malformed += 1
            return
        deliver = self._flows.get(item.flow_id)
        if deliver is None:
            self.stats.unknown_flow += 1
            return
        payload = take_payload(item, self._reassembler, self.stats, now)
        if payload is not None:
            deliver(payload)

    async def run(self) -> None:
        """Read datagrams until the connection ends."""
        f = ffi.load()
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await self._conn.read_datagram()
            except f.IrohError:
                return
            self.receive(bytes(data), loop.time())

    def report(self, prefix: str = "") -> None:
        if any(attrs.astuple(self.stats)):
            log.info("%sUDP over QUIC datagrams: %s", prefix, self.stats.summary())


class UdpEndpoint(asyncio.DatagramProtocol):
    """A local UDP socket whose datagrams go to ``on_datagram(data, peer)``."""

    def __init__(self, on_datagram: Callable[[bytes, Address], None]) -> None:
        self._on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # duck-typed: uvloop's do not subclass asyncio's

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._on_datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


__all__ = ["DatagramLink", "FrameWriter", "UdpEndpoint", "WireError", "bridge_tcp", "read_frames", "tune_tcp"]
