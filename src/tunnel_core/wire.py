"""What travels inside a QUIC stream: the iroh-mode SourceRequest/SourceResponse, the ICE-mode stream-open marker
and the UDP-over-stream framing (upstream reference 3.1-3.3).

Everything here is a pure codec: bytes in, values or bytes out. Incremental readers exist because a QUIC stream
hands data over in arbitrary pieces and a message (or a UDP frame) may straddle any of them; the adapter must never
have to guess where one ends.

The JSON side mimics serde_json, the encoder of the Rust peer: compact, fields in struct order, optional fields
omitted, unknown fields ignored on input, and wrongly typed fields rejected instead of coerced.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NoReturn

import attrs

from tunnel_core.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "MAX_MESSAGE_SIZE",
    "MAX_REASON_BYTES",
    "MAX_UDP_DATAGRAM",
    "STREAM_OPEN_MARKER",
    "DurableRequest",
    "MessageReader",
    "SourceRequest",
    "SourceResponse",
    "UdpFrameDecoder",
    "WireError",
    "decode_source_request",
    "decode_source_response",
    "dumps_compact",
    "encode_source_request",
    "encode_source_response",
    "encode_udp_frame",
    "field_bool",
    "field_opt_str",
    "field_str",
    "field_str_list",
    "field_uint",
    "loads_json_object",
    "split_message",
    "truncate_reason",
]


class WireError(RemoteProtocolError):
    """The peer sent a stream preamble or a UDP frame we cannot accept."""


#: The single byte an ICE-mode client writes first on every TCP stream, because QUIC reveals a stream to the
#: peer only once its opener writes something.
STREAM_OPEN_MARKER = b"\x00"
#: Upper bound of a length-prefixed control message (upstream MAX_SOURCE_MESSAGE_SIZE), on encode and decode.
MAX_MESSAGE_SIZE = 16384
#: Rejection reasons are capped so a hostile or chatty server cannot flood the client's terminal.
MAX_REASON_BYTES = 512
#: The u16 length prefix of a UDP frame cannot describe more.
MAX_UDP_DATAGRAM = 0xFFFF

_TRUNCATION_SUFFIX = "..."
_LENGTH_PREFIX = 4
_UDP_PREFIX = 2
_U16_MAX = 0xFFFF
_U64_MAX = 0xFFFF_FFFF_FFFF_FFFF


def truncate_reason(reason: str) -> str:
    """Cap a rejection reason at MAX_REASON_BYTES of UTF-8, as upstream does, so both ends agree on what fits."""
    encoded = reason.encode("utf-8", "surrogatepass")
    if len(encoded) <= MAX_REASON_BYTES:
        return reason
    cut = MAX_REASON_BYTES - len(_TRUNCATION_SUFFIX)
    # Step back over UTF-8 continuation bytes (10xxxxxx) so the cut lands on a character boundary.
    while cut > 0 and (encoded[cut] & 0xC0) == 0x80:
        cut -= 1
    return encoded[:cut].decode("utf-8", "surrogatepass") + _TRUNCATION_SUFFIX


def _optional_reason(reason: str | None) -> str | None:
    return None if reason is None else truncate_reason(reason)


# --------------------------------------------------------------------------------------------------------------
# JSON helpers shared with tunnel_core.blocks: one place that knows how serde_json differs from Python's json.


def dumps_compact(obj: dict[str, Any]) -> bytes:
    """Serialise like serde_json::to_vec: no spaces, non-ASCII kept as UTF-8, insertion order preserved.

    Python's escaping with ensure_ascii=False matches serde_json's (only '"', '\\' and C0 controls are escaped, in
    lowercase \\u00xx form), so byte-identical output (and thus identical CRCs) is possible.
    """
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: no valid UTF-8 exists for it
        raise LocalProtocolError("cannot serialise a string with a lone surrogate") from exc


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate field {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def loads_json_object(body: bytes, fail: Callable[[], Exception]) -> dict[str, Any]:
    """Parse one JSON object as strictly as serde_json would, raising ``fail()`` on anything else.

    Strictness matters because the other end is Rust: accepting NaN, duplicate keys, UTF-16 input or invalid
    UTF-8 here would make the two implementations disagree about what a message means.
    """
    try:
        text = body.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise fail() from exc
    if not isinstance(value, dict):
        raise fail()
    return value


def _is_valid_str(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # "\ud800" escapes decode to lone surrogates; serde_json refuses those
        return False
    return True


def field_uint(obj: dict[str, Any], name: str, maximum: int, fail: Callable[[], Exception]) -> int:
    """A required unsigned integer field (serde u16/u64): ints only, never bools or floats."""
    value = obj.get(name)
    if type(value) is not int or not 0 <= value <= maximum:
        raise fail()
    return value


def field_str(obj: dict[str, Any], name: str, fail: Callable[[], Exception]) -> str:
    """A required string field."""
    value = obj.get(name)
    if not _is_valid_str(value):
        raise fail()
    return value


def field_opt_str(obj: dict[str, Any], name: str, fail: Callable[[], Exception]) -> str | None:
    """An Option<String> field: absent or null mean None."""
    value = obj.get(name)
    if value is None:
        return None
    if not _is_valid_str(value):
        raise fail()
    return value


def field_str_list(obj: dict[str, Any], name: str, fail: Callable[[], Exception]) -> tuple[str, ...]:
    """A required Vec<String> field."""
    value = obj.get(name)
    if not isinstance(value, list) or not all(_is_valid_str(item) for item in value):
        raise fail()
    return tuple(value)


def field_bool(obj: dict[str, Any], name: str, fail: Callable[[], Exception]) -> bool:
    """A required bool field."""
    value = obj.get(name)
    if not isinstance(value, bool):
        raise fail()
    return value


# --------------------------------------------------------------------------------------------------------------
# SourceRequest / SourceResponse (iroh mode, reference 3.2)


@attrs.frozen
class DurableRequest:
    """Our extension (docs/durable.md, iroh mode): this TCP stream is durable - stream ``key`` of the client's
    durable session ``token`` (16 bytes); ``offset`` (what the client received of it) when it resumes a held
    stream, None for a new one."""

    token: bytes
    key: int
    offset: int | None = None


@attrs.frozen
class SourceRequest:
    """The client's first message on a forwarding stream: which server-side destination it wants."""

    source: str
    version: int = 1
    #: Our extension (docs/datagrams.md): the client offers to carry this UDP stream's datagrams as QUIC datagrams
    #: under this flow id. Omitted when None, so the bytes are upstream's; upstream ignores the unknown field.
    datagram_flow: int | None = None
    #: Our extension (docs/durable.md): the client asks for a durable stream. Omitted when None.
    durable: DurableRequest | None = None


@attrs.frozen
class SourceResponse:
    """The server's verdict on a SourceRequest; ``reason`` is capped at MAX_REASON_BYTES when built."""

    accepted: bool
    reason: str | None = attrs.field(default=None, converter=_optional_reason)
    version: int = 1
    #: Our extension: the server takes the client's offer of QUIC datagrams for this flow (echoes its id).
    datagram_flow: int | None = None
    #: Our extension (docs/durable.md): the stream is durable; what the server has received of it (0 when new).
    durable: int | None = None


def _check_version_range(version: int, type_name: str) -> None:
    if type(version) is not int or not 0 <= version <= _U16_MAX:
        raise LocalProtocolError(f"{type_name} version must be a u16, got {version!r}")


def _length_prefixed(json_bytes: bytes, type_name: str) -> bytes:
    if len(json_bytes) > MAX_MESSAGE_SIZE:
        raise LocalProtocolError(f"{type_name} too large: {len(json_bytes)} bytes")
    return len(json_bytes).to_bytes(_LENGTH_PREFIX, "big") + json_bytes


def encode_source_request(req: SourceRequest) -> bytes:
    """u32 big-endian length + compact JSON ``{"version":V,"source":"..."}``."""
    _check_version_range(req.version, "SourceRequest")
    obj: dict[str, Any] = {"version": req.version, "source": req.source}
    if req.datagram_flow is not None:
        obj["datagram_flow"] = req.datagram_flow
    if req.durable is not None:
        durable: dict[str, Any] = {"token": req.durable.token.hex(), "key": req.durable.key}
        if req.durable.offset is not None:
            durable["offset"] = req.durable.offset
        obj["durable"] = durable
    return _length_prefixed(dumps_compact(obj), "SourceRequest")


def encode_source_response(resp: SourceResponse) -> bytes:
    """u32 big-endian length + compact JSON; ``reason`` omitted when None (serde skip_serializing_if)."""
    _check_version_range(resp.version, "SourceResponse")
    obj: dict[str, Any] = {"version": resp.version, "accepted": resp.accepted}
    if resp.reason is not None:
        obj["reason"] = resp.reason
    if resp.datagram_flow is not None:
        obj["datagram_flow"] = resp.datagram_flow
    if resp.durable is not None:
        obj["durable"] = resp.durable
    return _length_prefixed(dumps_compact(obj), "SourceResponse")


def _decode_body(body: bytes, type_name: str) -> dict[str, Any]:
    if len(body) > MAX_MESSAGE_SIZE:
        raise WireError(f"{type_name} length too large: {len(body)} bytes")

    def fail() -> WireError:
        return WireError(f"Invalid {type_name} JSON")

    return loads_json_object(body, fail)


def decode_source_request(body: bytes, *, expected_version: int) -> SourceRequest:
    """Parse the JSON body (without its length prefix) of a SourceRequest and insist on our protocol version."""
    name = "SourceRequest"
    obj = _decode_body(body, name)

    def fail() -> WireError:
        return WireError(f"Invalid {name} JSON")

    version = field_uint(obj, "version", _U16_MAX, fail)
    source = field_str(obj, "source", fail)
    flow = _field_opt_flow(obj, fail)
    durable = _field_opt_durable(obj, fail)
    if version != expected_version:
        raise WireError(f"{name} version mismatch: expected {expected_version}, got {version}")
    return SourceRequest(source=source, version=version, datagram_flow=flow, durable=durable)


def decode_source_response(body: bytes, *, expected_version: int) -> SourceResponse:
    """Parse the JSON body (without its length prefix) of a SourceResponse and insist on our protocol version."""
    name = "SourceResponse"
    obj = _decode_body(body, name)

    def fail() -> WireError:
        return WireError(f"Invalid {name} JSON")

    version = field_uint(obj, "version", _U16_MAX, fail)
    accepted = field_bool(obj, "accepted", fail)
    reason = field_opt_str(obj, "reason", fail)
    flow = _field_opt_flow(obj, fail)
    durable = None if obj.get("durable") is None else field_uint(obj, "durable", _U64_MAX, fail)
    if version != expected_version:
        raise WireError(f"{name} version mismatch: expected {expected_version}, got {version}")
    return SourceResponse(accepted=accepted, reason=reason, version=version, datagram_flow=flow, durable=durable)


def _field_opt_flow(obj: dict[str, Any], fail: Callable[[], Exception]) -> int | None:
    """The optional ``datagram_flow`` (a u32; absent or null mean no datagrams)."""
    if obj.get("datagram_flow") is None:
        return None
    return field_uint(obj, "datagram_flow", 0xFFFF_FFFF, fail)


def _field_opt_durable(obj: dict[str, Any], fail: Callable[[], Exception]) -> DurableRequest | None:
    """The optional ``durable`` object of a SourceRequest: ``token`` (32 hex digits), ``key``, ``offset``."""
    value = obj.get("durable")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise fail()
    token = field_str(value, "token", fail)
    if len(token) != 32 or any(c not in "0123456789abcdef" for c in token):
        raise fail()
    key = field_uint(value, "key", _U64_MAX, fail)
    offset = None if value.get("offset") is None else field_uint(value, "offset", _U64_MAX, fail)
    return DurableRequest(bytes.fromhex(token), key, offset)


def split_message(data: bytes, type_name: str) -> bytes:
    """The JSON body of a complete length-prefixed message held in one buffer (bytes after it are ignored).

    Mirrors upstream's decode_length_prefixed for callers that already hold the whole message.
    """
    if len(data) < _LENGTH_PREFIX:
        raise WireError(f"{type_name} too short: {len(data)} bytes")
    length = int.from_bytes(data[:_LENGTH_PREFIX], "big")
    if length > MAX_MESSAGE_SIZE:
        raise WireError(f"{type_name} length too large: {length} bytes")
    if len(data) < _LENGTH_PREFIX + length:
        raise WireError(f"{type_name} incomplete: expected {_LENGTH_PREFIX + length} bytes, got {len(data)}")
    return bytes(data[_LENGTH_PREFIX : _LENGTH_PREFIX + length])


class MessageReader:
    """Collects ONE length-prefixed message from the start of a stream that may arrive in any number of pieces.

    Whatever follows the message on the stream is not ours: it is handed back untouched in ``remainder`` so the
    caller can pass it on as raw payload.
    """

    def __init__(self, type_name: str = "Message") -> None:
        self._type_name = type_name
        self._buffer = bytearray()
        self._length: int | None = None
        self._done = False
        self._failed = False
        self.remainder: bytes = b""

    @property
    def complete(self) -> bool:
        return self._done

    def feed(self, data: bytes) -> bytes | None:
        """Add stream bytes; return the JSON body once it is complete, else None."""
        if self._done:
            raise LocalProtocolError("MessageReader already returned its message; use .remainder")
        if self._failed:
            raise LocalProtocolError("MessageReader already failed")
        self._buffer += data
        if self._length is None:
            if len(self._buffer) < _LENGTH_PREFIX:
                return None
            length = int.from_bytes(self._buffer[:_LENGTH_PREFIX], "big")
            if length > MAX_MESSAGE_SIZE:
                self._failed = True
                raise WireError(f"Message length too large: {length} bytes")
            self._length = length
        end = _LENGTH_PREFIX + self._length
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[_LENGTH_PREFIX:end])
        self.remainder = bytes(self._buffer[end:])
        self._buffer = bytearray()
        self._done = True
        return body

    def feed_eof(self) -> None:
        """The stream ended; fine only if the message was already complete."""
        if self._done:
            return
        self._failed = True
        if self._length is None:
            raise WireError(f"{self._type_name} too short: {len(self._buffer)} bytes")
        raise WireError(
            f"{self._type_name} incomplete: expected {_LENGTH_PREFIX + self._length} bytes, got {len(self._buffer)}"
        )


# --------------------------------------------------------------------------------------------------------------
# UDP-over-stream framing (all modes, reference 3.1)


def encode_udp_frame(datagram: bytes) -> bytes:
    """u16 big-endian length + datagram; a datagram that cannot be described by a u16 is our own bug."""
    if len(datagram) > MAX_UDP_DATAGRAM:
        raise LocalProtocolError(f"UDP datagram too large for framing: {len(datagram)} bytes (max 65535)")
    return len(datagram).to_bytes(_UDP_PREFIX, "big") + datagram


class UdpFrameDecoder:
    """Turns a byte stream of back-to-back UDP frames into datagrams, whatever the chunking."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._closed = False

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame (at most 65536), for flow-control accounting."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add stream bytes; return every datagram completed by them, in order."""
        if self._closed:
            raise LocalProtocolError("UdpFrameDecoder.feed after feed_eof")
        buf = self._buffer
        buf += data
        out: list[bytes] = []
        offset = 0
        size = len(buf)
        while size - offset >= _UDP_PREFIX:
            length = (buf[offset] << 8) | buf[offset + 1]
            end = offset + _UDP_PREFIX + length
            if end > size:
                break
            out.append(bytes(buf[offset + _UDP_PREFIX : end]))
            offset = end
        if offset:
            del buf[:offset]
        return out

    def feed_eof(self) -> None:
        """The peer finished the stream: clean only at a frame boundary."""
        self._closed = True
        if self._buffer:
            held = len(self._buffer)
            self._buffer = bytearray()
            raise WireError(f"UDP stream ended mid-frame ({held} bytes of an incomplete frame)")
