from __future__ import annotations

import socket
import struct

import pytest
from tests.nostr.conftest import LocalRelay

from tunnel_core.errors import LocalProtocolError
from tunnel_core.websocket import (
    MAX_MESSAGE,
    Message,
    WebSocketClient,
    WebSocketError,
    WsState,
    accept_key,
    parse_ws_url,
)


def test_accept_key_rfc6455_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_parse_urls() -> None:
    u = parse_ws_url("wss://relay.example/path?x=1")
    assert (u.tls, u.host, u.port, u.resource, u.host_header) == (True, "relay.example", 443, "/path?x=1",
                                                                   "relay.example")
    u = parse_ws_url("ws://[::1]:7777")
    assert (u.tls, u.host, u.port, u.host_header) == (False, "::1", 7777, "[::1]:7777")
    for bad in ("http://x", "ws://", "relay.example", "ws://host:99999"):
        with pytest.raises(WebSocketError):
            parse_ws_url(bad)


def test_refused_upgrade_is_an_error() -> None:
    ws = WebSocketClient(parse_ws_url("ws://127.0.0.1:1"), b"k" * 16)
    assert b"Upgrade: websocket" in ws.data_to_send()
    with pytest.raises(WebSocketError, match="HTTP 404"):
        ws.receive_data(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
    ws = WebSocketClient(parse_ws_url("ws://127.0.0.1:1"), b"k" * 16)
    with pytest.raises(WebSocketError, match="Sec-WebSocket-Accept"):
        ws.receive_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Accept: wrong\r\n\r\n")


def _opened() -> WebSocketClient:
    ws = WebSocketClient(parse_ws_url("ws://127.0.0.1:1"), bytes(range(16)))
    ws.data_to_send()
    ws.receive_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: " + accept_key("AAECAwQFBgcICQoLDA0ODw==").encode() + b"\r\n\r\n")
    assert ws.state is WsState.OPEN
    return ws


@pytest.mark.parametrize(("frame", "close_code"), [
    (b"\x82\x7f" + struct.pack(">Q", MAX_MESSAGE + 1), 1009),  # oversized message: PayloadTooBig
    (b"\x88\x04\x03\xe8\xff\xfe", 1007),  # close reason that is not UTF-8: UnicodeDecodeError
    (b"\x88\x02\x03\xed", 1002),  # close code 1005 may not be sent: ProtocolError
], ids=["too-big", "close-reason-not-utf8", "bad-close-code"])
def test_failed_connection_is_closed(frame: bytes, close_code: int) -> None:
    """Regression (fuzz_websocket): after an oversized frame or a close reason that is not UTF-8 the client stayed
    OPEN although websockets had failed the connection, so the pool's next send_text raised websockets'
    InvalidState instead of our own error; now every parser failure closes the client."""
    ws = _opened()
    ws.receive_data(frame)
    assert ws.state is WsState.CLOSED
    out = ws.data_to_send()  # websockets answered with a (masked, client-side) close frame carrying the reason
    assert out[0] == 0x88
    mask, payload = out[2:6], out[6:]
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(payload[:2])) == struct.pack(">H", close_code)
    with pytest.raises(LocalProtocolError):
        ws.send_text("x")
    ws.receive_data(b"\x81\x01x")  # ignored once closed
    assert ws.next_message() is None


def test_against_nostr_sdk_relay(relay: LocalRelay) -> None:
    """Handshake, a REQ and the relay's EOSE through a blocking loopback socket (bounded reads)."""
    ws = WebSocketClient(parse_ws_url(relay.url), bytes(range(16)))
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
        sock.sendall(ws.data_to_send())
        for _ in range(50):
            if ws.state is WsState.OPEN:
                break
            ws.receive_data(sock.recv(65536))
        assert ws.state is WsState.OPEN
        ws.send_text('["REQ","t1",{"kinds":[24243],"limit":1}]')
        sock.sendall(ws.data_to_send())
        msg = None
        for _ in range(50):
            msg = ws.next_message()
            if msg is not None:
                break
            ws.receive_data(sock.recv(65536))
        assert msg == Message('["EOSE","t1"]')
        ws.close()
        sock.sendall(ws.data_to_send())
