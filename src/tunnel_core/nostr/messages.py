"""The tunnel's signaling messages on Nostr: kind 24242 events tagged ``t`` (transfer id), ``p`` (recipient) and
``type``, whose content carries the request / offer / answer / reject JSON of reference 5.4.

Difference from upstream (docs/nostr.md): upstream puts base64url plaintext JSON in ``content``, readable by every
relay; we encrypt it with NIP-44 v2 to the peer, and the request also carries the client's QUIC certificate
fingerprint (``quic_fingerprint``) so the server can pin the client. ``Channel(plaintext=True)`` speaks upstream's
plaintext format for interoperability with tunnel-rs peers (no client pinning then).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Collection
from typing import Any

import attrs

from tunnel_core.blocks import ManualAnswer, ManualOffer, ManualReject, ManualRequest
from tunnel_core.errors import LocalProtocolError, RemoteProtocolError
from tunnel_core.nostr import nip44
from tunnel_core.nostr.constants import EPHEMERAL_KINDS, KIND
from tunnel_core.nostr.errors import NostrError
from tunnel_core.nostr.event import Event, sign_event
from tunnel_core.nostr.keys import PublicKey, SecretKey
from tunnel_core.wire import dumps_compact

TYPE_REQUEST = "tunnel-request"
TYPE_OFFER = "tunnel-offer"
TYPE_ANSWER = "tunnel-answer"
TYPE_REJECT = "tunnel-reject"


def transfer_id(a: PublicKey, b: PublicKey) -> str:
    """hex(SHA-256(lo ‖ hi)[:16]) over the two lowercase hex keys sorted: the same on both peers (reference 5.2)."""
    lo, hi = sorted((a.hex, b.hex))
    return hashlib.sha256((lo + hi).encode("ascii")).digest()[:16].hex()


def session_id(rng: Callable[[int], bytes]) -> str:
    """8 random bytes as 16 hex characters (reference 5.4)."""
    return rng(8).hex()


@attrs.frozen
class NostrRequest:
    """The client's request plus, beyond upstream, its QUIC certificate fingerprint for mutual pinning."""

    request: ManualRequest
    quic_fingerprint: str | None = None

    def to_json(self) -> bytes:
        body = self.request.to_json()
        if self.quic_fingerprint is None:
            return body
        obj = json.loads(body)
        obj["quic_fingerprint"] = self.quic_fingerprint
        return dumps_compact(obj)

    @classmethod
    def from_json(cls, body: bytes) -> NostrRequest:
        request = ManualRequest.from_json(body)
        value = json.loads(body).get("quic_fingerprint")
        if value is None:
            return cls(request=request)
        if not isinstance(value, str):
            raise NostrError("request carries a malformed quic_fingerprint")
        fingerprint = value.strip().replace(":", "").lower()
        if len(fingerprint) != 64 or any(c not in "0123456789abcdef" for c in fingerprint):
            raise NostrError("request carries a malformed quic_fingerprint")
        return cls(request=request, quic_fingerprint=fingerprint)


Message = NostrRequest | ManualOffer | ManualAnswer | ManualReject

_TYPES: dict[str, type] = {
    TYPE_REQUEST: NostrRequest,
    TYPE_OFFER: ManualOffer,
    TYPE_ANSWER: ManualAnswer,
    TYPE_REJECT: ManualReject,
}


def type_of(message: Message) -> str:
    for name, cls in _TYPES.items():
        if isinstance(message, cls):
            return name
    raise TypeError(f"not a signaling message: {message!r}")


@attrs.frozen
class Received:
    """An accepted incoming message and the event that carried it."""

    type: str
    message: Message
    event: Event


class Channel:
    """One side of the signaling conversation between two fixed keys: seals outgoing messages into signed events
    and opens incoming events, accepting only what the configured peer addressed to us on our transfer id."""

    def __init__(self, secret: SecretKey, peer: PublicKey, *, plaintext: bool = False, kind: int = KIND) -> None:
        if not EPHEMERAL_KINDS[0] <= kind <= EPHEMERAL_KINDS[1]:
            raise LocalProtocolError(f"event kind {kind} is not in the ephemeral range 20000-29999")
        self.kind = kind
        self.secret = secret
        self.public = secret.public_key
        self.peer = peer
        self.plaintext = plaintext
        self.transfer_id = transfer_id(self.public, peer)
        self._conv_key = nip44.conversation_key(secret, peer)

    def subscription_filter(self) -> dict[str, Any]:
        """Reference 5.3: ``{"kinds":[24242],"#t":[transfer_id],"#p":[own pubkey]}``; we also name the author."""
        return {"kinds": [self.kind], "authors": [self.peer.hex], "#t": [self.transfer_id], "#p": [self.public.hex]}

    def seal(self, message: Message, *, created_at: int, rng: Callable[[int], bytes]) -> Event:
        body = message.to_json().decode("utf-8")
        if self.plaintext:
            content = base64.urlsafe_b64encode(body.encode("utf-8")).rstrip(b"=").decode("ascii")
        else:
            content = nip44.encrypt(body, self._conv_key, rng)
        tags = [["t", self.transfer_id], ["p", self.peer.hex], ["type", type_of(message)]]
        return sign_event(self.secret, created_at=created_at, kind=self.kind, tags=tags, content=content, rng=rng)

    def open(self, event: Event, expected: Collection[str]) -> Received:
        """Raise NostrError unless ``event`` (already signature-checked) is a message of an expected type from our
        peer to us; otherwise return the decoded message."""
        if event.kind != self.kind:
            raise NostrError("not a tunnel signaling event")
        if event.pubkey != self.peer.hex:
            raise NostrError("event not authored by the configured peer")
        if event.tag("t") != self.transfer_id:
            raise NostrError("event for another transfer id")
        recipient = event.tag("p")
        if recipient is not None and recipient != self.public.hex:
            raise NostrError("event addressed to another key")
        kind = event.tag("type")
        if kind not in expected or kind not in _TYPES:
            raise NostrError(f"unexpected message type {kind!r}")
        body = self._content(event.content)
        try:
            message = _TYPES[kind].from_json(body)
        except RemoteProtocolError as exc:
            raise NostrError(f"malformed {kind}: {exc}") from None
        except (ValueError, TypeError):
            raise NostrError(f"malformed {kind}") from None
        return Received(type=kind, message=message, event=event)

    def _content(self, content: str) -> bytes:
        if self.plaintext:
            try:
                return base64.urlsafe_b64decode(content + "=" * (-len(content) % 4))
            except (binascii.Error, ValueError):
                raise NostrError("content is not base64url") from None
        return nip44.decrypt(content, self._conv_key).encode("utf-8")
