"""A sans-IO pool of Nostr relay connections: which relays to (re)connect and when, what to send on each, and
one deduplicated stream of verified incoming events.

Why a machine: tolerating dead relays, reconnecting with backoff, replaying our subscription and recent publications
to a relay that comes back, and collapsing the copy of an event that every relay delivers are decisions, not I/O;
writing them once here keeps asyncio, trio and gevent identical. The adapter only opens WebSockets when asked
(``connections_wanted``), reports ``connected`` / ``receive_text`` / ``disconnected``, writes ``texts_to_send``
and calls ``handle_timer`` at ``get_timer``.
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any

import attrs

from tunnel_core.errors import LocalProtocolError
from tunnel_core.nostr.errors import NostrError
from tunnel_core.nostr.event import Event
from tunnel_core.nostr.relay import (
    ClosedMessage,
    EventMessage,
    NoticeMessage,
    OkMessage,
    encode_close,
    encode_event,
    encode_req,
    parse_relay_message,
)


@attrs.frozen
class Backoff:
    """How soon a relay is tried again after ``n`` failures in a row: ``initial * factor**n`` capped at ``maximum``.

    Why counted from the start of the failed attempt (not its end), and why a cap of 10 s: an attempt that fails
    because nothing answers (the network is cut) already took the adapter's connect timeout (10 s), so the next one
    starts at once - the relay heard nothing, there is nothing to spare it - and a path that heals is noticed within
    the SYN retransmissions of one attempt (a few seconds), not after a long backoff. A relay that does answer (it
    refuses, or accepts and closes) hears at most one attempt per ``maximum`` seconds once backed off. A connection
    that stayed open ``stable_after`` seconds was a success: its loss starts the backoff again from ``initial``,
    counted from the loss; a connection that closed sooner counts as one more failure (a relay that accepts and
    drops at once is not hammered either)."""

    initial: float = 1.0
    maximum: float = 10.0
    factor: float = 2.0
    stable_after: float = 30.0

    def delay(self, attempt: int) -> float:
        return min(self.maximum, self.initial * self.factor ** min(attempt, 64))


# ---------------------------------------------------------------------------------------------- events


@attrs.frozen
class EventReceived:
    """A verified event, delivered once however many relays carried it."""

    event: Event
    relay: str


@attrs.frozen
class RelayUp:
    """A relay (re)connected at ``at`` (the pool's clock): it has our subscription and the publications still
    active; a flow that published something whose content ages (a request's timestamp) may publish it afresh."""

    relay: str
    at: float


@attrs.frozen
class RelayDown:
    relay: str
    reason: str
    retry_at: float | None


@attrs.frozen
class PublishResult:
    """A relay's OK for one of our events (``accepted`` False carries the relay's reason)."""

    relay: str
    event_id: str
    accepted: bool
    message: str


@attrs.frozen
class RelayNotice:
    relay: str
    message: str


@attrs.frozen
class Dropped:
    """A frame or event from a relay was refused (malformed, bad signature): worth a debug line, nothing more."""

    relay: str
    reason: str


PoolEvent = EventReceived | RelayUp | RelayDown | PublishResult | RelayNotice | Dropped


class RelayState(enum.Enum):
    IDLE = "idle"  # waiting to be (re)connected
    CONNECTING = "connecting"
    OPEN = "open"
    WAITING = "waiting"  # backing off after a failure
    CLOSED = "closed"


@attrs.define
class _Relay:
    url: str
    state: RelayState = RelayState.IDLE
    attempt: int = 0
    retry_at: float | None = None
    ever_tried: bool = False
    started_at: float | None = None  # when the current (or last) connection attempt began
    opened_at: float | None = None  # when the current connection opened (None: not open)
    outbox: list[str] = attrs.Factory(list)


class RelayPool:
    """Several relays, one subscription, deduplicated verified events."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        filters: Sequence[dict[str, Any]],
        subscription_id: str,
        backoff: Backoff | None = None,
        publish_ttl: float = 60.0,
        seen_limit: int = 4096,
    ) -> None:
        if not urls:
            raise LocalProtocolError("a relay pool needs at least one relay")
        self._relays: dict[str, _Relay] = {}
        for url in urls:
            self._relays.setdefault(url, _Relay(url))
        self._filters = [dict(f) for f in filters]
        self._sub_id = subscription_id
        self._backoff = backoff or Backoff()
        self._publish_ttl = publish_ttl
        self._active: OrderedDict[str, tuple[Event, float]] = OrderedDict()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._seen_limit = seen_limit
        self._events: deque[PoolEvent] = deque()
        self._closing = False
        self._to_close: list[str] = []

    # ------------------------------------------------------------------------------------- queries

    @property
    def urls(self) -> list[str]:
        return list(self._relays)

    def state(self, url: str) -> RelayState:
        return self._relays[url].state

    @property
    def open_count(self) -> int:
        return sum(1 for r in self._relays.values() if r.state is RelayState.OPEN)

    @property
    def settled(self) -> bool:
        """One relay is up, or every relay has been tried at least once: the caller may stop waiting."""
        if self.open_count:
            return True
        return all(r.ever_tried and r.state is not RelayState.CONNECTING for r in self._relays.values())

    # ------------------------------------------------------------------------------------- adapter side

    def connections_wanted(self, now: float) -> list[str]:
        """Relays to open now; each moves to CONNECTING until ``connected`` or ``disconnected`` is reported."""
        if self._closing:
            return []
        out = []
        for relay in self._relays.values():
            due = relay.state is RelayState.IDLE or (
                relay.state is RelayState.WAITING and relay.retry_at is not None and relay.retry_at <= now
            )
            if due:
                relay.state = RelayState.CONNECTING
                relay.ever_tried = True
                relay.retry_at = None
                relay.started_at = now
                out.append(relay.url)
        return out

    def connected(self, url: str, now: float) -> None:
        relay = self._relay(url)
        if self._closing:
            return
        relay.state = RelayState.OPEN
        relay.opened_at = now
        relay.outbox.append(encode_req(self._sub_id, self._filters))
        self._expire(now)
        for event, _expires in self._active.values():
            relay.outbox.append(encode_event(event))
        self._events.append(RelayUp(url, now))

    def disconnected(self, url: str, now: float, reason: str = "") -> None:
        relay = self._relay(url)
        relay.outbox.clear()
        if self._closing or relay.state is RelayState.CLOSED:
            relay.state = RelayState.CLOSED
            return
        relay.ever_tried = True
        since = relay.started_at if relay.started_at is not None else now
        if relay.opened_at is not None:  # an open connection was lost: count from the loss
            if now - relay.opened_at >= self._backoff.stable_after:
                relay.attempt = 0
            since = now
        relay.opened_at = None
        relay.retry_at = max(now, since + self._backoff.delay(relay.attempt))
        relay.attempt += 1
        relay.state = RelayState.WAITING
        self._events.append(RelayDown(url, reason, relay.retry_at))

    def receive_text(self, url: str, text: str, now: float) -> None:
        relay = self._relay(url)
        if relay.state is not RelayState.OPEN:
            return
        try:
            message = parse_relay_message(text)
        except NostrError as exc:
            self._events.append(Dropped(url, str(exc)))
            return
        if isinstance(message, EventMessage):
            if message.subscription_id != self._sub_id:
                return
            event = message.event
            if event.id in self._seen:
                return
            try:
                event.verify()
            except NostrError as exc:
                self._events.append(Dropped(url, str(exc)))
                return
            self._remember(event.id)
            self._events.append(EventReceived(event, url))
        elif isinstance(message, OkMessage):
            self._events.append(PublishResult(url, message.event_id, message.accepted, message.message))
        elif isinstance(message, NoticeMessage):
            self._events.append(RelayNotice(url, message.message))
        elif isinstance(message, ClosedMessage) and message.subscription_id == self._sub_id:
            # The relay ended our subscription (auth required, rate limit...): treat it like a lost connection.
            self._events.append(RelayNotice(url, f"subscription closed: {message.message}"))

    def texts_to_send(self) -> list[tuple[str, str]]:
        out = []
        for relay in self._relays.values():
            if relay.state is RelayState.OPEN and relay.outbox:
                out.extend((relay.url, text) for text in relay.outbox)
                relay.outbox.clear()
        return out

    def connections_to_close(self) -> list[str]:
        out, self._to_close = self._to_close, []
        return out

    def get_timer(self) -> float | None:
        if self._closing:
            return None
        times = [r.retry_at for r in self._relays.values() if r.state is RelayState.WAITING and r.retry_at is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Nothing to do beyond making due relays visible through ``connections_wanted``."""
        self._expire(now)

    def next_event(self) -> PoolEvent | None:
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------------------------- flow side

    def publish(self, event: Event, now: float) -> int:
        """Send ``event`` to every open relay and to relays that (re)connect within ``publish_ttl``; returns how many
        relays it went to right away."""
        self._active[event.id] = (event, now + self._publish_ttl)
        self._expire(now)
        text = encode_event(event)
        n = 0
        for relay in self._relays.values():
            if relay.state is RelayState.OPEN:
                relay.outbox.append(text)
                n += 1
        return n

    def forget(self, event_id: str) -> None:
        """Stop replaying an event to reconnecting relays (its conversation is over)."""
        self._active.pop(event_id, None)

    def close(self) -> None:
        """Unsubscribe politely and ask the adapter to close every connection; no reconnects afterwards."""
        if self._closing:
            return
        self._closing = True
        for relay in self._relays.values():
            if relay.state is RelayState.OPEN:
                relay.outbox.append(encode_close(self._sub_id))
                self._to_close.append(relay.url)
            elif relay.state is RelayState.CONNECTING:
                self._to_close.append(relay.url)
            relay.retry_at = None

    @property
    def closing(self) -> bool:
        return self._closing

    # ------------------------------------------------------------------------------------- internals

    def _relay(self, url: str) -> _Relay:
        relay = self._relays.get(url)
        if relay is None:
            raise LocalProtocolError(f"unknown relay {url!r}")
        return relay

    def _remember(self, event_id: str) -> None:
        self._seen[event_id] = None
        while len(self._seen) > self._seen_limit:
            self._seen.popitem(last=False)

    def _expire(self, now: float) -> None:
        for eid in [eid for eid, (_e, expires) in self._active.items() if expires <= now]:
            del self._active[eid]
