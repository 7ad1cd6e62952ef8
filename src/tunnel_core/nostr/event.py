"""NIP-01 events: canonical serialization, id, BIP-340 signature, and strict parsing of what relays hand us.

Why strict: every field of an incoming event comes from a relay we do not trust. An event is accepted only when its
id is the SHA-256 of its own canonical serialization and its Schnorr signature verifies under its author key, so a
relay can drop or replay events but never forge or alter one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import coincurve

from tunnel_core.nostr.errors import NostrError
from tunnel_core.nostr.keys import PublicKey, SecretKey

Tags = tuple[tuple[str, ...], ...]

#: Generous upper bounds so a hostile relay cannot make us hash or verify megabytes.
MAX_CONTENT = 256 * 1024
MAX_TAGS = 64


def _tags(value: Sequence[Sequence[str]]) -> Tags:
    return tuple(tuple(t) for t in value)


def serialize(pubkey_hex: str, created_at: int, kind: int, tags: Tags, content: str) -> bytes:
    """The NIP-01 canonical form ``[0,pubkey,created_at,kind,tags,content]``: no whitespace, UTF-8, and only the
    escapes NIP-01 lists (json.dumps with ensure_ascii=False matches them)."""
    text = json.dumps(
        [0, pubkey_hex, created_at, kind, [list(t) for t in tags], content],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return text.encode("utf-8")


def event_id(pubkey_hex: str, created_at: int, kind: int, tags: Tags, content: str) -> str:
    return hashlib.sha256(serialize(pubkey_hex, created_at, kind, tags, content)).hexdigest()


@attrs.frozen
class Event:
    """A signed Nostr event (all fields as on the wire: hex strings, unix seconds)."""

    id: str
    pubkey: str
    created_at: int
    kind: int
    tags: Tags = attrs.field(converter=_tags)
    content: str
    sig: str

    def tag(self, name: str) -> str | None:
        """The value of the first tag called ``name`` (NIP-01 single-letter and custom tags alike)."""
        for t in self.tags:
            if len(t) >= 2 and t[0] == name:
                return t[1]
        return None

    @property
    def author(self) -> PublicKey:
        return PublicKey(bytes.fromhex(self.pubkey))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pubkey": self.pubkey,
            "created_at": self.created_at,
            "kind": self.kind,
            "tags": [list(t) for t in self.tags],
            "content": self.content,
            "sig": self.sig,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    def verify(self) -> None:
        """Raise NostrError unless the id matches the content and the signature matches the id and author."""
        expected = event_id(self.pubkey, self.created_at, self.kind, self.tags, self.content)
        if expected != self.id:
            raise NostrError("event id does not match its content")
        try:
            key = coincurve.PublicKeyXOnly(bytes.fromhex(self.pubkey))
            ok = key.verify(bytes.fromhex(self.sig), bytes.fromhex(self.id))
        except ValueError:
            ok = False
        if not ok:
            raise NostrError("invalid event signature")


def sign_event(
    secret: SecretKey,
    *,
    created_at: int,
    kind: int,
    tags: Sequence[Sequence[str]],
    content: str,
    rng: Callable[[int], bytes],
) -> Event:
    """Build and sign an event. BIP-340 auxiliary randomness comes from ``rng`` (the core owns no randomness)."""
    pubkey = secret.public_key.hex
    tag_tuple = _tags(tags)
    eid = event_id(pubkey, created_at, kind, tag_tuple, content)
    sig = coincurve.PrivateKey(secret.raw).sign_schnorr(bytes.fromhex(eid), aux_randomness=rng(32))
    return Event(id=eid, pubkey=pubkey, created_at=created_at, kind=kind, tags=tag_tuple, content=content,
                 sig=sig.hex())


def _is_hex(value: object, length: int) -> bool:
    if not isinstance(value, str) or len(value) != length:
        return False
    return all(c in "0123456789abcdef" for c in value)


def _is_uint(value: object, bits: int) -> bool:
    return type(value) is int and 0 <= value < (1 << bits)


def event_from_obj(obj: object) -> Event:
    """Parse (not yet verify) an event object from a relay message; shape errors raise NostrError."""
    if not isinstance(obj, dict):
        raise NostrError("event is not a JSON object")
    if not (_is_hex(obj.get("id"), 64) and _is_hex(obj.get("pubkey"), 64) and _is_hex(obj.get("sig"), 128)):
        raise NostrError("event id, pubkey or sig malformed")
    created_at, kind = obj.get("created_at"), obj.get("kind")
    if not _is_uint(created_at, 63) or not _is_uint(kind, 16):
        raise NostrError("event created_at or kind malformed")
    content = obj.get("content")
    if not isinstance(content, str) or len(content) > MAX_CONTENT:
        raise NostrError("event content malformed")
    tags = obj.get("tags")
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        raise NostrError("event tags malformed")
    for t in tags:
        if not isinstance(t, list) or not all(isinstance(x, str) for x in t):
            raise NostrError("event tags malformed")
    return Event(id=obj["id"], pubkey=obj["pubkey"], created_at=created_at, kind=kind, tags=tags,
                 content=content, sig=obj["sig"])


def parse_event(text: str | bytes) -> Event:
    """An event from its JSON text, verified (id and signature)."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise NostrError("event is not valid JSON") from None
    event = event_from_obj(obj)
    event.verify()
    return event
