"""A sans-IO WebSocket client: the HTTP/1.1 upgrade with h11, then frames with websockets' sans-IO ``Protocol``.

Why this split: h11 is already the project's HTTP layer, and websockets' frame layer masks about 16x faster than
wsproto (python-stack.md 4). The adapter owns the TCP (or TLS) stream: it writes ``data_to_send()`` and feeds what
it reads to ``receive_data``; complete text/binary messages come out of ``next_message``.
"""

from __future__ import annotations

import base64
import enum
import hashlib
from collections import deque
from urllib.parse import urlsplit

import attrs
import h11
from websockets.frames import Opcode
from websockets.protocol import Protocol, Side, State

from tunnel_core.errors import LocalProtocolError, RemoteProtocolError

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_MESSAGE = 1 << 20


class WebSocketError(RemoteProtocolError):
    """The server refused the upgrade or broke the WebSocket protocol."""


@attrs.frozen
class WsUrl:
    """A ``ws://`` or ``wss://`` URL split into what a connection needs."""

    tls: bool
    host: str
    port: int
    resource: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_ws_url(url: str) -> WsUrl:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise WebSocketError(f"Invalid relay URL '{url}'") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise WebSocketError(f"Invalid relay URL '{url}'. Expected ws://host[:port] or wss://host[:port]")
    tls = parts.scheme == "wss"
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    return WsUrl(tls=tls, host=parts.hostname, port=port or (443 if tls else 80), resource=resource)


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


class WsState(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"


@attrs.frozen
class Message:
    """One complete message (text as str, binary as bytes)."""

    data: str | bytes


@attrs.frozen
class ClosedByPeer:
    code: int | None
    reason: str


class WebSocketClient:
    """One client connection. ``key`` is 16 random bytes from the caller (the core owns no randomness)."""

    def __init__(self, url: WsUrl, key: bytes, *, user_agent: str = "tunnel") -> None:
        if len(key) != 16:
            raise LocalProtocolError("the Sec-WebSocket-Key needs 16 random bytes")
        self.url = url
        self.state = WsState.CONNECTING
        self._key = base64.b64encode(key).decode("ascii")
        self._http = h11.Connection(h11.CLIENT)
        self._ws: Protocol | None = None
        self._out = bytearray()
        self._messages: deque[Message | ClosedByPeer] = deque()
        self._fragments: list[bytes] = []
        self._fragment_op: Opcode | None = None
        request = h11.Request(
            method="GET",
            target=url.resource,
            headers=[
                ("Host", url.host_header),
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", self._key),
                ("Sec-WebSocket-Version", "13"),
                ("User-Agent", user_agent),
            ],
        )
        self._out += self._http.send(request)

    # ------------------------------------------------------------------------------------------ inputs

    def receive_data(self, data: bytes) -> None:
        """Bytes from the stream; ``b""`` means EOF."""
        if self.state is WsState.CLOSED:
            return
        if self.state is WsState.CONNECTING:
            self._receive_handshake(data)
            return
        assert self._ws is not None
        if data:
            self._ws.receive_data(data)
        else:
            self._ws.receive_eof()
        self._pump()

    def send_text(self, text: str) -> None:
        if self.state is not WsState.OPEN or self._ws is None:
            raise LocalProtocolError("WebSocket is not open")
        self._ws.send_text(text.encode("utf-8"))

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self.state is WsState.OPEN and self._ws is not None:
            self._ws.send_close(code, reason)
        self.state = WsState.CLOSED

    # ------------------------------------------------------------------------------------------ outputs

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        if self._ws is not None:
            for chunk in self._ws.data_to_send():
                out += chunk
        return out

    def next_message(self) -> Message | ClosedByPeer | None:
        return self._messages.popleft() if self._messages else None

    # ------------------------------------------------------------------------------------------ internals

    def _receive_handshake(self, data: bytes) -> None:
        self._http.receive_data(data)
        while True:
            try:
                event = self._http.next_event()
            except h11.RemoteProtocolError as exc:
                self.state = WsState.CLOSED
                raise WebSocketError(f"WebSocket handshake failed: {exc}") from None
            if event is h11.NEED_DATA:
                if not data:
                    self.state = WsState.CLOSED
                    raise WebSocketError("WebSocket handshake failed: connection closed")
                return
            if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                self._accept(event)
                return
            if isinstance(event, h11.Response | h11.InformationalResponse):
                self.state = WsState.CLOSED
                raise WebSocketError(f"WebSocket handshake failed: HTTP {event.status_code}")
            if isinstance(event, h11.ConnectionClosed):
                self.state = WsState.CLOSED
                raise WebSocketError("WebSocket handshake failed: connection closed")

    def _accept(self, event: h11.InformationalResponse) -> None:
        headers = {name.lower(): value for name, value in event.headers}
        if headers.get(b"upgrade", b"").lower() != b"websocket":
            self.state = WsState.CLOSED
            raise WebSocketError("WebSocket handshake failed: no Upgrade: websocket")
        if headers.get(b"sec-websocket-accept", b"").decode("ascii", "replace") != accept_key(self._key):
            self.state = WsState.CLOSED
            raise WebSocketError("WebSocket handshake failed: bad Sec-WebSocket-Accept")
        trailing, _closed = self._http.trailing_data
        self._ws = Protocol(Side.CLIENT, state=State.OPEN, max_size=MAX_MESSAGE)
        self.state = WsState.OPEN
        if trailing:
            self._ws.receive_data(bytes(trailing))
            self._pump()

    def _pump(self) -> None:
        assert self._ws is not None
        for frame in self._ws.events_received():
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                if frame.fin:
                    self._deliver(frame.opcode, bytes(frame.data))
                else:
                    self._fragment_op, self._fragments = frame.opcode, [bytes(frame.data)]
            elif frame.opcode is Opcode.CONT and self._fragment_op is not None:
                self._fragments.append(bytes(frame.data))
                if frame.fin:
                    op, data = self._fragment_op, b"".join(self._fragments)
                    self._fragment_op, self._fragments = None, []
                    self._deliver(op, data)
            elif frame.opcode is Opcode.CLOSE:
                self.state = WsState.CLOSED
                self._messages.append(ClosedByPeer(self._ws.close_code, self._ws.close_reason or ""))
        if self._ws.state is State.CLOSED and self.state is not WsState.CLOSED:
            self.state = WsState.CLOSED
            self._messages.append(ClosedByPeer(self._ws.close_code, self._ws.close_reason or ""))
        if self._ws.parser_exc is not None:
            # Any parser failure (a protocol error, but also an oversized message or a close reason that is not
            # UTF-8) has failed the connection inside websockets, which refuses to send from then on: the client
            # must stop reporting OPEN, or the next send_text raises websockets' InvalidState.
            self.state = WsState.CLOSED

    def _deliver(self, op: Opcode, data: bytes) -> None:
        if op is Opcode.TEXT:
            try:
                self._messages.append(Message(data.decode("utf-8")))
            except UnicodeDecodeError:
                self._messages.append(ClosedByPeer(1007, "invalid UTF-8"))
                self.state = WsState.CLOSED
        else:
            self._messages.append(Message(data))
