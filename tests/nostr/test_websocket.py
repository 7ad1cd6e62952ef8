from __future__ import annotations

import socket

import pytest
from tests.nostr.conftest import LocalRelay

from tunnel_core.websocket import (
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
