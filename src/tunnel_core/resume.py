"""The wire format of durable streams (issue 15 item 4; docs/durable.md): what travels between two ``tunnel``
peers so that forwarded TCP connections survive a reconnect.

Only used when both ends advertised the durable-streams capability in the QUIC handshake (a private transport
parameter, ``tunnel_core.quic.connection.TRANSPORT_PARAMETER_DURABLE``); upstream tunnel-rs never sees any of it.
Three shapes, all big-endian:

* a **control stream**, the first stream the client opens on every connection: ``FF FE`` then frames
  ``type (u8) | length (u32) | body``. Frames:

  - HELLO (client -> server, first): ``version (u8) | token (16) | generation (u32) | count (u16) | key (u64) *``
    - which durable session this is, the connection's number within it, and the keys of the streams the client
    still holds (the server lets go of any other it parked);
  - ACK (both ways): ``count (u16) | (key (u64) | offset (u64)) *`` - "of stream ``key`` I have received
    ``offset`` bytes" (a FIN counts as one byte); the sender may forget what lies below;

* a **resume opening**, a client stream that continues a held stream: ``FF FF | key (u64) | offset (u64)`` (the
  bytes of it the client has received); the server answers on that stream with ``offset (u64)`` (what it has
  received) and both sides continue from there, or resets the stream when it does not know the key;
* nothing on ordinary streams: a stream's key is ``generation << 32 | stream id``, known to both ends.

Iroh mode has no forwarding session: each durable stream negotiates in its SourceRequest/SourceResponse
(``tunnel_core.wire.DurableRequest``) and then carries frames both ways - DATA (``03``, the payload, at most
``MAX_DATA`` bytes), ACK (as above, one pair) and FIN (``04``, empty: the sender's application ended its
direction; the QUIC stream itself ends only when both sides are done, so confirmations can still flow).

Why these openings: a stream of a session with several forwards starts with a u16 forward index (at most
``MAX_FORWARDS``) and one of upstream's single-forward session with the byte 00, so ``FF`` opens neither.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import attrs

from tunnel_core.errors import RemoteProtocolError

#: The wire version, sent as the transport parameter's value and in HELLO. 2: dynamic (SOCKS5) and reverse streams
#: are durable too. A version-1 peer made only plain forwards durable and would never confirm a dynamic or reverse
#: stream (whose sender then pauses at REPLAY_LIMIT), so the versions must match: a v1 peer negotiates nothing and
#: a reconnect resets its streams as with upstream.
DURABLE_VERSION = 2
CONTROL_OPENING = b"\xff\xfe"
RESUME_OPENING = b"\xff\xff"
#: The resume opening: FF FF, key, the client's received offset.
RESUME_HEADER_SIZE = 2 + 8 + 8
#: The server's answer on a resume stream: its received offset.
RESUME_ANSWER_SIZE = 8
TOKEN_SIZE = 16
FRAME_HELLO = 0x01
FRAME_ACK = 0x02
FRAME_DATA = 0x03
FRAME_FIN = 0x04
#: The largest DATA frame body (iroh mode's framed streams).
MAX_DATA = 256 * 1024
#: Keys in one HELLO or ACK: the QUIC connection allows 1024 concurrent streams; the rest is headroom.
MAX_KEYS = 4096
#: The largest frame body: a full HELLO (1 + 16 + 4 + 2 + 8 * MAX_KEYS).
MAX_FRAME_BODY = 23 + 8 * MAX_KEYS
_FRAME_HEAD = struct.Struct(">BI")
_U64 = struct.Struct(">Q")
_PAIR = struct.Struct(">QQ")


class DurableWireError(RemoteProtocolError):
    """A malformed control frame or resume opening (the peer is broken or hostile)."""


@attrs.frozen
class Hello:
    token: bytes
    generation: int
    keys: tuple[int, ...]


@attrs.frozen
class Ack:
    offsets: tuple[tuple[int, int], ...]


@attrs.frozen
class Data:
    payload: bytes


@attrs.frozen
class Fin:
    pass


ControlFrame = Hello | Ack
StreamFrame = Ack | Data | Fin


def stream_key(generation: int, stream_id: int) -> int:
    """The key of an ordinary stream: the connection's number in its durable session and the QUIC stream id."""
    return (generation << 32) | stream_id


def encode_hello(hello: Hello) -> bytes:
    if len(hello.token) != TOKEN_SIZE:
        raise ValueError("a durable session token has 16 bytes")
    if not 0 <= hello.generation <= 0xFFFFFFFF or len(hello.keys) > MAX_KEYS:
        raise ValueError("generation or key count out of range")
    body = (bytes([DURABLE_VERSION]) + hello.token + struct.pack(">IH", hello.generation, len(hello.keys))
            + b"".join(_U64.pack(k) for k in hello.keys))
    return _FRAME_HEAD.pack(FRAME_HELLO, len(body)) + body


def encode_ack(offsets: Sequence[tuple[int, int]]) -> bytes:
    if len(offsets) > MAX_KEYS:
        raise ValueError("too many offsets in one ACK")
    body = struct.pack(">H", len(offsets)) + b"".join(_PAIR.pack(k, o) for k, o in offsets)
    return _FRAME_HEAD.pack(FRAME_ACK, len(body)) + body


def encode_data(payload: bytes) -> list[bytes]:
    """``payload`` as DATA frames of at most MAX_DATA bytes each (header and body as separate buffers)."""
    out: list[bytes] = []
    view = memoryview(payload)
    for start in range(0, len(payload), MAX_DATA):
        piece = view[start:start + MAX_DATA]
        out.append(_FRAME_HEAD.pack(FRAME_DATA, len(piece)))
        out.append(bytes(piece))
    return out


def encode_fin() -> bytes:
    return _FRAME_HEAD.pack(FRAME_FIN, 0)


def encode_resume(key: int, offset: int) -> bytes:
    return RESUME_OPENING + _PAIR.pack(key, offset)


def decode_resume(data: bytes) -> tuple[int, int]:
    """A whole resume opening (RESUME_HEADER_SIZE bytes) -> (key, offset)."""
    if len(data) != RESUME_HEADER_SIZE or data[:2] != RESUME_OPENING:
        raise DurableWireError("Malformed resume opening")
    key, offset = _PAIR.unpack(data[2:])
    return key, offset


def encode_offset(offset: int) -> bytes:
    return _U64.pack(offset)


def decode_offset(data: bytes) -> int:
    if len(data) != RESUME_ANSWER_SIZE:
        raise DurableWireError("Malformed resume answer")
    return int(_U64.unpack(data)[0])


def _decode_body(kind: int, body: bytes) -> ControlFrame | Data | Fin:
    if kind == FRAME_DATA:
        if not body:  # never sent: a DATA frame carries at least one byte
            raise DurableWireError("Empty durable DATA frame")
        return Data(body)
    if kind == FRAME_FIN:
        if body:
            raise DurableWireError("Malformed durable FIN")
        return Fin()
    if kind == FRAME_HELLO:
        if len(body) < 23 or body[0] != DURABLE_VERSION:
            raise DurableWireError("Malformed durable HELLO")
        generation, count = struct.unpack(">IH", body[17:23])
        if count > MAX_KEYS or len(body) != 23 + 8 * count:
            raise DurableWireError("Malformed durable HELLO")
        keys = tuple(_U64.unpack_from(body, 23 + 8 * i)[0] for i in range(count))
        return Hello(bytes(body[1:17]), generation, keys)
    if kind == FRAME_ACK:
        if len(body) < 2:
            raise DurableWireError("Malformed durable ACK")
        (count,) = struct.unpack(">H", body[:2])
        if count > MAX_KEYS or len(body) != 2 + 16 * count:
            raise DurableWireError("Malformed durable ACK")
        return Ack(tuple(_PAIR.unpack_from(body, 2 + 16 * i) for i in range(count)))
    raise DurableWireError(f"Unknown durable control frame {kind}")


class ControlDecoder:
    """Frames of a control stream (after its opening), fed in arbitrary chunks; bounded by MAX_FRAME_BODY.
    ``stream=True`` decodes an iroh-mode durable stream instead (ACK, DATA, FIN)."""

    def __init__(self, *, stream: bool = False) -> None:
        self._buffer = bytearray()
        self._kinds = (FRAME_ACK, FRAME_DATA, FRAME_FIN) if stream else (FRAME_HELLO, FRAME_ACK)
        self._limit = max(MAX_DATA, MAX_FRAME_BODY) if stream else MAX_FRAME_BODY

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Any]:
        self._buffer += data
        out: list[Any] = []
        while len(self._buffer) >= _FRAME_HEAD.size:
            kind, length = _FRAME_HEAD.unpack_from(self._buffer)
            if kind not in self._kinds:
                raise DurableWireError(f"Unknown durable frame {kind}")
            if length > self._limit:
                raise DurableWireError("Durable frame too large")
            end = _FRAME_HEAD.size + length
            if len(self._buffer) < end:
                break
            body = bytes(self._buffer[_FRAME_HEAD.size:end])
            del self._buffer[:end]
            out.append(_decode_body(kind, body))
        return out


__all__ = [
    "CONTROL_OPENING",
    "DURABLE_VERSION",
    "MAX_DATA",
    "MAX_FRAME_BODY",
    "MAX_KEYS",
    "RESUME_ANSWER_SIZE",
    "RESUME_HEADER_SIZE",
    "RESUME_OPENING",
    "TOKEN_SIZE",
    "Ack",
    "ControlDecoder",
    "ControlFrame",
    "Data",
    "DurableWireError",
    "Fin",
    "Hello",
    "StreamFrame",
    "decode_offset",
    "decode_resume",
    "encode_ack",
    "encode_data",
    "encode_fin",
    "encode_hello",
    "encode_offset",
    "encode_resume",
    "stream_key",
]
