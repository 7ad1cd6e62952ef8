"""NIP-01 relay protocol messages, both directions, as text frames.

Client to relay: ``EVENT``, ``REQ``, ``CLOSE``. Relay to client: ``EVENT``, ``OK``, ``EOSE``, ``CLOSED``, ``NOTICE``
(``AUTH`` and anything newer is reported as :class:`Unknown` so a relay that speaks more NIPs is not an error).
Incoming events are parsed here but verified by the pool, which also deduplicates them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from tunnel_core.nostr.errors import NostrError
from tunnel_core.nostr.event import Event, event_from_obj

#: Relay frames bigger than this are refused before JSON parsing (ours are a few KiB).
MAX_MESSAGE = 512 * 1024


class RelayMessageError(NostrError):
    """A relay sent a frame that is not a well-formed NIP-01 message."""


def _dumps(value: list[Any]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def encode_event(event: Event) -> str:
    return _dumps(["EVENT", event.to_dict()])


def encode_req(subscription_id: str, filters: Sequence[dict[str, Any]]) -> str:
    if not filters:
        raise ValueError("a REQ needs at least one filter")
    return _dumps(["REQ", subscription_id, *filters])


def encode_close(subscription_id: str) -> str:
    return _dumps(["CLOSE", subscription_id])


@attrs.frozen
class EventMessage:
    subscription_id: str
    event: Event


@attrs.frozen
class OkMessage:
    event_id: str
    accepted: bool
    message: str


@attrs.frozen
class EoseMessage:
    subscription_id: str


@attrs.frozen
class ClosedMessage:
    subscription_id: str
    message: str


@attrs.frozen
class NoticeMessage:
    message: str


@attrs.frozen
class Unknown:
    """A well-formed array with a verb we do not handle (AUTH, COUNT, ...)."""

    verb: str


RelayMessage = EventMessage | OkMessage | EoseMessage | ClosedMessage | NoticeMessage | Unknown


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise RelayMessageError("expected a string")
    return value


def parse_relay_message(text: str | bytes) -> RelayMessage:
    """One relay frame; malformed frames raise RelayMessageError (the pool logs and drops them)."""
    if len(text) > MAX_MESSAGE:
        raise RelayMessageError("relay message too large")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise RelayMessageError("relay message is not JSON") from None
    if not isinstance(value, list) or not value or not isinstance(value[0], str):
        raise RelayMessageError("relay message is not a tagged array")
    verb, args = value[0], value[1:]
    if verb == "EVENT":
        if len(args) != 2:
            raise RelayMessageError("EVENT needs a subscription id and an event")
        try:
            event = event_from_obj(args[1])
        except NostrError as exc:
            raise RelayMessageError(str(exc)) from None
        return EventMessage(_str(args[0]), event)
    if verb == "OK":
        if len(args) < 2 or not isinstance(args[1], bool):
            raise RelayMessageError("OK needs an event id and a boolean")
        return OkMessage(_str(args[0]), args[1], _str(args[2]) if len(args) > 2 else "")
    if verb == "EOSE":
        if len(args) < 1:
            raise RelayMessageError("EOSE needs a subscription id")
        return EoseMessage(_str(args[0]))
    if verb == "CLOSED":
        if len(args) < 1:
            raise RelayMessageError("CLOSED needs a subscription id")
        return ClosedMessage(_str(args[0]), _str(args[1]) if len(args) > 1 else "")
    if verb == "NOTICE":
        return NoticeMessage(_str(args[0]) if args else "")
    return Unknown(verb)
