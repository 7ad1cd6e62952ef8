"""``tunnel server iroh`` on asyncio: accept allowlisted clients and forward each of their streams.

The order of checks is the security story: the TLS-authenticated client id is checked before any stream is
accepted (unknown ids are closed with code 1 ``unauthorized``), each stream takes a session permit before its
request is read, and only addresses the access policy checked are dialed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
from typing import Any

from tunnel_core.forwarding.durable import DurableStream
from tunnel_core.iroh_session import (
    ALPN_E2,
    ALPN_E4,
    CLOSE_DONE,
    CLOSE_UNAUTHORIZED,
    PROTOCOL_VERSION_E2,
    PROTOCOL_VERSION_E4,
    ClientAllowlist,
    DurableControl,
    ResolveHost,
    SendBytes,
    ServerStream,
    ServerStreamState,
    SessionLimiter,
    StartForwarding,
    StartListening,
    StreamFailed,
    StreamRejected,
)
from tunnel_core.iroh_session.auth import INVALID_PROOF_REASON, AuthAccepted, AuthDenied, AuthServer
from tunnel_core.iroh_session.options import IrohServerOptions
from tunnel_core.keys import format_endpoint_id
from tunnel_core.policy import AccessPolicy
from tunnel_core.reverse import REVERSE_SCHEME, cannot_listen
from tunnel_core.types import Address
from tunnel_core.wire import DurableRequest, SourceRequest, UdpFrameDecoder, WireError, encode_source_request
from tunnel_iroh import durable, ffi
from tunnel_iroh.bridge import (
    READ_LIMIT,
    TCP_LIMIT,
    DatagramLink,
    FrameWriter,
    UdpEndpoint,
    bridge_tcp,
    read_frames,
    tune_tcp,
)
from tunnel_iroh.dial import DialFailed, happy_eyeballs
from tunnel_iroh.endpoint import PathWatch, bind_endpoint, direct_addresses, endpoint_id_bytes
from tunnel_iroh.socks import OnionBridges

log = logging.getLogger("tunnel_iroh")

#: A client that opens a stream and never sends its request must not hold a session permit forever.
REQUEST_TIMEOUT = 10.0
DIAL_TIMEOUT = 10.0
#: After a rejection, how long the refusal may take to reach the client before the connection is closed.
REJECT_DELIVERY = 2.0


class IrohServer:
    """One iroh endpoint serving many clients; ``start`` binds, ``serve`` accepts until ``close``."""

    def __init__(self, options: IrohServerOptions) -> None:
        self.options = options
        self.policy = AccessPolicy.from_strings(options.allowed_tcp, options.allowed_udp)
        self.allowlist = ClientAllowlist(options.allowed_clients)
        self.limiter = SessionLimiter(options.max_sessions)
        self._comments = dict(options.authorized_key_comments)
        self.e4 = options.protocol == "e4"
        #: durable streams (docs/durable.md, e4 only): held local connections by client token and stream key
        self._parking = durable.Parking()
        #: keys of the reverse forwards' durable streams, which the server opens (the client's count from 1)
        self._reverse_keys = itertools.count(durable.REVERSE_KEYS)
        self.version = PROTOCOL_VERSION_E4 if self.e4 else PROTOCOL_VERSION_E2
        self.endpoint: Any = None
        self._bridges = OnionBridges(options.network.socks5_proxy)
        self._connections: set[Any] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    # ------------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        relay_urls = await self._bridges.rewrite(self.options.network.relay_urls)
        self.endpoint = await bind_endpoint(
            self.options.network, secret_key=self.options.secret_key, alpns=[ALPN_E4 if self.e4 else ALPN_E2],
            relay_urls=relay_urls,
        )
        log.info("Server EndpointId: %s", self.endpoint_id)
        log.info("Listening on %s", ", ".join(direct_addresses(self.endpoint)))
        if self.e4:
            log.info("Protocol e4 (ALPN mf/4, Ed25519 auth)")
            # Upstream's wording: its e2e script and operators' scripts wait for these lines.
            log.info("Max concurrent sessions: %d", self.limiter.max_sessions)
            log.info("Authorized client keys: %d", len(self.options.authorized_keys))
            if self.options.network.relay_only:
                log.info("Relay-only mode: all traffic will go through the relay server")
            log.info("Waiting for clients to connect...")
            return
        if not len(self.allowlist):
            log.warning("The allowed-clients list is empty: every client will be refused")
        log.info("Allowed clients: %d; max sessions: %d", len(self.allowlist), self.limiter.max_sessions)

    @property
    def endpoint_id(self) -> str:
        return format_endpoint_id(endpoint_id_bytes(self.endpoint))

    def addresses(self) -> list[str]:
        return direct_addresses(self.endpoint)

    async def serve(self) -> None:
        f = ffi.load()
        while not self._closing:
            try:
                incoming = await self.endpoint.accept_next()
            except f.IrohError as exc:
                if self._closing:
                    break
                log.warning("accept failed: %s", ffi.error_text(exc))
                continue
            if incoming is None:
                break
            self._spawn(self._handle_incoming(incoming))

    async def close(self) -> None:
        self._closing = True
        for conn in list(self._connections):
            with contextlib.suppress(Exception):
                conn.close(CLOSE_DONE.code, CLOSE_DONE.reason)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.endpoint is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.endpoint.close(), 5.0)
        await self._bridges.close()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------------------------------ connections

    async def _handle_incoming(self, incoming: Any) -> None:
        f = ffi.load()
        try:
            accepting = await incoming.accept()
            conn = await accepting.connect()
        except f.IrohError as exc:
            log.debug("handshake failed: %s", ffi.error_text(exc))
            return
        remote = endpoint_id_bytes(conn.remote_id())
        remote_text = format_endpoint_id(remote)
        if self.e4:
            key = await self._authenticate(conn, remote_text)
            if key is None:
                return
            comment = self._comments.get(key, "")
            if comment:
                log.info("Client %s authenticated successfully as %s", remote_text, comment)
            else:
                log.info("Client %s authenticated successfully", remote_text)
        elif not self.allowlist.allows(remote):
            log.warning("Rejected unauthorized client: %s", remote_text)
            conn.close(CLOSE_UNAUTHORIZED.code, CLOSE_UNAUTHORIZED.reason)
            return
        log.info("Client %s connected", remote_text)
        self._connections.add(conn)
        watch = PathWatch(conn, prefix=f"Client {remote_text[:10]}: ")
        watch.start()
        streams: set[asyncio.Task[Any]] = set()
        link = DatagramLink(conn)
        datagrams = asyncio.ensure_future(link.run())
        try:
            while True:
                try:
                    bi = await conn.accept_bi()
                except f.IrohError as exc:
                    log.info("Client %s disconnected: %s", remote_text, ffi.error_text(exc))
                    break
                task = self._spawn(self._handle_stream(bi, remote_text, link, conn))
                streams.add(task)
                task.add_done_callback(streams.discard)
        finally:
            for task in list(streams):
                task.cancel()
            if streams:
                await asyncio.gather(*streams, return_exceptions=True)
            datagrams.cancel()
            await asyncio.gather(datagrams, return_exceptions=True)
            link.report(f"Client {remote_text[:10]}: ")
            with contextlib.suppress(Exception):
                conn.close(CLOSE_DONE.code, CLOSE_DONE.reason)
            self._connections.discard(conn)
            await watch.stop()

    async def _authenticate(self, conn: Any, client: str) -> bytes | None:
        """Run the E4 auth stream (the client's first bi-stream); None means the connection was closed."""
        f = ffi.load()
        loop = asyncio.get_running_loop()
        machine = AuthServer(self.options.authorized_keys, rng=os.urandom, now=loop.time())
        send: Any = None
        recv: Any = None
        try:
            while True:
                event = machine.next_event()
                if event is None:
                    remaining = max(0.0, machine.deadline - loop.time())
                    try:
                        if recv is None:
                            bi = await asyncio.wait_for(conn.accept_bi(), remaining)
                            send, recv = bi.send(), bi.recv()
                            continue
                        data = await asyncio.wait_for(recv.read(READ_LIMIT), remaining)
                    except TimeoutError:
                        machine.on_timer(loop.time())
                        continue
                    if data:
                        machine.feed(data)
                    else:
                        machine.feed_eof()
                elif isinstance(event, SendBytes):
                    await send.write_all(event.data)
                    if event.finish:
                        await send.finish()
                elif isinstance(event, AuthAccepted):
                    return event.public_key
                elif isinstance(event, AuthDenied):
                    if event.error.startswith(INVALID_PROOF_REASON):
                        log.warning("Invalid public-key authentication proof from %s", client)
                    log.warning("Client %s: authentication failed: %s", client, event.error)
                    if send is not None:
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(send.stopped(), REJECT_DELIVERY)
                    conn.close(event.close.code, event.close.reason)
                    return None
        except f.IrohError as exc:
            log.info("Client %s: auth stream failed: %s", client, ffi.error_text(exc))
            with contextlib.suppress(Exception):
                conn.close(CLOSE_DONE.code, CLOSE_DONE.reason)
            return None

    # ------------------------------------------------------------------------------------------ streams

    async def _handle_stream(self, bi: Any, client: str, link: DatagramLink, conn: Any) -> None:
        permit = self.limiter.try_acquire()
        try:
            machine = ServerStream(self.policy, permit=permit, version=self.version,
                                   allow_listen=self.options.allow_listen,
                                   datagrams=self.options.udp_over != "stream",
                                   durable=self._parking.answer if self.e4 else None)
            await self._drive_stream(bi, machine, client, link, conn)
        finally:
            if permit:
                self.limiter.release()

    async def _drive_stream(
        self, bi: Any, machine: ServerStream, client: str, link: DatagramLink, conn: Any = None
    ) -> None:
        f = ffi.load()
        send, recv = bi.send(), bi.recv()
        try:
            while True:
                event = machine.next_event()
                if event is None:
                    if machine.state is not ServerStreamState.AWAIT_REQUEST:
                        return
                    try:
                        data = await asyncio.wait_for(recv.read(READ_LIMIT), REQUEST_TIMEOUT)
                    except TimeoutError:
                        log.warning("Client %s: no source request within %.0fs", client[:10], REQUEST_TIMEOUT)
                        await send.reset(0)
                        return
                    if data:
                        machine.feed(data)
                    else:
                        machine.feed_eof()
                elif isinstance(event, SendBytes):
                    await send.write_all(event.data)
                    if event.finish:
                        await send.finish()
                elif isinstance(event, ResolveHost):
                    try:
                        infos = await asyncio.get_running_loop().getaddrinfo(
                            event.host, event.port, type=socket.SOCK_STREAM
                        )
                    except OSError as exc:
                        machine.resolution_failed(str(exc))
                    else:
                        machine.resolved([str(info[4][0]) for info in infos])
                elif isinstance(event, StartListening):
                    await self._reverse(event, machine, send, recv, client, conn)
                    return
                elif isinstance(event, StreamRejected):
                    log.warning("Client %s: rejected %s: %s", client[:10], event.source, event.reason)
                elif isinstance(event, StreamFailed):
                    log.warning("Client %s: bad stream: %s", client[:10], event.error)
                    with contextlib.suppress(Exception):
                        await send.reset(0)
                    return
                elif isinstance(event, DurableControl):
                    await self._parking.run_control(event.durable.token, send, recv, event.payload)
                    return
                elif isinstance(event, StartForwarding):
                    log.info("Client %s: forwarding %s", client[:10], event.source.url())
                    if event.durable is not None:
                        await self._forward_durable(event, event.durable, send, recv)
                        return
                    elif event.source.protocol == "tcp":
                        await self._forward_tcp(event, send, recv)
                    else:
                        await self._forward_udp(event, send, recv, link)
                    return
        except f.IrohError as exc:
            log.debug("stream ended: %s", ffi.error_text(exc))

    async def _reverse(
        self, start: StartListening, machine: ServerStream, send: Any, recv: Any, client: str, conn: Any
    ) -> None:
        """A reverse forward --allow-listen permits: listen while the client's control stream lasts; each accepted
        connection becomes a stream we open to the client, starting with the forward's request text."""
        f = ffi.load()
        text = REVERSE_SCHEME + start.text
        header = encode_source_request(SourceRequest(source=text, version=self.version))
        connections: set[asyncio.Task[Any]] = set()

        async def carry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                connections.add(task)
            tune_tcp(writer)
            try:
                bi = await conn.open_bi()
                out, back = bi.send(), bi.recv()
                if start.durable is not None:  # the client resumes it after a reconnect (docs/durable.md)
                    request = DurableRequest(start.durable.token, next(self._reverse_keys))
                    await out.write_all(encode_source_request(SourceRequest(source=text, version=self.version,
                                                                            durable=request)))
                    held = durable.Held(reader, writer)
                    stream = self._parking.new(request, held)
                    await self._carry_held(request, stream, held, 0, b"", out, back, conn)
                    return
                await out.write_all(header)
                await bridge_tcp(reader, writer, out, back)
            except f.IrohError as exc:
                log.warning("Client %s: reverse connection on %s not carried: %s", client[:10], start.text,
                            ffi.error_text(exc))
                writer.transport.abort()
            finally:
                if task is not None:
                    connections.discard(task)

        try:
            listener = await asyncio.start_server(carry, start.ip, start.port, limit=TCP_LIMIT)
        except OSError as exc:
            # asyncio wraps the OS error in a long sentence; the OS's own words are what users search for
            reason = cannot_listen(start.text, os.strerror(exc.errno) if exc.errno else str(exc))
            log.warning("Client %s: %s", client[:10], reason)
            machine.listen_failed(reason)
            await self._send_events(machine, send)
            return
        log.info("Client %s: listening on TCP %s for the client's reverse forward", client[:10], start.text)
        machine.listening()
        try:
            await self._send_events(machine, send)
            while await recv.read(READ_LIMIT):  # the control stream: the forward lasts until the client ends it
                pass
        except f.IrohError:
            pass
        finally:
            listener.close()
            for task in list(connections):
                task.cancel()
            log.info("Client %s: reverse forward on %s closed", client[:10], start.text)

    @staticmethod
    async def _send_events(machine: ServerStream, send: Any) -> None:
        while (event := machine.next_event()) is not None:
            if isinstance(event, SendBytes):
                await send.write_all(event.data)
                if event.finish:
                    await send.finish()

    async def _forward_durable(self, start: StartForwarding, request: DurableRequest, send: Any, recv: Any) -> None:
        """A durable TCP stream (docs/durable.md): a new one dials; a resumed one takes its held socket. When the
        connection goes, the socket is held for the client's next connection (``durable.GRACE``)."""
        if request.offset is None:
            try:
                reader, writer = await happy_eyeballs(start.addresses, limit=TCP_LIMIT, timeout=DIAL_TIMEOUT)
            except DialFailed as exc:
                log.warning("Failed to connect to %s: %s", start.source.url(), exc)
                with contextlib.suppress(Exception):
                    await send.finish()
                return
            tune_tcp(writer)
            held = durable.Held(reader, writer)
            stream = self._parking.new(request, held)
            offset = 0
        else:
            found = self._parking.take(request)
            if found is None:
                with contextlib.suppress(Exception):
                    await send.reset(0)
                return
            stream, held, offset = found, found.local, request.offset
            if held.task is not None and not held.task.done():
                held.task.cancel()  # the old connection has not noticed it is gone yet
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(held.free.wait(), 10.0)
            if held.timer is not None:
                held.timer.cancel()
                held.timer = None
        await self._carry_held(request, stream, held, offset, start.payload, send, recv)

    async def _carry_held(self, request: DurableRequest, stream: DurableStream, held: durable.Held, offset: int,
                          first: bytes, send: Any, recv: Any, conn: Any = None) -> None:
        """Carry a durable stream's socket over one iroh stream; when the connection goes, hold it for the client's
        next one (``durable.GRACE``), else let it go. With ``conn`` (a reverse forward's stream, which we opened):
        a stream that broke while ``conn`` lives was refused by the client (its dial failed): let it go too."""
        held.task = asyncio.current_task()
        held.free.clear()
        outcome = durable.Outcome.LOST
        try:
            parking, token = self._parking, request.token
            outcome = await durable.bridge(held.reader, held.writer, send, recv, stream, offset, first,
                                           parking.room(token, request.key), lambda s: parking.want_ack(token, s))
            if outcome is durable.Outcome.LOST and conn is not None and not durable.closed(conn):
                outcome = durable.Outcome.RESET
        finally:
            held.task = None
            held.free.set()
            if outcome is durable.Outcome.LOST:
                peer = held.writer.get_extra_info("peername")
                self._parking.hold(request, stream, f"{peer[0]}:{peer[1]}" if peer else "to the service")
            else:
                self._parking.forget(request, stream)
                if outcome is durable.Outcome.DONE:
                    held.writer.close()
                else:
                    held.writer.transport.abort()

    async def _forward_tcp(self, start: StartForwarding, send: Any, recv: Any) -> None:
        try:
            reader, writer = await happy_eyeballs(start.addresses, limit=TCP_LIMIT, timeout=DIAL_TIMEOUT)
        except DialFailed as exc:
            log.warning("Failed to connect to %s: %s", start.source.url(), exc)
            with contextlib.suppress(Exception):
                await send.finish()
            with contextlib.suppress(Exception):
                await recv.stop(0)
            return
        tune_tcp(writer)
        await bridge_tcp(reader, writer, send, recv, first=start.payload)

    async def _forward_udp(self, start: StartForwarding, send: Any, recv: Any, link: DatagramLink) -> None:
        loop = asyncio.get_running_loop()
        writer = FrameWriter(send)
        host, port = start.addresses[0]
        flow = start.datagram_flow
        if flow is not None and link.has(flow):
            flow = None  # the client's flow id is taken on this connection: this stream stays framed

        def reply(data: bytes, _peer: Address) -> None:
            if flow is None or not link.send(flow, data):
                writer.push(data)

        transport, protocol = await loop.create_datagram_endpoint(lambda: UdpEndpoint(reply), remote_addr=(host, port))
        flush = asyncio.ensure_future(writer.run())

        def deliver(datagram: bytes) -> None:
            transport.sendto(datagram)

        if flow is not None:
            link.register(flow, deliver)
        try:
            if start.payload:
                for datagram in _frames(start.payload):
                    deliver(datagram)
            await read_frames(recv, deliver)
        except WireError as exc:
            log.warning("UDP stream error: %s", exc)
        finally:
            if flow is not None:
                link.unregister(flow)
            transport.close()
            writer.close()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(flush, 2.0)
            del protocol


def _frames(payload: bytes) -> list[bytes]:
    return UdpFrameDecoder().feed(payload)
