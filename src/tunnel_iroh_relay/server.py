"""The relay on asyncio: HTTP/1.1 (h11), the WebSocket upgrade on /relay, websockets' sans-IO frame layer, TLS.

Everything protocol-related is decided by :class:`tunnel_core.iroh_relay.RelayServer`; this module moves bytes and
carries out its events. It uses ``asyncio.Protocol`` callbacks rather than streams because the data path is a
per-message loop where every avoided await counts (the relay's throughput is bounded by Python, not the link).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import ssl
import time
from collections.abc import Callable
from typing import cast
from urllib.parse import parse_qs, urlsplit

import h11
from websockets.exceptions import ProtocolError as WsProtocolError
from websockets.frames import Opcode
from websockets.protocol import Protocol, Side, State
from websockets.utils import accept_key

from tunnel_core.iroh_relay import (
    SUBPROTOCOLS,
    ClientAuthenticated,
    ClientDenied,
    ClientLeft,
    CloseConnection,
    OutputReady,
    RelayOptions,
    RelayServer,
    choose_subprotocol,
)
from tunnel_core.iroh_relay.frames import MAX_FRAME_SIZE
from tunnel_core.options import ExitCode, TunnelError

__all__ = ["RelayService", "format_endpoint"]

log = logging.getLogger("tunnel_iroh_relay")

RELAY_PATH = "/relay"
#: Headers of a 101 may arrive in one segment with the first frames; 16 KiB is far beyond any real request.
MAX_REQUEST_BYTES = 16 * 1024
#: How long a closing WebSocket waits for the client's close frame before the TCP connection is dropped.
CLOSE_TIMEOUT = 1.0
#: An idle HTTP connection (no request yet, or between keep-alive requests) is dropped after this long.
HTTP_IDLE_TIMEOUT = 30.0
_CHALLENGE_OK = re.compile(r"[A-Za-z0-9._-]{1,64}")

INDEX = b"<html><body><h1>tunnel relay</h1><p>An iroh-compatible relay server.</p></body></html>\n"
ROBOTS = b"User-agent: *\nDisallow: /\n"


def format_endpoint(endpoint_id: bytes | None) -> str:
    return endpoint_id.hex()[:10] if endpoint_id else "-"


class RelayService:
    """One listening relay. ``await start()``, then ``await aclose()`` for the graceful Restarting shutdown."""

    def __init__(self, options: RelayOptions, *, rng: Callable[[int], bytes] = os.urandom) -> None:
        self.options = options
        self.machine = RelayServer(rng=rng, policy=options.policy)
        self._conns: dict[int, _RelayConnection] = {}
        self._all: set[_RelayConnection] = set()
        self._server: asyncio.Server | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self.address: tuple[str, int] | None = None
        self.tls = options.tls_cert is not None

    # ----------------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> tuple[str, int]:
        self._loop = asyncio.get_running_loop()
        ssl_context = _ssl_context(self.options) if self.tls else None
        host, port = self.options.bind
        try:
            self._server = await self._loop.create_server(
                lambda: _RelayConnection(self), host, port, ssl=ssl_context, reuse_address=True, backlog=1024,
            )
        except OSError as exc:
            raise TunnelError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}", ExitCode.GENERAL) from exc
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        log.info("relay listening on %s", self.url)
        return self.address

    @property
    def url(self) -> str:
        assert self.address is not None
        host, port = self.address
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    async def aclose(self, grace: float | None = None) -> None:
        """Send Restarting to every client, give them ``grace`` seconds to read it, then close everything."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        self.machine.shutdown(self._now())
        self.pump()
        deadline = time.monotonic() + (self.options.shutdown_grace if grace is None else grace)
        while self._all and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self._all):
            conn.abort()
        if self._timer is not None:
            self._timer.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    # ----------------------------------------------------------------------------------------------- machine

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def pump(self) -> None:
        """Carry out the machine's events, then re-arm its timer. Called after every machine input."""
        machine = self.machine
        while (event := machine.next_event()) is not None:
            if isinstance(event, OutputReady):
                conn = self._conns.get(event.conn_id)
                if conn is not None:
                    conn.flush()
            elif isinstance(event, CloseConnection):
                conn = self._conns.get(event.conn_id)
                if conn is not None:
                    log.debug("closing connection %d: %s", event.conn_id, event.reason)
                    conn.close_websocket(int(event.code), event.reason)
            elif isinstance(event, ClientAuthenticated):
                log.info("client %s connected (v%d)", format_endpoint(event.endpoint_id), event.version)
            elif isinstance(event, ClientDenied):
                log.info("client %s denied: %s", format_endpoint(event.endpoint_id), event.reason)
            elif isinstance(event, ClientLeft):
                log.info("client %s left: %s", format_endpoint(event.endpoint_id), event.reason)
        self._arm_timer()

    def _arm_timer(self) -> None:
        when = self.machine.get_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None and self._loop is not None:
            self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.machine.handle_timer(self._now())
        self.pump()

    def register(self, conn: _RelayConnection, version: int, token: str | None) -> int:
        conn_id = self.machine.connect(self._now(), version=version, token=token)
        self._conns[conn_id] = conn
        return conn_id

    def forget(self, conn: _RelayConnection) -> None:
        self._all.discard(conn)
        if conn.conn_id is not None:
            self._conns.pop(conn.conn_id, None)
            self.machine.connection_lost(conn.conn_id, self._now())
            self.pump()

    def healthz(self) -> bytes:
        stats = self.machine.stats
        body = {
            "status": "ok",
            "clients": self.machine.client_count,
            "connections": len(self._conns),
            "frames_forwarded": stats.frames_forwarded,
            "bytes_forwarded": stats.bytes_forwarded,
            "dropped_queue_full": stats.dropped_queue_full,
        }
        return json.dumps(body).encode()


def _ssl_context(options: RelayOptions) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(options.tls_cert, options.tls_key)  # type: ignore[arg-type]
    except (OSError, ssl.SSLError) as exc:
        raise TunnelError(f"Cannot load TLS certificate/key: {exc}", ExitCode.USAGE) from exc
    context.set_alpn_protocols(["http/1.1"])
    return context


class _RelayConnection(asyncio.Protocol):
    """One TCP (or TLS) connection: HTTP requests until an upgrade, then relay frames over WebSocket."""

    def __init__(self, service: RelayService) -> None:
        self.service = service
        self.transport: asyncio.Transport | None = None
        self.http: h11.Connection | None = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        self.ws: Protocol | None = None
        self.conn_id: int | None = None
        self.paused = False
        self.closing = False
        self._request: h11.Request | None = None
        self._fragments: list[bytes] = []
        self._timeout: asyncio.TimerHandle | None = None
        #: loop time until which the rate limit keeps reading paused
        self._rate_hold_until = 0.0

    # ----------------------------------------------------------------------------------------------- transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # duck-typed: uvloop's do not subclass asyncio's
        self.service._all.add(self)
        self.transport.set_write_buffer_limits(high=256 * 1024)
        self._set_timeout(HTTP_IDLE_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
        self.service.forget(self)

    def pause_writing(self) -> None:
        """Stop reading while the client does not read (issue 18 item 5): everything we read can make us write
        (pongs to its WebSocket pings, HTTP responses to pipelined requests), so reading on would grow the write
        buffer without bound."""
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        self.flush()
        if self.transport is not None and not self.transport.is_closing():
            if asyncio.get_running_loop().time() >= self._rate_hold_until:
                self.transport.resume_reading()
            if self.http is not None:
                self._http_events()  # requests that arrived before the pause

    def data_received(self, data: bytes) -> None:
        if self.ws is not None:
            self._ws_data(data)
        elif self.http is not None:
            self.http.receive_data(data)
            self._http_events()

    def eof_received(self) -> bool | None:
        if self.ws is not None:
            self.ws.receive_eof()
            self._ws_after()
        elif self.http is not None:
            self.http.receive_data(b"")
            self._http_events()
        return None

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _set_timeout(self, delay: float | None) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        if delay is not None:
            self._timeout = asyncio.get_running_loop().call_later(delay, self.abort)

    # ----------------------------------------------------------------------------------------------- HTTP

    def _http_events(self) -> None:
        """Answer every complete request in h11's buffer, one after another.

        A loop, not recursion (issue 18 item 4: ~330 pipelined ``GET /ping`` ended in RecursionError), and it stops
        while the client is not reading our answers (``pause_writing``); ``resume_writing`` continues."""
        http, transport = self.http, self.transport
        assert http is not None and transport is not None
        while self.http is http and not transport.is_closing() and not self.paused:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError as exc:
                self._simple_response(exc.error_status_hint, b"bad request\n", close=True)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                answerable = http.their_state is h11.MIGHT_SWITCH_PROTOCOL or event is h11.PAUSED
                if answerable and self._request is not None:
                    self._respond()
                    continue
                return
            if isinstance(event, h11.Request):
                self._request = event
            elif isinstance(event, h11.EndOfMessage):
                self._respond()
            elif isinstance(event, h11.ConnectionClosed):
                transport.close()
                return

    def _respond(self) -> None:
        request, self._request = self._request, None
        if request is None or self.http is None:
            return
        target = request.target.decode("latin-1")
        parts = urlsplit(target)
        path = parts.path
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in request.headers}
        method = request.method.decode("latin-1")
        if path == RELAY_PATH:
            self._upgrade(headers, parts.query)
            return
        if method not in ("GET", "HEAD"):
            self._simple_response(405, b"method not allowed\n")
            return
        if path == "/ping":
            self._simple_response(200, b"", head=method == "HEAD")
        elif path == "/generate_204":
            extra: list[tuple[str, str]] = []
            challenge = headers.get("x-iroh-challenge")
            if challenge is not None and _CHALLENGE_OK.fullmatch(challenge):
                extra.append(("X-Iroh-Response", f"response {challenge}"))
            self._simple_response(204, b"", extra=extra, head=True)
        elif path == "/healthz":
            self._simple_response(200, self.service.healthz(), content_type="application/json",
                                  head=method == "HEAD")
        elif path in ("/", "/index.html"):
            self._simple_response(200, INDEX, content_type="text/html; charset=utf-8", head=method == "HEAD")
        elif path == "/robots.txt":
            self._simple_response(200, ROBOTS, head=method == "HEAD")
        else:
            self._simple_response(404, b"not found\n", head=method == "HEAD")

    def _simple_response(self, status: int, body: bytes, *, content_type: str = "text/plain; charset=utf-8",
                         extra: list[tuple[str, str]] | None = None, head: bool = False, close: bool = False) -> None:
        http, transport = self.http, self.transport
        assert http is not None and transport is not None
        headers = [("Server", "tunnel-relay"), ("Content-Type", content_type)]
        if status != 204:
            headers.append(("Content-Length", str(len(body))))
        if close:
            headers.append(("Connection", "close"))
        headers.extend(extra or [])
        try:
            if http.our_state is h11.SEND_RESPONSE:
                out = http.send(h11.Response(status_code=status, headers=headers)) or b""
                if body and not head and status != 204:
                    out += http.send(h11.Data(data=body)) or b""
                out += http.send(h11.EndOfMessage()) or b""
                transport.write(out)
        except h11.LocalProtocolError:
            transport.close()
            return
        if close or http.our_state is h11.MUST_CLOSE or http.their_state is h11.MUST_CLOSE:
            transport.close()
        elif http.our_state is h11.DONE and http.their_state is h11.DONE:
            http.start_next_cycle()  # _http_events' loop goes on with pipelined requests
            self._set_timeout(HTTP_IDLE_TIMEOUT)

    def _upgrade(self, headers: dict[str, str], query: str) -> None:
        http, transport = self.http, self.transport
        assert http is not None and transport is not None
        if "websocket" not in headers.get("upgrade", "").lower():
            self._simple_response(426, b"relay protocol requires a WebSocket upgrade\n",
                                  extra=[("Upgrade", "websocket")], close=True)
            return
        if headers.get("sec-websocket-version", "") != "13":
            self._simple_response(400, b"unsupported websocket version, only supporting 13\n",
                                  extra=[("Sec-WebSocket-Version", "13")], close=True)
            return
        key = headers.get("sec-websocket-key")
        if not key:
            self._simple_response(400, b"missing Sec-WebSocket-Key\n", close=True)
            return
        offered = headers.get("sec-websocket-protocol", "").split(",")
        chosen = choose_subprotocol(offered)
        if chosen is None:
            message = (f"unsupported relay version: we support {', '.join(SUBPROTOCOLS)} "
                       f"but you only provide {headers.get('sec-websocket-protocol', '')}\n")
            self._simple_response(400, message.encode(), close=True)
            return
        token = None
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            token = auth[7:].strip()
        elif query:
            values = parse_qs(query).get("token")
            token = values[0] if values else None
        response = h11.InformationalResponse(status_code=101, headers=[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", accept_key(key)),
            ("Sec-WebSocket-Protocol", chosen),
        ])
        try:
            transport.write(http.send(response) or b"")
        except h11.LocalProtocolError:
            self._simple_response(400, b"bad upgrade request\n", close=True)
            return
        trailing, _closed = http.trailing_data
        self.http = None
        self._set_timeout(None)
        self.ws = Protocol(Side.SERVER, state=State.OPEN, max_size=MAX_FRAME_SIZE)
        self.conn_id = self.service.register(self, SUBPROTOCOLS[chosen], token)
        self.service.pump()
        if trailing:
            self._ws_data(bytes(trailing))

    # ----------------------------------------------------------------------------------------------- WebSocket

    def _ws_data(self, data: bytes) -> None:
        ws = self.ws
        assert ws is not None
        ws.receive_data(data)
        self._ws_after()

    def _ws_after(self) -> None:
        ws, service, conn_id = self.ws, self.service, self.conn_id
        assert ws is not None and conn_id is not None
        machine = service.machine
        now = service._now()
        for frame in ws.events_received():
            opcode = frame.opcode
            if opcode is Opcode.BINARY:
                if frame.fin:
                    machine.receive_frame(conn_id, frame.data, now)
                else:
                    self._fragments = [frame.data]
            elif opcode is Opcode.CONT and self._fragments:
                self._fragments.append(frame.data)
                if frame.fin:
                    data, self._fragments = b"".join(self._fragments), []
                    machine.receive_frame(conn_id, data, now)
            else:
                # Text, ping and pong messages are ignored (websockets already answered the ping), but their bytes
                # count against the rate limit like any other (issue 18 item 5).
                machine.charge(conn_id, len(frame.data) + 2, now)
        if isinstance(ws.parser_exc, WsProtocolError):
            log.debug("connection %d: websocket error: %s", conn_id, ws.parser_exc)
        self._write_ws()
        service.pump()
        if machine.policy.rate_limit is not None and self.transport is not None and not self.closing:
            pause = machine.read_pause(conn_id, now)
            if pause > 0:
                loop = asyncio.get_running_loop()
                self._rate_hold_until = loop.time() + pause
                self.transport.pause_reading()
                loop.call_later(pause, self._resume_reading)

    def _resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing() and not self.paused:
            self.transport.resume_reading()

    def _write_ws(self) -> None:
        ws, transport = self.ws, self.transport
        assert ws is not None and transport is not None
        chunks = ws.data_to_send()
        if not chunks:
            return
        eof = chunks[-1] == b""
        if eof:
            chunks = chunks[:-1]
        if chunks:
            transport.writelines(chunks)
        if eof:
            transport.close()

    def flush(self) -> None:
        """Move queued relay frames into WebSocket messages while the transport accepts more."""
        if self.paused or self.ws is None or self.conn_id is None or self.transport is None:
            return
        ws = self.ws
        if ws.state is not State.OPEN:
            self.service.machine.take_outgoing(self.conn_id)
            return
        for data in self.service.machine.take_outgoing(self.conn_id):
            ws.send_binary(data)
        self._write_ws()

    def close_websocket(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        was_paused, self.paused = self.paused, False
        self.flush()  # deny reasons, Status and Restarting must reach the client before the close frame
        self.paused = was_paused
        ws = self.ws
        if ws is not None and ws.state is State.OPEN and self.transport is not None:
            ws.send_close(code, reason.encode()[:120].decode("utf-8", "ignore"))
            self._write_ws()
        self._set_timeout(CLOSE_TIMEOUT)
