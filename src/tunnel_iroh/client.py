"""``tunnel client iroh`` on asyncio: one connection to the server, one bi-stream per local TCP connection,
or one stream for all UDP traffic.

The client's identity is what the server allowlists, so it is loaded from ``--secret-file`` when given (a
fresh identity otherwise, printed so the user sees which id the server refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

import attrs

from tunnel_core.forwarding.durable import OLD_PEER_REASON, UNKNOWN_REASON, DurableStream
from tunnel_core.forwarding.session import DEFAULT_MAX_UDP_PEERS as MAX_UDP_PEERS
from tunnel_core.forwarding.session import DEFAULT_UDP_IDLE_TIMEOUT as UDP_IDLE_TIMEOUT
from tunnel_core.iroh_session import (
    ALPN_E2,
    ALPN_E4,
    CLOSE_DONE,
    CLOSE_UNAUTHORIZED,
    PROTOCOL_VERSION_E2,
    PROTOCOL_VERSION_E4,
    ClientStream,
    SendBytes,
    SourceAccepted,
    SourceRejected,
)
from tunnel_core.iroh_session.auth import AuthClient, AuthOk, AuthRefused
from tunnel_core.iroh_session.options import IrohClientOptions
from tunnel_core.keys import format_endpoint_id
from tunnel_core.options import ExitCode, TunnelError
from tunnel_core.policy import parse_source, parse_target
from tunnel_core.reconnect import FINAL, FIRST_DELAY, MAX_DELAY, back_line, gave_up, lost_line, reset_line
from tunnel_core.types import Address
from tunnel_core.wire import DurableRequest, UdpFrameDecoder, WireError
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
from tunnel_iroh.endpoint import PathWatch, bind_endpoint, connect, endpoint_id_bytes, path_views
from tunnel_iroh.socks import OnionBridges

log = logging.getLogger("tunnel_iroh")

RESPONSE_TIMEOUT = 10.0
OPEN_ATTEMPTS = 3
OPEN_BACKOFF = 0.1
#: Datagrams a new local peer may send before its flow's stream is open; more are dropped.
PENDING_LIMIT = 64
#: The flow id our one UDP stream offers for QUIC datagrams (iroh mode keeps upstream's one stream per client).
UDP_FLOW = 0


class IrohClient:
    """``start`` connects and listens; ``wait`` returns when the connection ends (raising TunnelError if it
    ended badly); ``close`` ends it in an orderly way."""

    def __init__(self, options: IrohClientOptions) -> None:
        self.options = options
        self.source = parse_source(options.source)
        self.endpoint: Any = None
        self.conn: Any = None
        self.local_addresses: list[Address] = []
        self._bridges = OnionBridges(options.network.socks5_proxy)
        self._servers: list[asyncio.base_events.Server] = []
        self._udp: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watch: PathWatch | None = None
        self._established = False
        self._closing = False
        #: set while ``conn`` is usable; cleared during a reconnect so new local connections wait for the next one
        self._up = asyncio.Event()
        self._dial_args: dict[str, Any] = {}
        self.datagram_flow: int | None = None
        self._link: DatagramLink | None = None
        self.e4 = options.protocol == "e4"
        #: durable streams (docs/durable.md, e4 only): this process's session token and the next stream's key
        self._token = os.urandom(16)
        self._next_key = durable.CONTROL_KEY + 1
        self._durable: dict[int, tuple[DurableStream, asyncio.Event]] = {}
        self._control = durable.Control(self._on_ack)
        self._control_conn: Any = None
        self._control_lock = asyncio.Lock()
        self.version = PROTOCOL_VERSION_E4 if self.e4 else PROTOCOL_VERSION_E2
        self.alpn = ALPN_E4 if self.e4 else ALPN_E2

    # ------------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        opts = self.options
        relay_urls = await self._bridges.rewrite(opts.network.relay_urls)
        self.endpoint = await bind_endpoint(opts.network, secret_key=opts.secret_key, alpns=[self.alpn],
                                            relay_urls=relay_urls)
        self.client_id = format_endpoint_id(endpoint_id_bytes(self.endpoint))
        kind = "persistent" if opts.secret_key is not None else "ephemeral"
        log.info("Client EndpointId: %s (%s)", self.client_id, kind)
        relays = () if opts.network.relays_disabled else relay_urls
        # --relay-only: the relays are the only way in; direct addresses are not even offered to iroh.
        addrs = () if opts.network.relay_only else opts.server_addrs
        self._dial_args = {"alpn": self.alpn, "relay_urls": relays, "server_addrs": addrs}
        await self._connect()
        host, port = parse_target(opts.target)
        for forward in opts.extra_forwards:  # more TCP forwards: each stream's SourceRequest names its source
            await self._listen_tcp(forward.listen, forward.source)
        if self.source.protocol == "tcp":
            server = await asyncio.start_server(self._on_local_tcp, host, port, limit=TCP_LIMIT)
            self._servers.append(server)
            self.local_addresses = [tuple(s.getsockname()[:2]) for s in server.sockets]  # type: ignore[misc]
            for address in self.local_addresses:
                log.info("Listening on TCP %s:%d, forwarding to %s", address[0], address[1], opts.source)
        else:
            await self._start_udp(host, port)

    async def _connect(self) -> None:
        """Dial the server (and authenticate under e4); then watch the path and let local connections through."""
        opts = self.options
        self.conn = await connect(self.endpoint, opts.server_id, **self._dial_args)
        log.info("Connected to server %s", format_endpoint_id(opts.server_id))
        if self.e4:
            await self._authenticate()
        if self._watch is not None:
            await self._watch.stop()
        self._watch = PathWatch(self.conn)
        self._watch.start()
        self._up.set()

    async def wait(self) -> None:
        """Until the connection closes for good; a close we did not ask for is an error with the right exit code.

        A lost connection of a TCP tunnel is dialled again for ``reconnect_timeout`` (docs/reconnect.md): the
        local listener stays, new local connections wait for the new connection, open ones end with it."""
        while True:
            reason = await self.conn.closed()
            if self._closing:
                return
            text = str(reason)
            if "unauthorized" in text and "code 1" in text:
                raise TunnelError(
                    f"Server refused this client (unauthorized): add its EndpointId {self.client_id} to the "
                    "server's --allowed-clients", ExitCode.AUTH,
                )
            lost = TunnelError(f"Connection to server lost: {text}", ExitCode.CONNECTION_LOST)
            if self.options.reconnect_timeout <= 0 or self.source.protocol != "tcp":
                raise lost
            await self._reconnect(lost)

    async def _reconnect(self, lost: TunnelError) -> None:
        """Dial again with backoff until connected or ``reconnect_timeout`` passed (then exit 11)."""
        self._up.clear()
        timeout = self.options.reconnect_timeout
        log.warning("%s", lost_line(lost.message, timeout))
        loop = asyncio.get_running_loop()
        started = loop.time()
        delay, attempts, last = FIRST_DELAY, 0, lost.message
        while True:
            attempts += 1
            try:
                remaining = max(FIRST_DELAY, timeout - (loop.time() - started))
                await asyncio.wait_for(self._connect(), remaining)
            except TunnelError as exc:
                if exc.exit_code in FINAL:
                    raise
                last = exc.message
            except TimeoutError:
                last = "timed out"
            else:
                log.warning("%s", back_line(loop.time() - started, attempts, _path_text(self.conn)))
                return
            elapsed = loop.time() - started
            if elapsed + delay > timeout:
                raise gave_up(elapsed, attempts, last)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)

    async def close(self) -> None:
        self._closing = True
        for server in self._servers:
            server.close()
        if self._udp is not None:
            self._udp.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._watch is not None:
            await self._watch.stop()
        if self._link is not None:
            self._link.report()
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close(CLOSE_DONE.code, CLOSE_DONE.reason)
        if self.endpoint is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.endpoint.close(), 5.0)
        await self._bridges.close()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _authenticate(self) -> None:
        """E4: prove the Ed25519 key on the first bi-stream before any listener is bound (exit 3 when refused)."""
        f = ffi.load()
        seed = self.options.auth_seed
        if seed is None:
            raise TunnelError("Authentication requires --private-key-file or [iroh].private_key_file.",
                              ExitCode.USAGE)
        loop = asyncio.get_running_loop()
        machine = AuthClient(seed, now=loop.time())
        try:
            bi = await self.conn.open_bi()
            send, recv = bi.send(), bi.recv()
            await send.write_all(machine.init_bytes())
            while True:
                event = machine.next_event()
                if event is None:
                    try:
                        data = await asyncio.wait_for(recv.read(READ_LIMIT), max(0.0, machine.deadline - loop.time()))
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
                elif isinstance(event, AuthRefused):
                    raise TunnelError(event.message, ExitCode.AUTH)
                elif isinstance(event, AuthOk):
                    log.info("Authenticated with server successfully")
                    return
        except WireError as exc:
            raise TunnelError(f"Authentication failed: {exc}", ExitCode.AUTH) from None
        except f.IrohError as exc:
            text = ffi.error_text(exc)
            if "auth_failed" in text or "auth_timeout" in text:
                reason = "auth_failed" if "auth_failed" in text else "auth_timeout"
                raise TunnelError(f"Authentication rejected: {reason}", ExitCode.AUTH) from None
            raise TunnelError(f"Auth stream failed: {text}", ExitCode.CONNECT_FAILED) from None

    # ------------------------------------------------------------------------------------------ streams

    async def _listen_tcp(self, listen: str, source: str) -> None:
        """One extra TCP forward (``--forward``): its own listener, its streams ask for ``source``."""
        host, port = parse_target(listen)

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._on_local_tcp(reader, writer, source)

        server = await asyncio.start_server(on_connection, host, port, limit=TCP_LIMIT)
        self._servers.append(server)
        for sock in server.sockets:
            address = sock.getsockname()
            log.info("Listening on TCP %s:%d, forwarding to %s", address[0], address[1], source)

    async def open_source_stream(
        self, datagram_flow: int | None = None, source: str | None = None
    ) -> tuple[Any, Any, bytes]:
        """Open a bi-stream and run the SourceRequest dialogue (for ``source``, the client's own by default);
        TunnelError when refused.

        ``datagram_flow`` offers QUIC datagrams for a UDP stream; ``self.datagram_flow`` then tells whether the
        server took the offer (our server does; upstream's ignores it)."""
        machine = ClientStream(source or self.options.source, version=self.version, datagram_flow=datagram_flow)
        send, recv, event = await self._open_stream(machine)
        self.datagram_flow = event.datagram_flow
        return send, recv, event.payload

    async def _open_stream(self, machine: ClientStream) -> tuple[Any, Any, SourceAccepted]:
        """Open a bi-stream and run ``machine``'s dialogue; the acceptance, or TunnelError."""
        f = ffi.load()
        bi = None
        for attempt in range(OPEN_ATTEMPTS):
            try:
                bi = await self.conn.open_bi()
                break
            except f.IrohError as exc:
                if attempt + 1 == OPEN_ATTEMPTS or self._closing:
                    raise TunnelError(f"Failed to open stream: {ffi.error_text(exc)}",
                                      ExitCode.CONNECTION_LOST) from None
                await asyncio.sleep(OPEN_BACKOFF * (2**attempt))
        assert bi is not None
        send, recv = bi.send(), bi.recv()
        await send.write_all(machine.request_bytes())
        try:
            async with asyncio.timeout(RESPONSE_TIMEOUT):
                while (event := machine.next_event()) is None:
                    data = await recv.read(READ_LIMIT)
                    if data:
                        machine.feed(data)
                    else:
                        machine.feed_eof()
        except TimeoutError:
            raise TunnelError("Timed out waiting for source response", ExitCode.CONNECT_FAILED) from None
        except WireError as exc:
            raise TunnelError(f"Bad source response: {exc}", ExitCode.GENERAL) from None
        except f.IrohError as exc:
            raise TunnelError(f"Stream failed: {ffi.error_text(exc)}", ExitCode.CONNECTION_LOST) from None
        if isinstance(event, SourceRejected):
            with contextlib.suppress(Exception):
                await send.finish()
            raise TunnelError(event.message(), ExitCode.AUTH)
        assert isinstance(event, SourceAccepted)
        if not self._established:
            self._established = True
            log.info("Tunnel to server established! Source: %s", self.options.source)
        return send, recv, event

    async def _on_local_tcp(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str | None = None
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        tune_tcp(writer)
        if self.e4:  # durable streams (docs/durable.md): our own server continues them after a reconnect
            try:
                await self._durable_tcp(reader, writer, source)
            finally:
                if task is not None:
                    self._tasks.discard(task)
            return
        try:
            try:
                await self._up.wait()  # during a reconnect: until the new connection is there
                conn = self.conn
                send, recv, payload = await self.open_source_stream(source=source)
            except TunnelError as exc:
                log.error("%s", exc.message)
                writer.transport.abort()
                return
            await bridge_tcp(reader, writer, send, recv, first=payload)
            if not self._closing and (conn is not self.conn or _closed(conn)):
                peer = writer.get_extra_info("peername")
                log.warning("%s", reset_line(f"{peer[0]}:{peer[1]}" if peer else "a local client"))
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _durable_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           source: str | None) -> None:
        """One local connection as a durable stream: asked for on every stream it opens, it continues on the next
        connection after a loss; a server that does not take it (upstream) gets a plain stream, as before."""
        stream = DurableStream(self._next_key)
        self._next_key += 1
        room = asyncio.Event()
        self._durable[self._next_key - 1] = (stream, room)
        try:
            await self._carry_durable(reader, writer, source, stream, room)
        finally:
            del self._durable[stream.key or 0]

    async def _carry_durable(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str | None,
                             stream: DurableStream, room: asyncio.Event) -> None:
        resumed = False
        peer = writer.get_extra_info("peername")
        name = f"{peer[0]}:{peer[1]}" if peer else "a local client"
        while True:
            await self._up.wait()
            conn = self.conn
            request = DurableRequest(self._token, stream.key or 0, stream.received if resumed else None)
            machine = ClientStream(source or self.options.source, version=self.version, durable=request)
            try:
                send, recv, accepted = await self._open_stream(machine)
            except TunnelError as exc:
                if resumed and exc.exit_code is ExitCode.CONNECTION_LOST and not self._closing:
                    await self._next_connection(conn)  # the new connection broke too: wait for the next one
                    continue
                if resumed and exc.exit_code is ExitCode.AUTH:
                    log.warning("%s", reset_line(name, UNKNOWN_REASON))
                elif not self._closing:
                    log.error("%s", exc.message)
                writer.transport.abort()
                return
            if accepted.durable is None:  # upstream's server, or an older one
                if resumed:
                    log.warning("%s", reset_line(name, OLD_PEER_REASON))
                    writer.transport.abort()
                    return
                await bridge_tcp(reader, writer, send, recv, first=accepted.payload)
                if not self._closing and (conn is not self.conn or _closed(conn)):
                    log.warning("%s", reset_line(name))
                return
            await self._ensure_control(conn, source)
            outcome = await durable.bridge(reader, writer, send, recv, stream, accepted.durable, accepted.payload,
                                           room, self._control.want)
            if outcome is durable.Outcome.DONE:
                writer.close()
                return
            if outcome is durable.Outcome.RESET or self._closing:
                writer.transport.abort()
                return
            resumed = True
            await self._next_connection(conn)

    def _on_ack(self, key: int, offset: int) -> None:
        entry = self._durable.get(key)
        if entry is not None:
            durable.confirm(entry[0], entry[1], offset)

    async def _ensure_control(self, conn: Any, source: str | None) -> None:
        """The connection's durable control stream (confirmations), opened once our server took a durable
        stream on it; every stream's confirmation is sent again on it (the last ones may have been lost)."""
        async with self._control_lock:
            if self._control_conn is conn:
                return
            machine = ClientStream(source or self.options.source, version=self.version,
                                   durable=DurableRequest(self._token, durable.CONTROL_KEY))
            try:
                send, recv, accepted = await self._open_stream(machine)
            except TunnelError as exc:
                log.debug("durable control stream: %s", exc.message)
                return
            self._control_conn = conn
            self._spawn(self._control.run(send, recv, accepted.payload))
            for stream, _room in self._durable.values():
                stream.told = 0
                self._control.want(stream)

    async def _next_connection(self, old: Any) -> None:
        """Until a connection other than ``old`` is up (the reconnect of ``wait`` makes it)."""
        while not self._closing:
            await self._up.wait()
            if self.conn is not old:
                return
            if not _closed(old):  # only the stream broke: try again on the same connection
                await asyncio.sleep(1.0)
                return
            await asyncio.sleep(0.2)

    async def _listen_udp(self, host: str, port: int, on_datagram: Callable[[bytes, Address], None]) -> Any:
        """Bind the local UDP listener and say so (the line scripts and tests wait for)."""
        loop = asyncio.get_running_loop()
        transport, _protocol = await loop.create_datagram_endpoint(
            lambda: UdpEndpoint(on_datagram), local_addr=(host, port)
        )
        self._udp = transport
        sockname = transport.get_extra_info("sockname")
        self.local_addresses = [(sockname[0], sockname[1])]
        log.info("Listening on UDP %s:%d, forwarding to %s", sockname[0], sockname[1], self.options.source)
        return transport

    async def _start_udp(self, host: str, port: int) -> None:
        send, recv, payload = await self.open_source_stream(datagram_flow=UDP_FLOW)
        if self.datagram_flow is not None:
            await self._start_udp_flows(host, port, (send, recv, payload))
            return
        log.debug("UDP travels on the stream (server without datagrams)")
        writer = FrameWriter(send)
        peer: list[Address] = []

        def from_local(data: bytes, addr: Address) -> None:
            if not peer or peer[0] != addr:
                peer[:] = [addr]  # the last sender wins (reference 3.1)
            writer.push(data)

        transport = await self._listen_udp(host, port, from_local)

        def to_local(datagram: bytes) -> None:
            if peer:
                transport.sendto(datagram, peer[0])

        async def pump() -> None:
            f = ffi.load()
            try:
                if payload:
                    for datagram in UdpFrameDecoder().feed(payload):
                        to_local(datagram)
                await read_frames(recv, to_local)
            except (WireError, f.IrohError) as exc:
                log.warning("UDP stream ended: %s", ffi.error_text(exc) if isinstance(exc, f.IrohError) else exc)

        self._spawn(writer.run())
        self._spawn(pump())

    async def _start_udp_flows(self, host: str, port: int, first: tuple[Any, Any, bytes]) -> None:
        """With our server (it took the datagram offer): one flow per local UDP peer, as in the ICE modes - its own
        stream (and so its own server socket), replies only to it, QUIC datagrams both ways, idle expiry and a cap
        on live peers (the least recently active is retired)."""
        loop = asyncio.get_running_loop()
        link = self._link = DatagramLink(self.conn)
        flows: dict[Address, _PeerFlow] = {}
        spare: list[tuple[Any, Any, bytes]] = [first]  # the stream already opened goes to the first peer
        next_flow = [UDP_FLOW]
        log.debug("UDP travels as QUIC datagrams, one flow per local peer")

        def retire(flow: _PeerFlow) -> None:
            flows.pop(flow.peer, None)
            link.unregister(flow.flow_id)
            if flow.writer is not None:
                flow.writer.close()  # a clean FIN: the server closes the flow's socket and finishes its side
            elif flow.opening is not None:
                flow.opening.cancel()

        def from_local(data: bytes, addr: Address) -> None:
            flow = flows.get(addr)
            if flow is None:
                if len(flows) >= MAX_UDP_PEERS:
                    retire(min(flows.values(), key=lambda f: f.last_active))
                flow = flows[addr] = _PeerFlow(addr, next_flow[0], loop.time())
                next_flow[0] += 1
                flow.opening = self._spawn(open_flow(flow))
            flow.last_active = loop.time()
            if flow.writer is None:
                if len(flow.pending) < PENDING_LIMIT:
                    flow.pending.append(data)
            elif not flow.datagrams or not link.send(flow.flow_id, data):
                flow.writer.push(data)

        transport = await self._listen_udp(host, port, from_local)

        async def open_flow(flow: _PeerFlow) -> None:
            f = ffi.load()
            try:
                if spare:
                    send, recv, payload = spare.pop()
                    flow.flow_id = UDP_FLOW
                else:
                    send, recv, payload = await self.open_source_stream(datagram_flow=flow.flow_id)
            except TunnelError as exc:
                log.warning("UDP flow for %s:%d not opened: %s", flow.peer[0], flow.peer[1], exc.message)
                flows.pop(flow.peer, None)
                return
            # Read right after the dialogue (no await in between), so no other flow's dialogue overwrote it.
            flow.datagrams = self.datagram_flow == flow.flow_id

            def to_peer(datagram: bytes) -> None:
                transport.sendto(datagram, flow.peer)

            if flow.datagrams:
                link.register(flow.flow_id, to_peer)
            flow.writer = FrameWriter(send)
            self._spawn(flow.writer.run())
            for data in flow.pending:
                if not flow.datagrams or not link.send(flow.flow_id, data):
                    flow.writer.push(data)
            flow.pending.clear()
            try:
                for datagram in UdpFrameDecoder().feed(payload):
                    to_peer(datagram)
                await read_frames(recv, to_peer)
            except (WireError, f.IrohError) as exc:
                log.debug("UDP flow stream ended: %s", ffi.error_text(exc) if isinstance(exc, f.IrohError) else exc)
            if flows.get(flow.peer) is flow:
                retire(flow)

        async def expire() -> None:
            while True:
                await asyncio.sleep(UDP_IDLE_TIMEOUT / 8)
                now = loop.time()
                for flow in [f for f in flows.values() if f.last_active + UDP_IDLE_TIMEOUT <= now]:
                    retire(flow)

        self._spawn(link.run())
        self._spawn(expire())


@attrs.define(eq=False)
class _PeerFlow:
    """iroh client, datagram mode: one local UDP peer's flow."""

    peer: Address
    flow_id: int
    last_active: float
    writer: FrameWriter | None = None  # set once the flow's stream is open
    opening: asyncio.Task[Any] | None = None
    datagrams: bool = False
    pending: list[bytes] = attrs.Factory(list)  # what the peer sent while its stream was opening


__all__ = ["CLOSE_UNAUTHORIZED", "IrohClient"]


def _path_text(conn: Any) -> str:
    """The selected path in a few words for the "Tunnel back" line (the PathWatch line follows with details)."""
    try:
        chosen = next((v for v in path_views(conn) if v.selected), None)
    except Exception:
        chosen = None
    if chosen is None:
        return "connected"
    return f"{'Relay' if chosen.is_relay else 'Direct'} {chosen.remote}"


def _closed(conn: Any) -> bool:
    """Whether an iroh connection has ended (its close reason is known)."""
    try:
        return conn.close_reason() is not None
    except Exception:
        return False
