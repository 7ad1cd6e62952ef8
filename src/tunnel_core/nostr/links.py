"""Relay connections as the relay pool sees them: one sans-IO WebSocket per relay, bytes in and bytes out.

Why in the core: every runtime needs the same glue between its byte streams, ``tunnel_core.websocket`` and the
``RelayPool`` - when a relay counts as connected (the upgrade succeeded), which messages reach the pool, which
pool text goes to which WebSocket, what closing means. Written once here, an adapter keeps only the I/O: open a
stream for every URL in ``PoolStep.connect``, feed what it reads to ``RelayLink.receive``, write
``RelayLink.data_to_send()``, close the stream once a link it was told to close has written its last bytes, and
report a lost stream with ``RelayLinks.lost``.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from tunnel_core.nostr.pool import EventReceived, PoolEvent, RelayPool
from tunnel_core.websocket import ClosedByPeer, Message, WebSocketClient, WsState, WsUrl, parse_ws_url


class RelayLink:
    """One relay's WebSocket client, reporting to the pool. ``key`` is the 16 random bytes of the upgrade."""

    def __init__(self, pool: RelayPool, url: str, key: bytes) -> None:
        self.pool = pool
        self.url = url
        self.target: WsUrl = parse_ws_url(url)  # WebSocketError for a URL the CLI should have refused
        self.ws = WebSocketClient(self.target, key)
        #: Set by RelayLinks.step when the pool asked to close this relay: write what is left, then close.
        self.closing = False

    @property
    def connecting(self) -> bool:
        return self.ws.state is WsState.CONNECTING

    @property
    def open(self) -> bool:
        return self.ws.state is WsState.OPEN

    @property
    def finished(self) -> bool:
        return self.ws.state is WsState.CLOSED

    def receive(self, data: bytes, now: float) -> None:
        """Bytes read from the stream (``b""`` for EOF). Raises WebSocketError when the upgrade fails."""
        was_connecting = self.connecting
        self.ws.receive_data(data)
        if was_connecting and self.open:
            self.pool.connected(self.url, now)
        while (msg := self.ws.next_message()) is not None:
            if isinstance(msg, Message) and isinstance(msg.data, str):
                self.pool.receive_text(self.url, msg.data, now)
            elif isinstance(msg, ClosedByPeer):
                break

    def data_to_send(self) -> bytes:
        return self.ws.data_to_send()


@attrs.frozen
class PoolStep:
    """What the adapter does after ``RelayLinks.step``: open these relays, close these, deliver these events."""

    connect: list[str]
    close: list[RelayLink]
    received: list[EventReceived]
    other: list[PoolEvent]


class RelayLinks:
    """The links of one pool; ``step(now)`` moves the pool's decisions onto the links (texts become frames)."""

    def __init__(self, pool: RelayPool, rng: Callable[[int], bytes]) -> None:
        self.pool = pool
        self.rng = rng
        self.links: dict[str, RelayLink] = {}

    def new_link(self, url: str) -> RelayLink:
        """The adapter is opening a stream for ``url`` (one of ``PoolStep.connect``)."""
        link = RelayLink(self.pool, url, self.rng(16))
        self.links[url] = link
        return link

    def lost(self, url: str, now: float, reason: str) -> None:
        """The stream for ``url`` ended (refused, broken, closed by either side): the pool decides about retrying."""
        self.links.pop(url, None)
        self.pool.disconnected(url, now, reason)

    def step(self, now: float) -> PoolStep:
        connect = self.pool.connections_wanted(now)
        for url, text in self.pool.texts_to_send():
            link = self.links.get(url)
            if link is not None and link.open:
                link.ws.send_text(text)
        close = []
        for url in self.pool.connections_to_close():
            link = self.links.get(url)
            if link is not None:
                link.closing = True
                link.ws.close()
                close.append(link)
        received: list[EventReceived] = []
        other: list[PoolEvent] = []
        while (ev := self.pool.next_event()) is not None:
            if isinstance(ev, EventReceived):
                received.append(ev)
            else:
                other.append(ev)
        return PoolStep(connect, close, received, other)


__all__ = ["PoolStep", "RelayLink", "RelayLinks"]
