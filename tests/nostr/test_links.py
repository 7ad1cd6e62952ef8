"""The runtime-neutral glue between relay byte streams, the sans-IO WebSocket client and the RelayPool."""

from __future__ import annotations

import base64

import pytest

from tunnel_core.nostr.links import RelayLinks
from tunnel_core.nostr.pool import RelayDown, RelayNotice, RelayPool, RelayState, RelayUp
from tunnel_core.websocket import WebSocketError, accept_key

URLS = ["ws://127.0.0.1:1", "ws://127.0.0.1:2"]


def fixed_rng(n: int) -> bytes:
    return b"\x01" * n


def upgrade_response() -> bytes:
    accept = accept_key(base64.b64encode(fixed_rng(16)).decode())
    return (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode()


def text_frame(text: str) -> bytes:
    payload = text.encode()
    assert len(payload) < 126
    return bytes([0x81, len(payload)]) + payload  # server frames are not masked


def test_connect_deliver_lose_and_close() -> None:
    pool = RelayPool(URLS, filters=[{"kinds": [24243]}], subscription_id="sub1")
    links = RelayLinks(pool, fixed_rng)
    assert links.step(0.0).connect == URLS

    link = links.new_link(URLS[0])
    assert link.connecting and link.data_to_send().startswith(b"GET / HTTP/1.1\r\n")
    # The upgrade and the first frame arrive in one read: the frame must reach the pool too.
    link.receive(upgrade_response() + text_frame('["NOTICE","hello"]'), 0.1)
    assert link.open and pool.state(URLS[0]) is RelayState.OPEN
    step = links.step(0.1)
    assert any(isinstance(ev, RelayUp) for ev in step.other)
    assert RelayNotice(URLS[0], "hello") in step.other
    assert link.data_to_send(), "the subscription (REQ) goes out as soon as the relay is up"

    links.lost(URLS[1], 0.2, "refused")
    assert pool.state(URLS[1]) is RelayState.WAITING and pool.get_timer() is not None
    assert any(isinstance(ev, RelayDown) for ev in links.step(0.2).other)

    pool.close()
    step = links.step(0.3)
    assert step.close == [link] and link.closing and link.finished
    assert link.data_to_send(), "CLOSE and the close frame still go out"
    links.lost(URLS[0], 0.4, "closed")
    assert pool.state(URLS[0]) is RelayState.CLOSED and pool.get_timer() is None


def test_refused_upgrade_raises_the_websocket_error() -> None:
    pool = RelayPool(URLS[:1], filters=[{"kinds": [24243]}], subscription_id="sub1")
    links = RelayLinks(pool, fixed_rng)
    links.step(0.0)
    link = links.new_link(URLS[0])
    with pytest.raises(WebSocketError, match="HTTP 404"):
        link.receive(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", 0.1)
    assert pool.state(URLS[0]) is RelayState.CONNECTING


def test_bad_url_is_the_websocket_error() -> None:
    pool = RelayPool(["ws://"], filters=[{"kinds": [1]}], subscription_id="s")
    with pytest.raises(WebSocketError):
        RelayLinks(pool, fixed_rng).new_link("ws://")
