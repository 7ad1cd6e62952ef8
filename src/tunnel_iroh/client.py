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
import socket
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
from tunnel_core.iroh_session.constants import INVALID_PROTOCOL_REASON
from tunnel_core.iroh_session.options import IrohClientOptions
from tunnel_core.keys import format_endpoint_id
from tunnel_core.options import ExitCode, SocksListen, TunnelError
from tunnel_core.policy import parse_source, parse_target
from tunnel_core.reconnect import back_line, lost_line, reset_line
from tunnel_core.reverse import REVERSE_SCHEME
from tunnel_core.socks5 import GENERAL_FAILURE, SUCCEEDED, Socks5Server, refusal_code
from tunnel_core.socks5 import reply as socks5_reply
from tunnel_core.types import Address
from tunnel_core.wire import DurableRequest, MessageReader, UdpFrameDecoder, WireError, decode_source_request
from tunnel_iroh import durable, ffi, heal, redial
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
from tunnel_iroh.endpoint import CONNECT_TIMEOUT, PathWatch, bind_endpoint, connect, endpoint_id_bytes, path_views
from tunnel_iroh.socks import OnionBridges

log = logging.getLogger("tunnel_iroh")

RESPONSE_TIMEOUT = 10.0
OPEN_ATTEMPTS = 3
OPEN_BACKOFF = 0.1
#: Datagrams a new local peer may send before its flow's stream is open; more are dropped.
PENDING_LIMIT = 64
#: An application that has not finished its SOCKS5 request by then is dropped (as in the ICE modes).
SOCKS_HANDSHAKE_TIMEOUT = 10.0
#: The flow id our one UDP stream offers for QUIC datagrams (iroh mode keeps upstream's one stream per client).
UDP_FLOW = 0
#: How often a UDP stream that ended with its connection looks whether the reconnect is done.
NEXT_CONNECTION_POLL = 0.1


class IrohClient:
    """``start`` connects and listens; ``wait`` returns when the connection ends (raising TunnelError if it
    ended badly); ``close`` ends it in an orderly way."""

    def __init__(self, options: IrohClientOptions) -> None:
        self.options = options
        self.source = parse_source(options.source) if options.source is not None else None
        self.endpoint: Any = None
        self.conn: Any = None
        self.local_addresses: list[Address] = []
        self._bridges = OnionBridges(options.network.socks5_proxy)
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watch: PathWatch | None = None
        self._established = False
        self._closing = False
        #: set while ``conn`` is usable; cleared during a reconnect so new local connections wait for the next one
        self._up = asyncio.Event()
        self._dial_args: dict[str, Any] = {}
        self._relay_urls: tuple[str, ...] = ()
        self.datagram_flow: int | None = None
        self._link: DatagramLink | None = None
        #: called by ``_connect`` on a reconnect, before new local traffic is let through (UDP flows start anew),
        #: one per UDP forward
        self._on_reconnect: list[Callable[[], None]] = []
        #: UDP flow ids are one space per connection, over every UDP forward (QUIC datagrams name them)
        self._next_flow = UDP_FLOW
        self._udp_transports: list[Any] = []
        #: reverse forwards the server granted, by their signaling text (``reverse://ip:port``)
        self._reverse: dict[str, tuple[Address, ...]] = {}
        self._reverse_streams: list[Any] = []
        self.e4 = options.protocol == "e4"
        #: durable streams (docs/durable.md, e4 only): this process's session token and the next stream's key
        self._token = os.urandom(16)
        self._next_key = durable.CONTROL_KEY + 1
        self._durable: dict[int, tuple[DurableStream, asyncio.Event]] = {}
        self._control = durable.Control(self._on_ack)
        self._control_conn: Any = None
        self._control_lock = asyncio.Lock()
        #: open connections that would be reset by a move to a new connection (not durable): streams a server
        #: without durable streams carries, and under e2 every one; while there is one, a stalled connection is
        #: not replaced (heal)
        self._fragile = 0
        self.version = PROTOCOL_VERSION_E4 if self.e4 else PROTOCOL_VERSION_E2
        self.alpn = ALPN_E4 if self.e4 else ALPN_E2

    # ------------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        opts = self.options
        relay_urls = self._relay_urls = await self._bridges.rewrite(opts.network.relay_urls)
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
        await self._request_reverse()
        for forward in opts.extra_forwards:  # more forwards: each stream's SourceRequest names its source
            host, port = parse_target(forward.listen)
            if forward.source.lower().startswith("udp://"):
                await self._start_udp(host, port, forward.source)
            else:
                await self._listen_tcp(forward.listen, forward.source)
        if opts.socks5 is not None:
            await self._listen_socks(opts.socks5)
        if self.source is None or opts.target is None:
            return
        host, port = parse_target(opts.target)
        if self.source.protocol == "tcp":
            server = await asyncio.start_server(self._on_local_tcp, host, port, limit=TCP_LIMIT)
            self._servers.append(server)
            self.local_addresses = [tuple(s.getsockname()[:2]) for s in server.sockets]  # type: ignore[misc]
            for address in self.local_addresses:
                log.info("Listening on TCP %s:%d, forwarding to %s", address[0], address[1], opts.source)
        else:
            await self._start_udp(host, port, opts.source)

    async def _connect(self) -> None:
        """Dial the server (and authenticate under e4); then watch the path and let local connections through."""
        conn = await self._dial()
        log.info("Connected to server %s", format_endpoint_id(self.options.server_id))
        await self._adopt(conn)

    async def _dial(self, timeout: float = CONNECT_TIMEOUT) -> Any:
        """A new connection to the server (its handshake given ``timeout``), authenticated under e4 (closed again
        if that fails)."""
        conn = await connect(self.endpoint, self.options.server_id, timeout=timeout, **self._dial_args)
        if self.e4:
            try:
                await self._authenticate(conn)
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.close(CLOSE_DONE.code, CLOSE_DONE.reason)
                raise
        return conn

    async def _adopt(self, conn: Any) -> None:
        """Make ``conn`` the connection: watch its path, renew UDP flows, let local connections through, and (with
        durable streams) watch it for a stall (tunnel_iroh.heal)."""
        self.conn = conn
        if self._watch is not None:
            await self._watch.stop()
        self._watch = PathWatch(conn)
        self._watch.start()
        if self._on_reconnect and self._established:
            for renew in self._on_reconnect:
                renew()
            self._renew_link()
        self._up.set()
        if self.e4 and self.options.reconnect_timeout > 0:
            healer = heal.Healer(conn, offsets=self._durable_offsets, nudge=self._nudge,
                                 movable=lambda: self._fragile == 0,
                                 dial=lambda: self._dial(heal.PROBE_TIMEOUT), adopt=self._heal,
                                 current=lambda: self.conn)
            self._spawn(healer.run())

    def _durable_offsets(self) -> list[heal.Offsets]:
        return [(key, stream.confirmed, stream.end, stream.received) for key, (stream, _room) in self._durable.items()]

    def _nudge(self) -> None:
        self._control.nudge([stream for stream, _room in self._durable.values()])

    async def _heal(self, new: Any, stalled_for: float, probes: int) -> None:
        """A probe dial completed while the connection was stalled: move to the new connection and close the old
        one; every durable stream resumes on the new one at its confirmed offset (``_carry_durable``)."""
        old = self.conn
        await self._adopt(new)
        with contextlib.suppress(Exception):
            old.close(CLOSE_DONE.code, CLOSE_DONE.reason)
        log.warning("%s (a new connection; the stalled one is closed, %d stream(s) move to it)",
                    back_line(stalled_for, probes, _path_text(new)), len(self._durable))
        await self._request_reverse()  # the server's listeners went with the old connection

    async def wait(self) -> None:
        """Until the connection closes for good; a close we did not ask for is an error with the right exit code.

        A lost connection is dialled again for ``reconnect_timeout`` (docs/reconnect.md): the local listener
        stays; new local TCP connections wait for the new connection, open ones end with it; UDP flows are opened
        anew on it (the local UDP socket and its peers stay)."""
        while True:
            conn = self.conn
            reason = await conn.closed()
            if self._closing:
                return
            if self.conn is not conn:  # replaced by a healthier connection (tunnel_iroh.heal): not a loss
                continue
            text = str(reason)
            if "unauthorized" in text and "code 1" in text:
                raise TunnelError(
                    f"Server refused this client (unauthorized): add its EndpointId {self.client_id} to the "
                    "server's --allowed-clients", ExitCode.AUTH,
                )
            lost = TunnelError(f"Connection to server lost: {text}", ExitCode.CONNECTION_LOST)
            if self.options.reconnect_timeout <= 0:
                raise lost
            await self._reconnect(lost)

    async def _reconnect(self, lost: TunnelError) -> None:
        """Dial again until connected or ``reconnect_timeout`` passed (then exit 11): an attempt every second, at
        most two at once, and a fresh endpoint when the relay comes back (tunnel_iroh.redial)."""
        self._up.clear()
        timeout = self.options.reconnect_timeout
        log.warning("%s", lost_line(lost.message, timeout))
        loop = asyncio.get_running_loop()
        started = loop.time()
        relays = self._dial_args["relay_urls"]
        address = redial.relay_address(relays[0]) if relays else None
        probe = redial.RelayProbe(address) if address is not None else None
        conn, attempts = await redial.redial(self._dial, budget=timeout, last=lost.message, probe=probe,
                                             fresh_endpoint=self._fresh_endpoint)
        log.info("Connected to server %s", format_endpoint_id(self.options.server_id))
        await self._adopt(conn)
        log.warning("%s", back_line(loop.time() - started, attempts, _path_text(self.conn)))
        await self._request_reverse()  # the server's listeners went with the lost connection

    async def _fresh_endpoint(self) -> None:
        """Replace the endpoint by a new one with the same key (same EndpointId): its relay client dials at once,
        where the old one may wait out a backoff of up to 16 s (tunnel_iroh.redial). The old endpoint, whose
        connection is gone already, is closed; first, when ``--bind-addr`` names a port the new one needs."""
        old = self.endpoint
        opts = self.options
        fixed_port = opts.network.bind_addr is not None and not opts.network.bind_addr.endswith(":0")
        if fixed_port:
            await _close_endpoint(old, "the old endpoint")
        try:
            self.endpoint = await bind_endpoint(opts.network, secret_key=bytes(old.secret_key().to_bytes()),
                                                alpns=[self.alpn], relay_urls=self._relay_urls, online=False)
        except TunnelError as exc:
            log.debug("reconnect: no fresh endpoint (%s); dialing from the old one", exc.message)
            return
        if not fixed_port:
            self._spawn(_close_endpoint(old, "the old endpoint"))

    async def close(self) -> None:
        self._closing = True
        for server in self._servers:
            server.close()
        for transport in self._udp_transports:
            transport.close()
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
            await _close_endpoint(self.endpoint)
        await self._bridges.close()

    def _renew_link(self) -> None:
        """A reconnect: the old connection's datagram link reports its counts, the new connection gets its own."""
        if self._link is not None:
            self._link.report()
        self._link = DatagramLink(self.conn)
        self._spawn(self._link.run())

    async def _next_connection(self, old: Any) -> bool:
        """After a stream on ``old`` failed: wait until a new connection is up - or, when only the stream broke and
        ``old`` still lives, a second before trying it again; False when closing."""
        while not self._closing:
            if self._up.is_set() and self.conn is not old:
                return True
            if self._up.is_set() and not durable.closed(old):
                await asyncio.sleep(1.0)
                return not self._closing
            await asyncio.sleep(NEXT_CONNECTION_POLL)
        return False

    async def _bridge_fragile(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, send: Any, recv: Any,
                              first: bytes) -> None:
        """``bridge_tcp`` for a connection that does not survive a move to a new connection (counted in
        ``_fragile``, so a stalled connection is not replaced under it)."""
        self._fragile += 1
        try:
            await bridge_tcp(reader, writer, send, recv, first=first)
        finally:
            self._fragile -= 1

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _authenticate(self, conn: Any) -> None:
        """E4: prove the Ed25519 key on the first bi-stream before any listener is bound (exit 3 when refused)."""
        f = ffi.load()
        seed = self.options.auth_seed
        if seed is None:
            raise TunnelError("Authentication requires --private-key-file or [iroh].private_key_file.",
                              ExitCode.USAGE)
        loop = asyncio.get_running_loop()
        machine = AuthClient(seed, now=loop.time())
        try:
            bi = await conn.open_bi()
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

    async def _listen_socks(self, socks: SocksListen) -> None:
        """The dynamic forward (``--socks5``): each CONNECT becomes a stream whose SourceRequest names its target,
        which the server checks with its allowlist like any source (docs/forwards.md)."""
        host, port = parse_target(socks.listen)

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._on_socks(reader, writer, socks.credentials)

        server = await asyncio.start_server(on_connection, host, port, limit=TCP_LIMIT)
        self._servers.append(server)
        auth = " (username/password required)" if socks.credentials else ""
        for sock in server.sockets:
            address = sock.getsockname()
            log.info("Listening on SOCKS5 %s:%d%s - point your applications' socks5h proxy here", address[0],
                     address[1], auth)

    async def _on_socks(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, credentials: tuple[str, str] | None
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        tune_tcp(writer)
        machine = Socks5Server(credentials)
        try:
            try:
                async with asyncio.timeout(SOCKS_HANDSHAKE_TIMEOUT):
                    while machine.request is None and not machine.failed:
                        data = await reader.read(READ_LIMIT)
                        if not data:
                            writer.close()
                            return
                        machine.feed(data)
                        writer.write(machine.data_to_send())
            except TimeoutError:
                log.info("SOCKS5 connection dropped: no complete request within %.0f s", SOCKS_HANDSHAKE_TIMEOUT)
                writer.transport.abort()
                return
            if machine.request is None:
                log.info("SOCKS5 connection refused: %s", machine.error)
                writer.close()
                return
            if self.e4:  # durable like a --forward connection: each CONNECT is a plain source request
                await self._durable_tcp(reader, writer, machine.request.url(), socks=machine.remainder)
                return
            try:
                await self._up.wait()
                send, recv, payload = await self.open_source_stream(source=machine.request.url())
            except TunnelError as exc:
                _socks_refused(writer, machine.request.url(), exc)
                return
            writer.write(socks5_reply(SUCCEEDED))
            if machine.remainder:
                await send.write_all(machine.remainder)
            await self._bridge_fragile(reader, writer, send, recv, first=payload)
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _request_reverse(self) -> None:
        """Ask the server for every reverse forward (``--reverse``): one control stream each, whose SourceRequest
        names ``reverse://ip:port``; the server's listener lives as long as that stream. Accepted connections come
        back as streams the server opens (``_serve_reverse``)."""
        opts = self.options
        if not opts.reverse:
            return
        self._reverse.clear()
        for stream in self._reverse_streams:
            with contextlib.suppress(Exception):
                await stream.finish()
        self._reverse_streams.clear()
        last_refusal = ""
        for forward in opts.reverse:
            target = parse_source(forward.source)
            if target.protocol != "tcp":
                raise TunnelError(f"Reverse forward '{forward.listen}={forward.source}': only tcp:// targets",
                                  ExitCode.USAGE)
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(target.host, target.port,
                                                                     type=socket.SOCK_STREAM)
            except OSError:
                raise TunnelError(f"Reverse forward target '{forward.source}' does not resolve",
                                  ExitCode.USAGE) from None
            addresses = tuple(dict.fromkeys((str(i[4][0]), target.port) for i in infos))
            text = REVERSE_SCHEME + forward.listen
            name = f"reverse {forward.listen}={forward.source}"
            # e4: our server then makes the forward's connections durable streams of ours (docs/durable.md); the
            # key only names the request (the server names each connection's stream itself)
            offer = DurableRequest(self._token, self._new_key()) if self.e4 else None
            try:
                send, _recv, _accepted = await self._open_stream(
                    ClientStream(text, version=self.version, durable=offer), text)
            except TunnelError as exc:
                reason = exc.message.removeprefix("Source request rejected: ")
                if reason == INVALID_PROTOCOL_REASON:
                    raise TunnelError("The server does not support reverse forwards (--reverse) (upstream "
                                      "tunnel-rs or an older tunnel)", ExitCode.GENERAL) from None
                log.warning("Forward %s refused by the server: %s", name, reason)
                last_refusal = reason
                continue
            self._reverse[text] = addresses
            self._reverse_streams.append(send)
            log.info("The server listens on %s for reverse forward to %s", forward.listen, forward.source)
        if not self._reverse and self.source is None and not opts.extra_forwards and opts.socks5 is None:
            raise TunnelError(f"No forward the client asked for is allowed: {last_refusal}", ExitCode.AUTH)
        if self._reverse:
            self._spawn(self._serve_reverse(self.conn))

    async def _serve_reverse(self, conn: Any) -> None:
        """Streams the server opens for its reverse listeners' connections: dial the forward's client-side target
        and relay."""
        f = ffi.load()
        while True:
            try:
                bi = await conn.accept_bi()
            except f.IrohError:
                return
            self._spawn(self._reverse_stream(conn, bi.send(), bi.recv()))

    async def _reverse_stream(self, conn: Any, send: Any, recv: Any) -> None:
        f = ffi.load()
        reader = MessageReader("SourceRequest")
        try:
            body = None
            async with asyncio.timeout(RESPONSE_TIMEOUT):
                while body is None:
                    data = await recv.read(READ_LIMIT)
                    if not data:
                        reader.feed_eof()
                    body = reader.feed(data)
            request = decode_source_request(body, expected_version=self.version)
            addresses = self._reverse.get(request.source)
            if addresses is None:
                raise WireError(f"no reverse forward {request.source}")
            tcp_reader, tcp_writer = await happy_eyeballs(addresses, limit=TCP_LIMIT, timeout=RESPONSE_TIMEOUT)
        except (TimeoutError, WireError, DialFailed, f.IrohError) as exc:
            log.warning("Reverse connection not carried: %s", exc)
            with contextlib.suppress(Exception):
                await send.reset(0)
            with contextlib.suppress(Exception):
                await recv.stop(0)
            return
        tune_tcp(tcp_writer)
        offer = request.durable
        if self.e4 and offer is not None and offer.token == self._token and offer.offset is None:
            # a durable stream the server named: resumed by us on the next connection like our own
            await self._durable_tcp(tcp_reader, tcp_writer, request.source, key=offer.key,
                                    opened=(conn, send, recv, SourceAccepted(reader.remainder, None, 0)))
            return
        await self._bridge_fragile(tcp_reader, tcp_writer, send, recv, first=reader.remainder)

    async def open_source_stream(
        self, datagram_flow: int | None = None, source: str | None = None
    ) -> tuple[Any, Any, bytes]:
        """Open a bi-stream and run the SourceRequest dialogue (for ``source``, the client's own by default);
        TunnelError when refused.

        ``datagram_flow`` offers QUIC datagrams for a UDP stream; ``self.datagram_flow`` then tells whether the
        server took the offer (our server does; upstream's ignores it)."""
        machine = ClientStream(source or self.options.source or "", version=self.version, datagram_flow=datagram_flow)
        send, recv, event = await self._open_stream(machine, source)
        self.datagram_flow = event.datagram_flow
        return send, recv, event.payload

    async def _open_stream(
        self, machine: ClientStream, source: str | None = None
    ) -> tuple[Any, Any, SourceAccepted]:
        """Open a bi-stream and run ``machine``'s dialogue (for ``source``: the log line); the acceptance, or
        TunnelError."""
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
            log.info("Tunnel to server established! Source: %s", source or self.options.source)
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
            await self._bridge_fragile(reader, writer, send, recv, first=payload)
            if not self._closing and (conn is not self.conn or durable.closed(conn)):
                peer = writer.get_extra_info("peername")
                log.warning("%s", reset_line(f"{peer[0]}:{peer[1]}" if peer else "a local client"))
        finally:
            if task is not None:
                self._tasks.discard(task)

    def _new_key(self) -> int:
        self._next_key += 1
        return self._next_key - 1

    async def _durable_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           source: str | None, socks: bytes | None = None, key: int | None = None,
                           opened: tuple[Any, Any, Any, SourceAccepted] | None = None) -> None:
        """One local connection as a durable stream: asked for on every stream it opens, it continues on the next
        connection after a loss; a server that does not take it (upstream) gets a plain stream, as before.
        ``socks``: a SOCKS5 application's connection whose CONNECT named ``source``, and what it sent after the
        request; its reply follows the server's first answer. ``key``/``opened``: a reverse forward's connection,
        whose stream the server opened (on connection ``opened[0]``) and named ``key``."""
        stream = DurableStream(self._new_key() if key is None else key)
        room = asyncio.Event()
        self._durable[stream.key or 0] = (stream, room)
        try:
            await self._carry_durable(reader, writer, source, stream, room, socks, opened)
        finally:
            del self._durable[stream.key or 0]

    async def _carry_durable(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str | None,
                             stream: DurableStream, room: asyncio.Event, socks: bytes | None = None,
                             opened: tuple[Any, Any, Any, SourceAccepted] | None = None) -> None:
        resumed = False
        peer = writer.get_extra_info("peername")
        name = f"{peer[0]}:{peer[1]}" if peer else "a local client"
        while True:
            if opened is not None:  # a reverse forward's connection: the server opened its first stream
                conn, send, recv, accepted = opened
                opened = None
            else:
                await self._up.wait()
                conn = self.conn
                request = DurableRequest(self._token, stream.key or 0, stream.received if resumed else None)
                machine = ClientStream(source or self.options.source or "", version=self.version, durable=request)
                try:
                    send, recv, accepted = await self._open_stream(machine, source)
                except TunnelError as exc:
                    if resumed and exc.exit_code is ExitCode.CONNECTION_LOST and not self._closing:
                        await self._next_connection(conn)  # the new connection broke too: wait for the next one
                        continue
                    self._not_opened(writer, source, name, exc, socks=socks, resumed=resumed)
                    return
            if socks is not None and not resumed:  # the server took the target: the application may go on
                writer.write(socks5_reply(SUCCEEDED))
                if accepted.durable is not None:
                    stream.record(socks)  # sent first by the bridge (the server has 0 bytes of the stream)
                elif socks:
                    await send.write_all(socks)
            if accepted.durable is None:  # upstream's server, or an older one
                if resumed:
                    log.warning("%s", reset_line(name, OLD_PEER_REASON))
                    writer.transport.abort()
                    return
                await self._bridge_fragile(reader, writer, send, recv, first=accepted.payload)
                if not self._closing and (conn is not self.conn or durable.closed(conn)):
                    log.warning("%s", reset_line(name))
                return
            if self._control_conn is not conn:  # opened beside the stream: its bytes need not wait for it
                self._spawn(self._ensure_control(conn, source))
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

    def _not_opened(self, writer: asyncio.StreamWriter, source: str | None, name: str, exc: TunnelError, *,
                    socks: bytes | None, resumed: bool) -> None:
        """A durable stream's (re)opening failed for good: tell the local application and the user."""
        if socks is not None and not resumed:
            _socks_refused(writer, source or "", exc)
            return
        if resumed and exc.exit_code is ExitCode.AUTH:
            log.warning("%s", reset_line(name, UNKNOWN_REASON))
        elif not self._closing:
            log.error("%s", exc.message)
        writer.transport.abort()

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
            machine = ClientStream(source or self.options.source or "", version=self.version,
                                   durable=DurableRequest(self._token, durable.CONTROL_KEY))
            try:
                send, recv, accepted = await self._open_stream(machine, source)
            except TunnelError as exc:
                log.debug("durable control stream: %s", exc.message)
                return
            self._control_conn = conn
            self._spawn(self._control.run(send, recv, accepted.payload))
            for stream, _room in self._durable.values():
                stream.told = 0
                self._control.want(stream)

    async def _listen_udp(
        self, host: str, port: int, on_datagram: Callable[[bytes, Address], None], source: str
    ) -> Any:
        """Bind a local UDP listener and say so (the line scripts and tests wait for)."""
        loop = asyncio.get_running_loop()
        transport, _protocol = await loop.create_datagram_endpoint(
            lambda: UdpEndpoint(on_datagram), local_addr=(host, port)
        )
        self._udp_transports.append(transport)
        sockname = transport.get_extra_info("sockname")
        if source == self.options.source:
            self.local_addresses = [(sockname[0], sockname[1])]
        log.info("Listening on UDP %s:%d, forwarding to %s", sockname[0], sockname[1], source)
        return transport

    def _new_flow(self) -> int:
        flow, self._next_flow = self._next_flow, self._next_flow + 1
        return flow

    async def _start_udp(self, host: str, port: int, source: str) -> None:
        """One UDP forward: its first stream is opened now (a refusal ends the client, as for one forward)."""
        first_flow = self._new_flow()
        offer = None if self.options.udp_over == "stream" else first_flow  # stream: upstream's request bytes
        send, recv, payload = await self.open_source_stream(datagram_flow=offer, source=source)
        if self.datagram_flow is not None:  # read right after the dialogue: other streams' dialogues overwrite it
            await self._start_udp_flows(host, port, source, (send, recv, payload), first_flow)
            return
        log.debug("UDP travels on the stream (server without datagrams)")
        writers = [FrameWriter(send)]
        peer: list[Address] = []

        def from_local(data: bytes, addr: Address) -> None:
            if not peer or peer[0] != addr:
                peer[:] = [addr]  # the last sender wins (reference 3.1)
            writers[0].push(data)

        transport = await self._listen_udp(host, port, from_local, source)

        def to_local(datagram: bytes) -> None:
            if peer:
                transport.sendto(datagram, peer[0])

        async def pump(recv: Any, payload: bytes) -> None:
            f = ffi.load()
            while True:
                conn = self.conn
                try:
                    if payload:
                        for datagram in UdpFrameDecoder().feed(payload):
                            to_local(datagram)
                    await read_frames(recv, to_local)
                except (WireError, f.IrohError) as exc:
                    log.warning("UDP stream ended: %s", ffi.error_text(exc) if isinstance(exc, f.IrohError) else exc)
                # A lost connection: the same stream on the next one (the local socket and its peer stay).
                if self.options.reconnect_timeout <= 0 or not await self._next_connection(conn):
                    return
                try:
                    send, recv, payload = await self.open_source_stream(source=source)
                except TunnelError as exc:
                    log.warning("UDP stream not reopened: %s", exc.message)
                    return
                writers[0].close()
                writers[0] = FrameWriter(send)
                self._spawn(writers[0].run())

        self._spawn(writers[0].run())
        self._spawn(pump(recv, payload))

    async def _start_udp_flows(
        self, host: str, port: int, source: str, first: tuple[Any, Any, bytes], first_flow: int
    ) -> None:
        """With our server (it took the datagram offer): one flow per local UDP peer, as in the ICE modes - its own
        stream (and so its own server socket), replies only to it, QUIC datagrams both ways, idle expiry and a cap
        on live peers (the least recently active is retired)."""
        loop = asyncio.get_running_loop()
        start_link = self._link is None
        if self._link is None:  # one per connection, shared by every UDP forward
            self._link = DatagramLink(self.conn)
        flows: dict[Address, _PeerFlow] = {}
        spare: list[tuple[Any, Any, bytes]] = [first]  # the stream already opened goes to the first peer
        spare_id = [first_flow]  # ... with its flow id, taken when that peer's flow is created
        log.debug("UDP travels as QUIC datagrams, one flow per local peer")

        def link() -> DatagramLink:
            assert self._link is not None
            return self._link

        def retire(flow: _PeerFlow) -> None:
            if flows.get(flow.peer) is flow:
                flows.pop(flow.peer)
            link().unregister(flow.flow_id)
            if flow.writer is not None:
                flow.writer.close()  # a clean FIN: the server closes the flow's socket and finishes its side
            elif flow.opening is not None:
                flow.opening.cancel()

        def from_local(data: bytes, addr: Address) -> None:
            flow = flows.get(addr)
            if flow is None:
                if len(flows) >= MAX_UDP_PEERS:
                    retire(min(flows.values(), key=lambda f: f.last_active))
                flow_id = spare_id.pop() if spare_id else self._new_flow()
                flow = flows[addr] = _PeerFlow(addr, flow_id, loop.time())
                flow.opening = self._spawn(open_flow(flow))
            flow.last_active = loop.time()
            if flow.writer is None:
                if len(flow.pending) < PENDING_LIMIT:
                    flow.pending.append(data)
            elif not flow.datagrams or not link().send(flow.flow_id, data):
                flow.writer.push(data)

        transport = await self._listen_udp(host, port, from_local, source)

        def renew() -> None:
            """A reconnect: the old connection's flows are over (their next datagram opens a new flow); the new
            connection's datagram link is made once for every forward (``_renew_link``)."""
            for flow in [f for f in flows.values() if f.writer is not None]:
                retire(flow)

        self._on_reconnect.append(renew)

        async def open_flow(flow: _PeerFlow) -> None:
            f = ffi.load()
            try:
                if spare and flow.flow_id == first_flow:
                    send, recv, payload = spare.pop()
                    taken = first_flow  # the first dialogue took the offer (or this flow would not exist)
                else:
                    await self._up.wait()  # during a reconnect: on the next connection
                    send, recv, payload = await self.open_source_stream(datagram_flow=flow.flow_id, source=source)
                    taken = self.datagram_flow
            except TunnelError as exc:
                log.warning("UDP flow for %s:%d not opened: %s", flow.peer[0], flow.peer[1], exc.message)
                flows.pop(flow.peer, None)
                return
            # Read right after the dialogue (no await in between), so no other flow's dialogue overwrote it.
            flow.datagrams = taken == flow.flow_id

            def to_peer(datagram: bytes) -> None:
                transport.sendto(datagram, flow.peer)

            if flow.datagrams:
                link().register(flow.flow_id, to_peer)
            flow.writer = FrameWriter(send)
            self._spawn(flow.writer.run())
            for data in flow.pending:
                if not flow.datagrams or not link().send(flow.flow_id, data):
                    flow.writer.push(data)
            flow.pending.clear()
            try:
                for datagram in UdpFrameDecoder().feed(payload):
                    to_peer(datagram)
                await read_frames(recv, to_peer)
            except (WireError, f.IrohError) as exc:
                log.debug("UDP flow stream ended: %s", ffi.error_text(exc) if isinstance(exc, f.IrohError) else exc)
            retire(flow)

        async def expire() -> None:
            while True:
                await asyncio.sleep(UDP_IDLE_TIMEOUT / 8)
                now = loop.time()
                for flow in [f for f in flows.values() if f.last_active + UDP_IDLE_TIMEOUT <= now]:
                    retire(flow)

        if start_link:
            self._spawn(link().run())
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


def _socks_refused(writer: asyncio.StreamWriter, target: str, exc: TunnelError) -> None:
    """A SOCKS5 application's target the server did not take: the matching reply, then close."""
    reason = exc.message.removeprefix("Source request rejected: ")
    log.info("Dynamic target %s refused by the server: %s", target, reason)
    writer.write(socks5_reply(refusal_code(reason) if exc.exit_code is ExitCode.AUTH else GENERAL_FAILURE))
    writer.close()


def _path_text(conn: Any) -> str:
    """The selected path in a few words for the "Tunnel back" line (the PathWatch line follows with details)."""
    try:
        chosen = next((v for v in path_views(conn) if v.selected), None)
    except Exception:
        chosen = None
    if chosen is None:
        return "connected"
    return f"{'Relay' if chosen.is_relay else 'Direct'} {chosen.remote}"


async def _close_endpoint(endpoint: Any, what: str = "") -> None:
    """Close an endpoint (at most 5 s); ``what``: say at debug level how long it took."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(endpoint.close(), 5.0)
    if what:
        log.debug("%s closed in %.2f s", what, loop.time() - began)
