"""Manual-mode signaling: the JSON messages and the copy/paste TRS1 blocks that carry them (reference 4.2-4.4, 5.4).

A block crosses a human clipboard, a chat window or a terminal, so the reader forgives what those do to text
(CRLF, indentation, blank lines) but nothing that changes meaning: the payload is CRC-checked and version-checked,
and a block of the wrong kind is refused outright rather than failing later with a confusing "missing field".

Byte layout and error wording follow the Rust peer exactly, so blocks are interchangeable between the two tools.
"""

from __future__ import annotations

import base64
import re
import zlib
from collections.abc import Callable, Iterable
from typing import Any, Literal

import attrs

from tunnel_core.errors import LocalProtocolError, RemoteProtocolError
from tunnel_core.peertext import quote_peer
from tunnel_core.wire import (
    dumps_compact,
    field_opt_str,
    field_str,
    field_str_list,
    field_uint,
    loads_json_object,
    truncate_reason,
)

__all__ = [
    "LINE_WIDTH",
    "MANUAL_SIGNAL_VERSION",
    "MAX_BLOCK_PAYLOAD",
    "BlockError",
    "BlockReader",
    "ManualAnswer",
    "ManualOffer",
    "ManualReject",
    "ManualRequest",
    "begin_marker",
    "decode_answer",
    "decode_offer",
    "decode_payload",
    "encode_block",
    "encode_payload",
    "end_marker",
]


class BlockError(RemoteProtocolError):
    """A pasted block or a signaling message is malformed, tampered with, or of the wrong kind/version."""


MANUAL_SIGNAL_VERSION = 1
#: Payload lines are wrapped at this width so blocks survive terminals and mail clients.
LINE_WIDTH = 76
#: A generous cap on a pasted payload (real ones are a few KiB) so a runaway paste cannot exhaust memory.
MAX_BLOCK_PAYLOAD = 1 << 20

Kind = Literal["OFFER", "ANSWER"]
_KINDS: tuple[Kind, ...] = ("OFFER", "ANSWER")
_PREFIX = "TRS"
_U16_MAX = 0xFFFF
_U32_MAX = 0xFFFFFFFF
_U64_MAX = 0xFFFFFFFFFFFFFFFF

#: Rust's str::trim removes Unicode White_Space; Python's str.strip() also strips \x1c-\x1f, so spell it out.
_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(chr(c) for c in range(0x2000, 0x200B)) + (
    "\u2028\u2029\u202f\u205f\u3000"
)
_RUST_U16 = re.compile(r"\+?[0-9]+")
_RUST_HEX_U32 = re.compile(r"\+?[0-9a-fA-F]+")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")

_JSON_FAILED = "Manual payload JSON parse failed"


def _trim(text: str) -> str:
    return text.strip(_WHITESPACE)


def begin_marker(kind: Kind) -> str:
    return f"-----BEGIN TUNNEL-RS MANUAL {kind}-----"


def end_marker(kind: Kind) -> str:
    return f"-----END TUNNEL-RS MANUAL {kind}-----"


def _other(kind: Kind) -> Kind:
    return "ANSWER" if kind == "OFFER" else "OFFER"


def _check_kind(kind: str) -> Kind:
    if kind not in _KINDS:
        raise LocalProtocolError(f"block kind must be OFFER or ANSWER, got {kind!r}")
    return kind  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------------------
# JSON messages


def _json_fail() -> BlockError:
    return BlockError(_JSON_FAILED)


def _parse(body: bytes) -> tuple[dict[str, Any], int]:
    obj = loads_json_object(body, _json_fail)
    return obj, field_uint(obj, "version", _U16_MAX, _json_fail)


def _check_struct_version(version: int) -> None:
    # Checked after the whole struct parsed, as upstream does: a type error wins over a version mismatch.
    if version != MANUAL_SIGNAL_VERSION:
        raise BlockError(
            f"Manual signaling version mismatch (expected {MANUAL_SIGNAL_VERSION}, got {version})"
        )


def _check_u16(version: int) -> None:
    if type(version) is not int or not 0 <= version <= _U16_MAX:
        raise LocalProtocolError(f"signaling version must be a u16, got {version!r}")


def _opt(obj: dict[str, Any], name: str, value: object) -> None:
    if value is not None:
        obj[name] = value


#: At most this many forwards in one offer: the block must stay pasteable.
MAX_FORWARDS = 64


def _opt_str_list(obj: dict[str, Any], name: str) -> tuple[str, ...]:
    """An optional list of strings (our extensions); absent or null mean empty."""
    if obj.get(name) is None:
        return ()
    items = field_str_list(obj, name, _json_fail)
    if len(items) > MAX_FORWARDS:
        raise _json_fail()
    return items


@attrs.frozen
class ManualOffer:
    """Manual mode: the client's ICE credentials, candidates and requested source. Nostr mode: the server's, with
    its certificate fingerprint and the echoed session id."""

    ice_ufrag: str
    ice_pwd: str
    candidates: tuple[str, ...] = attrs.field(converter=tuple)
    quic_fingerprint: str = ""
    session_id: str | None = None
    source: str | None = None
    version: int = MANUAL_SIGNAL_VERSION
    #: Our extension (docs/forwards.md): the sources of forwards 1.. (``source`` is forward 0). Omitted when
    #: empty, so a one-forward offer is upstream's bytes.
    extra_sources: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    #: Nostr mode, our extension: the server's verdict per forward (as ManualAnswer's in manual mode).
    forward_verdicts: tuple[str, ...] | None = attrs.field(
        default=None, converter=lambda v: None if v is None else tuple(v)
    )

    def to_json(self) -> bytes:
        _check_u16(self.version)
        obj: dict[str, Any] = {
            "version": self.version,
            "ice_ufrag": self.ice_ufrag,
            "ice_pwd": self.ice_pwd,
            "candidates": list(self.candidates),
            "quic_fingerprint": self.quic_fingerprint,
        }
        _opt(obj, "session_id", self.session_id)
        _opt(obj, "source", self.source)
        if self.extra_sources:
            obj["extra_sources"] = list(self.extra_sources)
        if self.forward_verdicts is not None:
            obj["forward_verdicts"] = list(self.forward_verdicts)
        return dumps_compact(obj)

    @classmethod
    def from_json(cls, body: bytes) -> ManualOffer:
        obj, version = _parse(body)
        offer = cls(
            ice_ufrag=field_str(obj, "ice_ufrag", _json_fail),
            ice_pwd=field_str(obj, "ice_pwd", _json_fail),
            candidates=field_str_list(obj, "candidates", _json_fail),
            quic_fingerprint=field_str(obj, "quic_fingerprint", _json_fail),
            session_id=field_opt_str(obj, "session_id", _json_fail),
            source=field_opt_str(obj, "source", _json_fail),
            version=version,
            extra_sources=_opt_str_list(obj, "extra_sources"),
            forward_verdicts=_opt_str_list(obj, "forward_verdicts") if "forward_verdicts" in obj else None,
        )
        _check_struct_version(version)
        return offer


@attrs.frozen
class ManualAnswer:
    """Manual mode: the server's ICE credentials, candidates and QUIC certificate fingerprint. Nostr mode: the
    client's, with the echoed session id."""

    ice_ufrag: str
    ice_pwd: str
    candidates: tuple[str, ...] = attrs.field(converter=tuple)
    session_id: str | None = None
    quic_fingerprint: str | None = None
    version: int = MANUAL_SIGNAL_VERSION
    #: Our extension (docs/forwards.md): the server's verdict on every forward the offer asked for, in order
    #: ("" accepted, else the refusal reason). Present only in answer to ``extra_sources``: it is how the client
    #: learns that the server carries several forwards at all.
    forward_verdicts: tuple[str, ...] | None = attrs.field(
        default=None, converter=lambda v: None if v is None else tuple(v)
    )

    def to_json(self) -> bytes:
        _check_u16(self.version)
        obj: dict[str, Any] = {
            "version": self.version,
            "ice_ufrag": self.ice_ufrag,
            "ice_pwd": self.ice_pwd,
            "candidates": list(self.candidates),
        }
        _opt(obj, "session_id", self.session_id)
        _opt(obj, "quic_fingerprint", self.quic_fingerprint)
        if self.forward_verdicts is not None:
            obj["forward_verdicts"] = list(self.forward_verdicts)
        return dumps_compact(obj)

    @classmethod
    def from_json(cls, body: bytes) -> ManualAnswer:
        obj, version = _parse(body)
        answer = cls(
            ice_ufrag=field_str(obj, "ice_ufrag", _json_fail),
            ice_pwd=field_str(obj, "ice_pwd", _json_fail),
            candidates=field_str_list(obj, "candidates", _json_fail),
            session_id=field_opt_str(obj, "session_id", _json_fail),
            quic_fingerprint=field_opt_str(obj, "quic_fingerprint", _json_fail),
            version=version,
            forward_verdicts=_opt_str_list(obj, "forward_verdicts") if "forward_verdicts" in obj else None,
        )
        _check_struct_version(version)
        return answer


@attrs.frozen
class ManualRequest:
    """Nostr mode: the client's opening message (its ICE side, a fresh session id, the time and the source)."""

    ice_ufrag: str
    ice_pwd: str
    candidates: tuple[str, ...] = attrs.field(converter=tuple)
    session_id: str
    timestamp: int
    source: str | None = None
    version: int = MANUAL_SIGNAL_VERSION
    #: Our extension, as ManualOffer's in manual mode: the sources of forwards 1.. (docs/forwards.md).
    extra_sources: tuple[str, ...] = attrs.field(default=(), converter=tuple)

    def to_json(self) -> bytes:
        _check_u16(self.version)
        if type(self.timestamp) is not int or not 0 <= self.timestamp <= _U64_MAX:
            raise LocalProtocolError(f"timestamp must be a u64, got {self.timestamp!r}")
        obj: dict[str, Any] = {
            "version": self.version,
            "ice_ufrag": self.ice_ufrag,
            "ice_pwd": self.ice_pwd,
            "candidates": list(self.candidates),
            "session_id": self.session_id,
            "timestamp": self.timestamp,
        }
        _opt(obj, "source", self.source)
        if self.extra_sources:
            obj["extra_sources"] = list(self.extra_sources)
        return dumps_compact(obj)

    @classmethod
    def from_json(cls, body: bytes) -> ManualRequest:
        obj, version = _parse(body)
        request = cls(
            ice_ufrag=field_str(obj, "ice_ufrag", _json_fail),
            ice_pwd=field_str(obj, "ice_pwd", _json_fail),
            candidates=field_str_list(obj, "candidates", _json_fail),
            session_id=field_str(obj, "session_id", _json_fail),
            timestamp=field_uint(obj, "timestamp", _U64_MAX, _json_fail),
            source=field_opt_str(obj, "source", _json_fail),
            version=version,
            extra_sources=_opt_str_list(obj, "extra_sources"),
        )
        _check_struct_version(version)
        return request


@attrs.frozen
class ManualReject:
    """Nostr mode: the server turns a request down; ``reason`` is capped at 512 bytes like every rejection."""

    session_id: str
    reason: str = attrs.field(converter=truncate_reason)
    version: int = MANUAL_SIGNAL_VERSION

    def to_json(self) -> bytes:
        _check_u16(self.version)
        return dumps_compact({"version": self.version, "session_id": self.session_id, "reason": self.reason})

    @classmethod
    def from_json(cls, body: bytes) -> ManualReject:
        obj, version = _parse(body)
        reject = cls(
            session_id=field_str(obj, "session_id", _json_fail),
            reason=field_str(obj, "reason", _json_fail),
            version=version,
        )
        _check_struct_version(version)
        return reject


# --------------------------------------------------------------------------------------------------------------
# TRS1 payload


def encode_payload(json_bytes: bytes) -> str:
    """``TRS1:<crc32 of the JSON, 8 lowercase hex>:<base64url without padding of the JSON>``."""
    crc = zlib.crc32(json_bytes) & _U32_MAX
    body = base64.urlsafe_b64encode(json_bytes).rstrip(b"=").decode("ascii")
    return f"{_PREFIX}{MANUAL_SIGNAL_VERSION}:{crc:08x}:{body}"


def _rust_debug(text: str) -> str:
    """Render a string as Rust's ``{:?}`` does, so error messages match the upstream tool's."""
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\0":
            out.append("\\0")
        elif not ch.isprintable() and ch != " ":
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _b64url_decode_strict(body: str) -> bytes:
    """Base64url without padding, canonical only (the Rust base64 crate's default engine rules)."""
    if not _B64URL.fullmatch(body) or len(body) % 4 == 1:
        raise BlockError("Manual payload base64 decode failed")
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    # Non-zero leftover bits in the last symbol would let two texts carry one payload; Rust rejects them.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != body:
        raise BlockError("Manual payload base64 decode failed")
    return raw


def decode_payload(payload: str) -> bytes:
    """Check a TRS1 payload (header, version, CRC, base64) and return the JSON bytes it carries."""
    parts = _trim(payload).split(":", 2)
    header = parts[0]
    if len(parts) < 2:
        raise BlockError("Invalid manual payload checksum")
    if len(parts) < 3:
        raise BlockError("Invalid manual payload body")
    checksum_hex, body = parts[1], parts[2]
    if not header.startswith(_PREFIX):
        raise BlockError("Manual payload missing prefix")
    version_text = header[len(_PREFIX) :]
    # Length-check the digits before int(): Python refuses to convert very long decimal strings (ValueError).
    digits = version_text.removeprefix("+").lstrip("0")
    if not _RUST_U16.fullmatch(version_text) or len(digits) > 5 or int(version_text) > _U16_MAX:
        raise BlockError(f"Invalid signaling version: {quote_peer(_rust_debug(version_text))}")
    version = int(version_text)
    if version != MANUAL_SIGNAL_VERSION:
        raise BlockError(f"Signaling version mismatch (expected {MANUAL_SIGNAL_VERSION}, got {version})")
    if not _RUST_HEX_U32.fullmatch(checksum_hex) or int(checksum_hex, 16) > _U32_MAX:
        raise BlockError("Invalid manual payload checksum")
    expected_crc = int(checksum_hex, 16)
    raw = _b64url_decode_strict(body)
    actual_crc = zlib.crc32(raw) & _U32_MAX
    if actual_crc != expected_crc:
        raise BlockError(
            f"Manual payload checksum mismatch (expected {expected_crc:08x}, got {actual_crc:08x})"
        )
    return raw


# --------------------------------------------------------------------------------------------------------------
# BEGIN/END blocks


def encode_block(kind: Kind, message: ManualOffer | ManualAnswer) -> str:
    """The text printed for the user to copy: blank line, BEGIN, payload wrapped at 76, END, blank line."""
    kind = _check_kind(kind)
    expected_type = ManualOffer if kind == "OFFER" else ManualAnswer
    if not isinstance(message, expected_type):
        raise LocalProtocolError(f"a {kind} block must carry a {expected_type.__name__}")
    payload = encode_payload(message.to_json())
    lines = [payload[i : i + LINE_WIDTH] for i in range(0, len(payload), LINE_WIDTH)]
    return "\n" + begin_marker(kind) + "\n" + "\n".join(lines) + "\n" + end_marker(kind) + "\n\n"


class BlockReader:
    """Reads one BEGIN/END block line by line, so an adapter can stop reading stdin right after END.

    A failed reader stays failed; feeding it again is a programming error.
    """

    def __init__(self, kind: Kind) -> None:
        self._kind = _check_kind(kind)
        self._state: Literal["before", "inside", "done", "failed"] = "before"
        self._lines: list[str] = []
        self._size = 0

    @property
    def kind(self) -> Kind:
        return self._kind

    @property
    def done(self) -> bool:
        return self._state == "done"

    def _fail(self, message: str) -> BlockError:
        self._state = "failed"
        self._lines = []
        return BlockError(message)

    def feed_line(self, line: str) -> str | None:
        """Feed one line (its line ending may be included); return the joined payload once END is seen."""
        if self._state == "done":
            raise LocalProtocolError("BlockReader already returned its payload")
        if self._state == "failed":
            raise LocalProtocolError("BlockReader already failed")
        # Tolerate a caller handing over several lines at once; each is judged on its own.
        for piece in line.split("\n"):
            result = self._feed_one(_trim(piece))
            if result is not None:
                return result
        return None

    def _feed_one(self, text: str) -> str | None:
        kind, other = self._kind, _other(self._kind)
        if self._state == "before":
            if not text:
                return None
            if text == begin_marker(kind):
                self._state = "inside"
                return None
            if text == begin_marker(other):
                raise self._fail(f"Expected an {kind} block but got an {other} block")
            raise self._fail("Unexpected text before BEGIN marker")
        if text == end_marker(kind):
            if not self._lines:
                raise self._fail("No payload found between markers")
            payload = "".join(self._lines)
            self._lines = []
            self._state = "done"
            return payload
        if text == end_marker(other):
            raise self._fail(f"Mismatched END marker: expected {end_marker(kind)}")
        if text in (begin_marker(kind), begin_marker(other)):
            raise self._fail("Unexpected BEGIN marker inside block")
        if text:
            self._size += len(text)
            if self._size > MAX_BLOCK_PAYLOAD:
                raise self._fail(f"Manual payload too large (more than {MAX_BLOCK_PAYLOAD} characters)")
            self._lines.append(text)
        return None

    def feed_eof(self) -> None:
        """Input ended: an error unless a complete block was read."""
        if self._state == "before":
            raise self._fail("Missing BEGIN marker")
        if self._state == "inside":
            raise self._fail("END marker not found")
        if self._state == "failed":
            raise LocalProtocolError("BlockReader already failed")


def _payload_of(text: str, kind: Kind) -> str:
    """Accept either a whole block (markers included) or the bare payload a BlockReader returned."""
    if "-----BEGIN" not in text and "-----END" not in text:
        return text
    return read_block(text.split("\n"), kind)


def _decode(text: str, kind: Kind, parse: Callable[[bytes], Any]) -> Any:
    return parse(decode_payload(_payload_of(text, kind)))


def decode_offer(text: str) -> ManualOffer:
    """An OFFER from a pasted block, or from the bare TRS1 payload (as returned by BlockReader.feed_line)."""
    result: ManualOffer = _decode(text, "OFFER", ManualOffer.from_json)
    return result


def decode_answer(text: str) -> ManualAnswer:
    """An ANSWER from a pasted block, or from the bare TRS1 payload (as returned by BlockReader.feed_line)."""
    result: ManualAnswer = _decode(text, "ANSWER", ManualAnswer.from_json)
    return result


def read_block(lines: Iterable[str], kind: Kind) -> str:
    """Drive a BlockReader over already-available lines (tests, files); the payload or a BlockError."""
    reader = BlockReader(kind)
    for line in lines:
        payload = reader.feed_line(line)
        if payload is not None:
            return payload
    reader.feed_eof()
    raise AssertionError("unreachable: feed_eof raises unless a payload was returned")
