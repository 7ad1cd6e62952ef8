"""STUN message codec (RFC 8489) with the ICE (RFC 8445) and TURN (RFC 8656) attributes we use.

Datagrams come straight off the network, so ``decode`` treats every byte as hostile and raises only
``StunError``: the ICE agent and the demultiplexer can then drop bad packets with one ``except`` and never
mistake a malformed datagram for a bug of ours. Encoding is strict in the other direction: a value we cannot
represent is our own mistake and raises ``LocalProtocolError``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import stringprep
import struct
import unicodedata
import zlib
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import attrs

from tunnel_core.errors import LocalProtocolError, RemoteProtocolError
from tunnel_core.types import Address

__all__ = [
    "MAGIC_COOKIE",
    "Attr",
    "ErrorCode",
    "MessageClass",
    "Method",
    "StunError",
    "StunMessage",
    "decode",
    "decode_channel_data",
    "encode",
    "encode_channel_data",
    "is_stun",
    "long_term_key",
    "short_term_key",
    "transaction_id",
]


class StunError(RemoteProtocolError):
    """A datagram that claims to be STUN (or TURN ChannelData) but is malformed or fails its fingerprint."""


MAGIC_COOKIE = 0x2112A442
_FINGERPRINT_XOR = 0x5354554E
_HEADER = struct.Struct("!HHI12s")
_ATTR_HEADER = struct.Struct("!HH")
_HEADER_LEN = 20
_MI_LEN = 20  # HMAC-SHA1 output


class Method(IntEnum):
    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009


class MessageClass(IntEnum):
    REQUEST = 0
    INDICATION = 1
    SUCCESS = 2
    ERROR = 3


class Attr(IntEnum):
    MAPPED_ADDRESS = 0x0001
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    XOR_MAPPED_ADDRESS = 0x0020
    PRIORITY = 0x0024
    USE_CANDIDATE = 0x0025
    SOFTWARE = 0x8022
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A


_KNOWN_METHODS = frozenset(int(m) for m in Method)
_KNOWN_ATTRS = frozenset(int(a) for a in Attr)


@attrs.frozen
class ErrorCode:
    """ERROR-CODE value: ``code`` is the full number (e.g. 401), ``reason`` the UTF-8 phrase."""

    code: int
    reason: str


@attrs.frozen
class StunMessage:
    """One STUN message.

    ``attributes`` never contains MESSAGE-INTEGRITY or FINGERPRINT: those are computed by ``encode`` and
    verified from ``raw``, so a decoded message can be compared with one built by hand.
    """

    method: int
    message_class: MessageClass
    transaction_id: bytes
    attributes: tuple[tuple[int, Any], ...] = ()
    raw: bytes = attrs.field(default=b"", eq=False, repr=False)
    has_integrity: bool = attrs.field(default=False, eq=False)
    has_fingerprint: bool = attrs.field(default=False, eq=False)

    def get(self, attr: int, default: Any = None) -> Any:
        """First value of type ``attr``; RFC 8489 says later duplicates are to be ignored."""
        for atype, value in self.attributes:
            if atype == attr:
                return value
        return default

    def check_integrity(self, key: bytes) -> bool:
        """Verify MESSAGE-INTEGRITY over ``raw`` (RFC 8489 14.5); False when absent or not decoded from bytes.

        The HMAC covers the header with its length field rewritten to end just after MESSAGE-INTEGRITY, so
        a trailing FINGERPRINT does not change the result.
        """
        if not self.has_integrity or not self.raw:
            return False
        offset = _integrity_offset(self.raw)
        if offset is None:
            return False
        header = bytearray(self.raw[:_HEADER_LEN])
        struct.pack_into("!H", header, 2, offset - _HEADER_LEN + 4 + _MI_LEN)
        expected = hmac.new(key, bytes(header) + self.raw[_HEADER_LEN:offset], hashlib.sha1).digest()
        received = self.raw[offset + 4 : offset + 4 + _MI_LEN]
        return hmac.compare_digest(expected, received)

    def unknown_required(self) -> tuple[int, ...]:
        """Comprehension-required types we could not interpret; a server answers 420 listing them."""
        found: list[int] = []
        for atype, _ in self.attributes:
            if atype < 0x8000 and atype not in _KNOWN_ATTRS and atype not in found:
                found.append(int(atype))
        return tuple(found)


# --- message type bit interleaving (RFC 8489 5: M11..M7 C1 M6..M4 C0 M3..M0) ---------------------------


def _compose_type(method: int, message_class: int) -> int:
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((message_class & 0x1) << 4)
        | ((message_class & 0x2) << 7)
    )


def _split_type(msg_type: int) -> tuple[int, MessageClass]:
    method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
    message_class = MessageClass(((msg_type >> 4) & 0x1) | ((msg_type >> 7) & 0x2))
    return method, message_class


def _padded(length: int) -> int:
    return (length + 3) & ~3


# --- attribute values ----------------------------------------------------------------------------------

_ADDRESS_ATTRS = frozenset({Attr.MAPPED_ADDRESS})
_XOR_ADDRESS_ATTRS = frozenset({Attr.XOR_MAPPED_ADDRESS, Attr.XOR_PEER_ADDRESS, Attr.XOR_RELAYED_ADDRESS})
_TEXT_ATTRS = frozenset({Attr.USERNAME, Attr.REALM, Attr.NONCE, Attr.SOFTWARE})
_U32_ATTRS = frozenset({Attr.PRIORITY, Attr.LIFETIME})
_U64_ATTRS = frozenset({Attr.ICE_CONTROLLED, Attr.ICE_CONTROLLING})
_FLAG_ATTRS = frozenset({Attr.USE_CANDIDATE, Attr.DONT_FRAGMENT})


def _xor_mask(length: int, tid: bytes) -> bytes:
    return (struct.pack("!I", MAGIC_COOKIE) + tid)[:length]


def _decode_address(value: bytes, xor: bool, tid: bytes) -> Address:
    if len(value) < 4:
        raise StunError("address attribute too short")
    family, port = struct.unpack_from("!xBH", value)
    raw_ip = value[4:]
    if family == 0x01:
        if len(raw_ip) != 4:
            raise StunError("IPv4 address attribute has wrong length")
    elif family == 0x02:
        if len(raw_ip) != 16:
            raise StunError("IPv6 address attribute has wrong length")
    else:
        raise StunError(f"unknown address family {family}")
    if xor:
        port ^= MAGIC_COOKIE >> 16
        raw_ip = bytes(a ^ b for a, b in zip(raw_ip, _xor_mask(len(raw_ip), tid), strict=True))
    ip = ipaddress.IPv4Address(raw_ip) if family == 0x01 else ipaddress.IPv6Address(raw_ip)
    return (ip.compressed, port)


def _encode_address(value: Any, xor: bool, tid: bytes) -> bytes:
    try:
        host, port = value
        ip = ipaddress.ip_address(host)
        port = int(port)
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"not an (ip, port) address: {value!r}") from exc
    if not 0 <= port <= 0xFFFF:
        raise LocalProtocolError(f"port out of range: {port}")
    raw_ip = ip.packed
    if xor:
        port ^= MAGIC_COOKIE >> 16
        raw_ip = bytes(a ^ b for a, b in zip(raw_ip, _xor_mask(len(raw_ip), tid), strict=True))
    family = 0x01 if ip.version == 4 else 0x02
    return struct.pack("!xBH", family, port) + raw_ip


def _decode_value(atype: int, value: bytes, tid: bytes) -> Any:
    """Interpret one attribute value; unknown types stay raw bytes so they can be reported or carried."""
    if atype in _XOR_ADDRESS_ATTRS:
        return _decode_address(value, True, tid)
    if atype in _ADDRESS_ATTRS:
        return _decode_address(value, False, tid)
    if atype in _TEXT_ATTRS:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StunError(f"attribute 0x{atype:04x} is not UTF-8") from exc
    if atype in _U32_ATTRS:
        if len(value) != 4:
            raise StunError(f"attribute 0x{atype:04x} must be 4 bytes")
        return struct.unpack("!I", value)[0]
    if atype in _U64_ATTRS:
        if len(value) != 8:
            raise StunError(f"attribute 0x{atype:04x} must be 8 bytes")
        return struct.unpack("!Q", value)[0]
    if atype in _FLAG_ATTRS:
        if value:
            raise StunError(f"attribute 0x{atype:04x} must be empty")
        return None
    if atype == Attr.ERROR_CODE:
        if len(value) < 4:
            raise StunError("ERROR-CODE too short")
        error_class = value[2] & 0x07
        number = value[3]
        if number > 99:
            raise StunError("ERROR-CODE number out of range")
        try:
            reason = value[4:].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StunError("ERROR-CODE reason is not UTF-8") from exc
        return ErrorCode(error_class * 100 + number, reason)
    if atype == Attr.UNKNOWN_ATTRIBUTES:
        if len(value) % 2:
            raise StunError("UNKNOWN-ATTRIBUTES has odd length")
        return struct.unpack(f"!{len(value) // 2}H", value)
    if atype == Attr.CHANNEL_NUMBER:
        if len(value) != 4:
            raise StunError("CHANNEL-NUMBER must be 4 bytes")
        return struct.unpack("!H2x", value)[0]
    if atype == Attr.REQUESTED_TRANSPORT:
        if len(value) != 4:
            raise StunError("REQUESTED-TRANSPORT must be 4 bytes")
        return value[0]
    return bytes(value)


def _check_uint(atype: int, value: Any, bits: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise LocalProtocolError(f"attribute 0x{atype:04x} needs an unsigned {bits}-bit int, got {value!r}")
    return value


def _encode_value(atype: int, value: Any, tid: bytes) -> bytes:
    if atype in _XOR_ADDRESS_ATTRS:
        return _encode_address(value, True, tid)
    if atype in _ADDRESS_ATTRS:
        return _encode_address(value, False, tid)
    if atype in _TEXT_ATTRS:
        if not isinstance(value, str):
            raise LocalProtocolError(f"attribute 0x{atype:04x} needs str, got {value!r}")
        return value.encode("utf-8")
    if atype in _U32_ATTRS:
        return struct.pack("!I", _check_uint(atype, value, 32))
    if atype in _U64_ATTRS:
        return struct.pack("!Q", _check_uint(atype, value, 64))
    if atype in _FLAG_ATTRS:
        if value is not None:
            raise LocalProtocolError(f"attribute 0x{atype:04x} carries no value, got {value!r}")
        return b""
    if atype == Attr.ERROR_CODE:
        if not isinstance(value, ErrorCode) or not isinstance(value.reason, str) or not 0 <= value.code <= 799:
            raise LocalProtocolError(f"ERROR-CODE needs an ErrorCode with code 0..799, got {value!r}")
        error_class, number = divmod(value.code, 100)
        return struct.pack("!xxBB", error_class, number) + value.reason.encode("utf-8")
    if atype == Attr.UNKNOWN_ATTRIBUTES:
        if not isinstance(value, tuple | list):
            raise LocalProtocolError(f"UNKNOWN-ATTRIBUTES needs a tuple of types, got {value!r}")
        types = tuple(_check_uint(atype, t, 16) for t in value)
        return struct.pack(f"!{len(types)}H", *types)
    if atype == Attr.CHANNEL_NUMBER:
        return struct.pack("!H2x", _check_uint(atype, value, 16))
    if atype == Attr.REQUESTED_TRANSPORT:
        return struct.pack("!B3x", _check_uint(atype, value, 8))
    if not isinstance(value, bytes | bytearray | memoryview):
        raise LocalProtocolError(f"attribute 0x{atype:04x} is not one we interpret: give raw bytes")
    return bytes(value)


# --- messages ------------------------------------------------------------------------------------------


def encode(msg: StunMessage, *, integrity_key: bytes | None = None, fingerprint: bool = False) -> bytes:
    """Serialise ``msg``, appending MESSAGE-INTEGRITY (when a key is given) and then FINGERPRINT.

    Each trailer is computed over a header whose length already counts that trailer, which is what
    RFC 8489 14.5/14.7 demand and what a receiver recomputes.
    """
    tid = msg.transaction_id
    if not isinstance(tid, bytes) or len(tid) != 12:
        raise LocalProtocolError("transaction id must be 12 bytes")
    if not 0 <= msg.method <= 0xFFF:
        raise LocalProtocolError(f"method out of range: {msg.method}")
    msg_type = _compose_type(msg.method, MessageClass(msg.message_class))
    body = bytearray()
    for atype, value in msg.attributes:
        atype = _check_uint(0, atype, 16)
        if atype in (Attr.MESSAGE_INTEGRITY, Attr.FINGERPRINT):
            raise LocalProtocolError("MESSAGE-INTEGRITY and FINGERPRINT are added by encode(), not given")
        encoded = _encode_value(atype, value, tid)
        if len(encoded) > 0xFFFF:
            raise LocalProtocolError(f"attribute 0x{atype:04x} too long")
        body += _ATTR_HEADER.pack(atype, len(encoded))
        body += encoded
        body += b"\x00" * (_padded(len(encoded)) - len(encoded))
    if integrity_key is not None:
        header = _HEADER.pack(msg_type, len(body) + 4 + _MI_LEN, MAGIC_COOKIE, tid)
        mac = hmac.new(integrity_key, header + body, hashlib.sha1).digest()
        body += _ATTR_HEADER.pack(Attr.MESSAGE_INTEGRITY, _MI_LEN) + mac
    if fingerprint:
        header = _HEADER.pack(msg_type, len(body) + 8, MAGIC_COOKIE, tid)
        crc = zlib.crc32(header + body) ^ _FINGERPRINT_XOR
        body += _ATTR_HEADER.pack(Attr.FINGERPRINT, 4) + struct.pack("!I", crc)
    if len(body) > 0xFFFF:
        raise LocalProtocolError("STUN message too long")
    return _HEADER.pack(msg_type, len(body), MAGIC_COOKIE, tid) + bytes(body)


def _walk(data: bytes) -> list[tuple[int, int, int]]:
    """(type, value offset, value length) of each attribute; raises StunError on framing faults."""
    found = []
    pos = _HEADER_LEN
    end = len(data)
    while pos < end:
        if pos + 4 > end:
            raise StunError("truncated attribute header")
        atype, alen = _ATTR_HEADER.unpack_from(data, pos)
        if pos + 4 + _padded(alen) > end:
            raise StunError(f"attribute 0x{atype:04x} overruns the message")
        found.append((atype, pos + 4, alen))
        pos += 4 + _padded(alen)
    return found


def _integrity_offset(raw: bytes) -> int | None:
    try:
        for atype, offset, _ in _walk(raw):
            if atype == Attr.MESSAGE_INTEGRITY:
                return offset - 4
    except StunError:
        return None
    return None


def decode(data: bytes) -> StunMessage:
    """Parse and validate one STUN message; a present but wrong FINGERPRINT is rejected here.

    MESSAGE-INTEGRITY is only located (``has_integrity``), because the key depends on the username and the
    caller checks it with ``check_integrity``. Attributes after MESSAGE-INTEGRITY other than FINGERPRINT are
    ignored, as RFC 8489 14.5 requires.
    """
    try:
        data = bytes(data)
    except TypeError as exc:
        raise StunError("STUN input must be bytes") from exc
    if len(data) < _HEADER_LEN:
        raise StunError("STUN message shorter than its header")
    msg_type, length, cookie, tid = _HEADER.unpack_from(data)
    if msg_type & 0xC000:
        raise StunError("top two bits of a STUN message must be zero")
    if cookie != MAGIC_COOKIE:
        raise StunError("bad STUN magic cookie")
    if length % 4:
        raise StunError("STUN message length is not a multiple of 4")
    if len(data) != _HEADER_LEN + length:
        raise StunError("STUN length field does not match the datagram")
    method, message_class = _split_type(msg_type)
    attributes: list[tuple[int, Any]] = []
    has_integrity = False
    has_fingerprint = False
    for atype, offset, alen in _walk(data):
        if has_fingerprint:
            raise StunError("attribute after FINGERPRINT")
        value = data[offset : offset + alen]
        if atype == Attr.FINGERPRINT:
            if alen != 4:
                raise StunError("FINGERPRINT must be 4 bytes")
            if offset + 4 != len(data):
                raise StunError("FINGERPRINT must be the last attribute")
            expected = zlib.crc32(data[: offset - 4]) ^ _FINGERPRINT_XOR
            if struct.unpack("!I", value)[0] != expected:
                raise StunError("STUN FINGERPRINT mismatch")
            has_fingerprint = True
        elif has_integrity:
            continue
        elif atype == Attr.MESSAGE_INTEGRITY:
            if alen != _MI_LEN:
                raise StunError("MESSAGE-INTEGRITY must be 20 bytes")
            has_integrity = True
        else:
            key = Attr(atype) if atype in _KNOWN_ATTRS else atype
            attributes.append((key, _decode_value(atype, value, tid)))
    return StunMessage(
        method=Method(method) if method in _KNOWN_METHODS else method,
        message_class=message_class,
        transaction_id=tid,
        attributes=tuple(attributes),
        raw=data,
        has_integrity=has_integrity,
        has_fingerprint=has_fingerprint,
    )


def is_stun(data: bytes) -> bool:
    """Cheap classification for demultiplexing; a True answer still needs ``decode`` to trust the content."""
    if len(data) < _HEADER_LEN or data[0] & 0xC0:
        return False
    length = (data[2] << 8) | data[3]
    return (
        length % 4 == 0
        and len(data) == _HEADER_LEN + length
        and int.from_bytes(data[4:8], "big") == MAGIC_COOKIE
    )


# --- credentials ---------------------------------------------------------------------------------------


def short_term_key(password: str) -> bytes:
    """ICE uses the peer's password itself as the HMAC key (RFC 8445 7.2.2)."""
    return password.encode("utf-8")


def _saslprep_map(text: str) -> str:
    """RFC 4013 mapping and NFKC; the prohibition checks are left to whoever issued the password."""
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else "" if stringprep.in_table_b1(ch) else ch for ch in text
    )
    return unicodedata.normalize("NFKC", mapped)


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """TURN long-term credential key MD5(username ":" realm ":" SASLprep(password)) (RFC 8489 9.2.2)."""
    material = f"{username}:{realm}:{_saslprep_map(password)}".encode()
    return hashlib.md5(material, usedforsecurity=False).digest()


def transaction_id(rng: Callable[[int], bytes]) -> bytes:
    """A fresh 96-bit transaction id from the caller's randomness (the core owns no random source)."""
    tid = rng(12)
    if len(tid) != 12:
        raise LocalProtocolError("rng(12) must return 12 bytes")
    return bytes(tid)


# --- TURN ChannelData (RFC 8656 12.4) ------------------------------------------------------------------


def encode_channel_data(channel: int, data: bytes) -> bytes:
    """Frame ``data`` for a bound channel; padded to 4 bytes so the same frame also works over TCP."""
    if not 0x4000 <= channel <= 0x7FFF:
        raise LocalProtocolError(f"channel number out of range: 0x{channel:04x}")
    if len(data) > 0xFFFF:
        raise LocalProtocolError("ChannelData payload too long")
    return struct.pack("!HH", channel, len(data)) + bytes(data) + b"\x00" * (_padded(len(data)) - len(data))


def decode_channel_data(data: bytes) -> tuple[int, bytes]:
    """Split a ChannelData frame; padding up to the next 4-byte boundary is accepted, nothing more."""
    if len(data) < 4:
        raise StunError("ChannelData shorter than its header")
    channel, length = struct.unpack_from("!HH", data)
    if not 0x4000 <= channel <= 0x7FFF:
        raise StunError(f"not a ChannelData channel number: 0x{channel:04x}")
    if not 4 + length <= len(data) <= 4 + _padded(length):
        raise StunError("ChannelData length does not match the datagram")
    return channel, bytes(data[4 : 4 + length])
