"""The iroh relay frame codec (iroh 1.x, relay protocol v1 and v2): frame types 0-13.

Every relay message travels as one binary WebSocket message: a QUIC varint frame type followed by the payload.
The relay forwards datagram frames without decoding them further (see :func:`forward_datagram`) because the
data path is the hot path; the full decoder exists for the handshake, control frames, tests and fuzzing, and
it is the one place that decides what "malformed" means, so a client that sends garbage is closed for the same
reasons the Rust relay closes it (iroh-relay ``protos/relay.rs`` and ``protos/handshake.rs``).
"""

from __future__ import annotations

import enum
import struct

import attrs

from tunnel_core.errors import RemoteProtocolError

__all__ = [
    "ENDPOINT_ID_LEN",
    "MAX_FRAME_SIZE",
    "MAX_PACKET_SIZE",
    "ClientAuth",
    "ClientToRelayDatagram",
    "ClientToRelayDatagramBatch",
    "EndpointGone",
    "Frame",
    "FrameError",
    "FrameType",
    "Health",
    "Ping",
    "Pong",
    "RelayToClientDatagram",
    "RelayToClientDatagramBatch",
    "Restarting",
    "ServerChallenge",
    "ServerConfirmsAuth",
    "ServerDeniesAuth",
    "Status",
    "StatusCode",
    "decode_frame",
    "encode_frame",
    "forward_datagram",
]

#: Largest payload after the frame type (iroh's MAX_PACKET_SIZE); larger frames are a protocol violation.
MAX_PACKET_SIZE = 64 * 1024
#: Largest WebSocket message iroh accepts (MAX_FRAME_SIZE); also the minimum burst of a rate limiter.
MAX_FRAME_SIZE = 1024 * 1024
ENDPOINT_ID_LEN = 32
CHALLENGE_LEN = 16
SIGNATURE_LEN = 64
PING_LEN = 8


class FrameError(RemoteProtocolError):
    """A relay frame is malformed, too large, or of a type this side never accepts."""


class FrameType(enum.IntEnum):
    """iroh-relay ``protos/common.rs`` numbering; stable across iroh 1.x."""

    SERVER_CHALLENGE = 0
    CLIENT_AUTH = 1
    SERVER_CONFIRMS_AUTH = 2
    SERVER_DENIES_AUTH = 3
    CLIENT_TO_RELAY_DATAGRAM = 4
    CLIENT_TO_RELAY_DATAGRAM_BATCH = 5
    RELAY_TO_CLIENT_DATAGRAM = 6
    RELAY_TO_CLIENT_DATAGRAM_BATCH = 7
    ENDPOINT_GONE = 8
    PING = 9
    PONG = 10
    HEALTH = 11
    RESTARTING = 12
    STATUS = 13


class StatusCode(enum.IntEnum):
    """The byte of a v2 ``Status`` frame; other values decode as plain ints (iroh's ``Status::Unknown``)."""

    HEALTHY = 0
    SAME_ENDPOINT_ID_CONNECTED = 1
    RATE_LIMITED = 2


#: What a v1 client gets instead of a Status frame: iroh sends the status's display text as a Health problem.
STATUS_TEXT: dict[int, str] = {
    StatusCode.HEALTHY: "The connection is healthy and has recovered from previous problems",
    StatusCode.SAME_ENDPOINT_ID_CONNECTED:
        "Another endpoint connected with the same endpoint id. No more messages will be received.",
    StatusCode.RATE_LIMITED: "The connection is being rate-limited by the relay",
}


@attrs.frozen
class ServerChallenge:
    challenge: bytes  # 16 random bytes


@attrs.frozen
class ClientAuth:
    public_key: bytes  # 32-byte Ed25519 public key = EndpointId
    signature: bytes  # 64 bytes over blake3 derive_key(challenge)


@attrs.frozen
class ServerConfirmsAuth:
    pass


@attrs.frozen
class ServerDeniesAuth:
    reason: str


@attrs.frozen
class ClientToRelayDatagram:
    dst: bytes
    ecn: int
    contents: bytes


@attrs.frozen
class ClientToRelayDatagramBatch:
    dst: bytes
    ecn: int
    segment_size: int
    contents: bytes


@attrs.frozen
class RelayToClientDatagram:
    src: bytes
    ecn: int
    contents: bytes


@attrs.frozen
class RelayToClientDatagramBatch:
    src: bytes
    ecn: int
    segment_size: int
    contents: bytes


@attrs.frozen
class EndpointGone:
    endpoint_id: bytes


@attrs.frozen
class Ping:
    data: bytes  # 8 bytes


@attrs.frozen
class Pong:
    data: bytes  # 8 bytes


@attrs.frozen
class Health:
    problem: str


@attrs.frozen
class Restarting:
    reconnect_in_ms: int
    try_for_ms: int


@attrs.frozen
class Status:
    code: int


Frame = (
    ServerChallenge | ClientAuth | ServerConfirmsAuth | ServerDeniesAuth | ClientToRelayDatagram
    | ClientToRelayDatagramBatch | RelayToClientDatagram | RelayToClientDatagramBatch | EndpointGone | Ping | Pong
    | Health | Restarting | Status
)


# ------------------------------------------------------------------------------------------------ varints


def _quic_varint(value: int) -> bytes:
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return struct.pack(">H", 0x4000 | value)
    if value < 0x4000_0000:
        return struct.pack(">I", 0x8000_0000 | value)
    return struct.pack(">Q", 0xC000_0000_0000_0000 | value)


def _read_quic_varint(data: bytes) -> tuple[int, int]:
    """(value, bytes used). Frame types are QUIC varints even though every known type fits in one byte."""
    if not data:
        raise FrameError("Too few bytes: missing frame type")
    first = data[0]
    length = 1 << (first >> 6)
    if len(data) < length:
        raise FrameError("Too few bytes: truncated frame type")
    value = first & 0x3F
    for byte in data[1:length]:
        value = (value << 8) | byte
    return value, length


def _leb128(value: int) -> bytes:
    """postcard's length prefix (serde strings and byte slices)."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_leb128(data: bytes, offset: int) -> tuple[int, int]:
    value = 0
    for index in range(5):  # a u32 never needs more than 5 groups
        if offset + index >= len(data):
            raise FrameError("Invalid frame encoding: truncated length")
        byte = data[offset + index]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value, offset + index + 1
    raise FrameError("Invalid frame encoding: length too long")


# ------------------------------------------------------------------------------------------------ encode


def _check_len(name: str, value: bytes, length: int) -> None:
    if len(value) != length:
        raise FrameError(f"{name} must be {length} bytes, got {len(value)}")


def encode_frame(frame: Frame) -> bytes:
    """One WebSocket message's payload. Values out of range raise FrameError (callers build frames from input)."""
    if isinstance(frame, RelayToClientDatagram | ClientToRelayDatagram):
        peer = frame.src if isinstance(frame, RelayToClientDatagram) else frame.dst
        _check_len("endpoint id", peer, ENDPOINT_ID_LEN)
        kind = (FrameType.RELAY_TO_CLIENT_DATAGRAM if isinstance(frame, RelayToClientDatagram)
                else FrameType.CLIENT_TO_RELAY_DATAGRAM)
        return bytes((kind,)) + peer + _ecn_byte(frame.ecn) + frame.contents
    if isinstance(frame, RelayToClientDatagramBatch | ClientToRelayDatagramBatch):
        peer = frame.src if isinstance(frame, RelayToClientDatagramBatch) else frame.dst
        _check_len("endpoint id", peer, ENDPOINT_ID_LEN)
        if not 0 <= frame.segment_size <= 0xFFFF:
            raise FrameError("segment size out of range")
        kind = (FrameType.RELAY_TO_CLIENT_DATAGRAM_BATCH if isinstance(frame, RelayToClientDatagramBatch)
                else FrameType.CLIENT_TO_RELAY_DATAGRAM_BATCH)
        return (bytes((kind,)) + peer + _ecn_byte(frame.ecn) + struct.pack(">H", frame.segment_size)
                + frame.contents)
    if isinstance(frame, ServerChallenge):
        _check_len("challenge", frame.challenge, CHALLENGE_LEN)
        return bytes((FrameType.SERVER_CHALLENGE,)) + frame.challenge
    if isinstance(frame, ClientAuth):
        _check_len("public key", frame.public_key, ENDPOINT_ID_LEN)
        _check_len("signature", frame.signature, SIGNATURE_LEN)
        return bytes((FrameType.CLIENT_AUTH,)) + frame.public_key + _leb128(SIGNATURE_LEN) + frame.signature
    if isinstance(frame, ServerConfirmsAuth):
        return bytes((FrameType.SERVER_CONFIRMS_AUTH,))
    if isinstance(frame, ServerDeniesAuth):
        reason = frame.reason.encode()
        return bytes((FrameType.SERVER_DENIES_AUTH,)) + _leb128(len(reason)) + reason
    if isinstance(frame, EndpointGone):
        _check_len("endpoint id", frame.endpoint_id, ENDPOINT_ID_LEN)
        return bytes((FrameType.ENDPOINT_GONE,)) + frame.endpoint_id
    if isinstance(frame, Ping | Pong):
        _check_len("ping data", frame.data, PING_LEN)
        kind = FrameType.PING if isinstance(frame, Ping) else FrameType.PONG
        return bytes((kind,)) + frame.data
    if isinstance(frame, Health):
        return bytes((FrameType.HEALTH,)) + frame.problem.encode()
    if isinstance(frame, Restarting):
        if not (0 <= frame.reconnect_in_ms <= 0xFFFF_FFFF and 0 <= frame.try_for_ms <= 0xFFFF_FFFF):
            raise FrameError("Restarting durations must fit in u32 milliseconds")
        return bytes((FrameType.RESTARTING,)) + struct.pack(">II", frame.reconnect_in_ms, frame.try_for_ms)
    if isinstance(frame, Status):
        if not 0 <= frame.code <= 0xFF:
            raise FrameError("status code must be one byte")
        return bytes((FrameType.STATUS, frame.code))
    raise FrameError(f"not a relay frame: {type(frame).__name__}")


def _ecn_byte(ecn: int) -> bytes:
    if not 0 <= ecn <= 0xFF:
        raise FrameError("ECN must be one byte")
    return bytes((ecn,))


# ------------------------------------------------------------------------------------------------ decode


def decode_frame(data: bytes) -> Frame:
    """Any frame of either direction; FrameError on anything iroh would reject as an invalid frame."""
    kind, used = _read_quic_varint(data)
    body = data[used:]
    if len(body) > MAX_PACKET_SIZE:
        raise FrameError(f"Frame is too large, has {len(body)} bytes")
    if kind in (FrameType.CLIENT_TO_RELAY_DATAGRAM, FrameType.RELAY_TO_CLIENT_DATAGRAM):
        if len(body) < ENDPOINT_ID_LEN + 1:
            raise FrameError("Invalid frame encoding: datagram frame too short")
        peer, ecn, contents = body[:ENDPOINT_ID_LEN], body[ENDPOINT_ID_LEN], body[ENDPOINT_ID_LEN + 1:]
        if kind == FrameType.CLIENT_TO_RELAY_DATAGRAM:
            return ClientToRelayDatagram(dst=peer, ecn=ecn, contents=contents)
        return RelayToClientDatagram(src=peer, ecn=ecn, contents=contents)
    if kind in (FrameType.CLIENT_TO_RELAY_DATAGRAM_BATCH, FrameType.RELAY_TO_CLIENT_DATAGRAM_BATCH):
        if len(body) < ENDPOINT_ID_LEN + 3:
            raise FrameError("Invalid frame encoding: datagram batch frame too short")
        peer, ecn = body[:ENDPOINT_ID_LEN], body[ENDPOINT_ID_LEN]
        (segment,) = struct.unpack_from(">H", body, ENDPOINT_ID_LEN + 1)
        contents = body[ENDPOINT_ID_LEN + 3:]
        if kind == FrameType.CLIENT_TO_RELAY_DATAGRAM_BATCH:
            return ClientToRelayDatagramBatch(dst=peer, ecn=ecn, segment_size=segment, contents=contents)
        return RelayToClientDatagramBatch(src=peer, ecn=ecn, segment_size=segment, contents=contents)
    if kind == FrameType.SERVER_CHALLENGE:
        if len(body) != CHALLENGE_LEN:
            raise FrameError("Invalid frame encoding: challenge must be 16 bytes")
        return ServerChallenge(challenge=body)
    if kind == FrameType.CLIENT_AUTH:
        if len(body) < ENDPOINT_ID_LEN + 1:
            raise FrameError("Invalid frame encoding: client auth too short")
        length, offset = _read_leb128(body, ENDPOINT_ID_LEN)
        if length != SIGNATURE_LEN or len(body) != offset + SIGNATURE_LEN:
            raise FrameError("Invalid frame encoding: client auth signature must be 64 bytes")
        return ClientAuth(public_key=body[:ENDPOINT_ID_LEN], signature=body[offset:])
    if kind == FrameType.SERVER_CONFIRMS_AUTH:
        if body:
            raise FrameError("Invalid frame encoding: confirm carries no payload")
        return ServerConfirmsAuth()
    if kind == FrameType.SERVER_DENIES_AUTH:
        length, offset = _read_leb128(body, 0)
        if len(body) != offset + length:
            raise FrameError("Invalid frame encoding: deny reason length mismatch")
        return ServerDeniesAuth(reason=_utf8(body[offset:]))
    if kind == FrameType.ENDPOINT_GONE:
        if len(body) != ENDPOINT_ID_LEN:
            raise FrameError("Invalid frame encoding: endpoint gone must carry 32 bytes")
        return EndpointGone(endpoint_id=body)
    if kind in (FrameType.PING, FrameType.PONG):
        if len(body) != PING_LEN:
            raise FrameError("Invalid frame encoding: ping/pong must carry 8 bytes")
        return Ping(data=body) if kind == FrameType.PING else Pong(data=body)
    if kind == FrameType.HEALTH:
        return Health(problem=_utf8(body))
    if kind == FrameType.RESTARTING:
        if len(body) != 8:
            raise FrameError("Invalid frame encoding: restarting must carry 8 bytes")
        reconnect, try_for = struct.unpack(">II", body)
        return Restarting(reconnect_in_ms=reconnect, try_for_ms=try_for)
    if kind == FrameType.STATUS:
        if len(body) != 1:
            raise FrameError("Invalid frame encoding: status must carry 1 byte")
        return Status(code=body[0])
    raise FrameError(f"Invalid frame type: {kind}")


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise FrameError("Invalid protocol message encoding") from exc


# ------------------------------------------------------------------------------------------------ forwarding

_FORWARD_TYPE = {
    FrameType.CLIENT_TO_RELAY_DATAGRAM: bytes((FrameType.RELAY_TO_CLIENT_DATAGRAM,)),
    FrameType.CLIENT_TO_RELAY_DATAGRAM_BATCH: bytes((FrameType.RELAY_TO_CLIENT_DATAGRAM_BATCH,)),
}


def forward_datagram(data: bytes, src: bytes) -> tuple[bytes, bytes]:
    """(destination id, relay->client frame) for a client->relay datagram frame, without copying the packet twice.

    The relay must keep ECN, segment size and contents byte for byte and only swap dst for src, so slicing the
    raw message is both correct and the cheapest thing to do. The checks are exactly decode_frame's for these
    types, so a frame accepted here would also decode.
    """
    if not data:
        raise FrameError("Too few bytes: missing frame type")
    prefix = _FORWARD_TYPE.get(data[0])  # type: ignore[call-overload]
    if prefix is None:
        raise FrameError(f"Invalid frame type: {data[0]} is not a client datagram")
    body_len = len(data) - 1
    if body_len > MAX_PACKET_SIZE:
        raise FrameError(f"Frame is too large, has {body_len} bytes")
    minimum = ENDPOINT_ID_LEN + (1 if data[0] == FrameType.CLIENT_TO_RELAY_DATAGRAM else 3)
    if body_len < minimum:
        raise FrameError("Invalid frame encoding: datagram frame too short")
    view = memoryview(data)
    return bytes(view[1:1 + ENDPOINT_ID_LEN]), b"".join((prefix, src, view[1 + ENDPOINT_ID_LEN:]))
