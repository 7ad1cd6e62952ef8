"""Tunnel datagrams: how one local UDP datagram travels in RFC 9221 QUIC DATAGRAM frames (docs/datagrams.md).

A QUIC DATAGRAM frame is unreliable and unordered, so a lost packet delays nothing else - the service UDP
applications (WireGuard, games, VoIP) expect. Its payload is a *tunnel datagram*:

    flow_id  QUIC varint (RFC 9000 section 16): the flow's stream id
    kind     u8: 0x00 whole datagram, 0x01 fragment
    whole:     payload = the rest of the frame
    fragment:  packet u16 BE (per flow and direction, wraps) | index u8 | count u8 (2..MAX_FRAGMENTS) | payload

Why fragments: a 1350-byte QUIC packet holds ~1310 bytes of datagram, but WireGuard's default MTU gives
1452-byte UDP payloads. Splitting such a datagram into two frames keeps it unreliable and unordered (a lost
fragment loses that one datagram, as IP fragmentation would), which a per-datagram fallback to the reliable
stream would not. Past MAX_FRAGMENTS the loss multiplication is too high and the session sends the datagram on
the flow's stream instead.

Everything here is a pure codec plus one bounded machine (``Reassembler``); time comes in as ``now``.
"""

from __future__ import annotations

from collections import OrderedDict

import attrs

from tunnel_core.wire import MAX_UDP_DATAGRAM, WireError

__all__ = [
    "DATAGRAM_VERSION",
    "KIND_FRAGMENT",
    "KIND_WHOLE",
    "MAX_FRAGMENTS",
    "MAX_PARTIALS",
    "REASSEMBLY_TIMEOUT",
    "DatagramError",
    "Fragment",
    "Reassembler",
    "UdpStats",
    "Whole",
    "decode_datagram",
    "encode_fragments",
    "encode_whole",
    "fragment_overhead",
    "split_datagram",
    "take_payload",
    "whole_overhead",
]

#: The tunnel-datagram format this module speaks; advertised in the QUIC handshake (tunnel_core.quic.connection).
DATAGRAM_VERSION = 1
KIND_WHOLE = 0x00
KIND_FRAGMENT = 0x01
#: More fragments than this and one lost packet in ~MAX_FRAGMENTS loses the datagram; the stream takes it instead.
MAX_FRAGMENTS = 16
#: A fragment that waits longer than this for its siblings is dropped: nothing retransmits them, so only
#: reordering can still complete it, and a datagram that late is of no use to a game or a voice call.
REASSEMBLY_TIMEOUT = 1.0
#: Datagrams in reassembly at once (per session); the oldest is dropped to make room, so memory stays bounded
#: (at most MAX_PARTIALS x 64 KiB) whatever a peer sends.
MAX_PARTIALS = 64

_FRAGMENT_HEADER = 4  # packet u16, index u8, count u8


class DatagramError(WireError):
    """A tunnel datagram we cannot parse (the session drops it and counts it)."""


@attrs.frozen
class Whole:
    """A complete UDP datagram of flow ``flow_id``."""

    flow_id: int
    payload: bytes


@attrs.frozen
class Fragment:
    """Piece ``index`` of ``count`` of datagram number ``packet`` of flow ``flow_id``."""

    flow_id: int
    packet: int
    index: int
    count: int
    payload: bytes


def _varint(value: int) -> bytes:
    if value < 0x40:
        return bytes([value])
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x4000_0000:
        return (value | 0x8000_0000).to_bytes(4, "big")
    if value < 0x4000_0000_0000_0000:
        return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")
    raise DatagramError(f"flow id {value} does not fit a QUIC varint")


def _pull_varint(data: bytes) -> tuple[int, int]:
    """(value, bytes used) of the varint at the start of ``data``."""
    if not data:
        raise DatagramError("empty tunnel datagram")
    size = 1 << (data[0] >> 6)
    if len(data) < size:
        raise DatagramError("tunnel datagram truncated in its flow id")
    value = data[0] & 0x3F
    for byte in data[1:size]:
        value = (value << 8) | byte
    return value, size


def whole_overhead(flow_id: int) -> int:
    """Bytes a whole tunnel datagram adds to its payload."""
    return len(_varint(flow_id)) + 1


def fragment_overhead(flow_id: int) -> int:
    """Bytes each fragment adds to its piece of the payload."""
    return len(_varint(flow_id)) + 1 + _FRAGMENT_HEADER


def encode_whole(flow_id: int, payload: bytes) -> bytes:
    if len(payload) > MAX_UDP_DATAGRAM:
        raise DatagramError(f"UDP datagram too large: {len(payload)} bytes (max {MAX_UDP_DATAGRAM})")
    return _varint(flow_id) + bytes([KIND_WHOLE]) + payload


def encode_fragments(flow_id: int, packet: int, payload: bytes, budget: int) -> list[bytes] | None:
    """Split ``payload`` into fragments of at most ``budget`` bytes each (header included), of as equal a size as
    possible; None when that needs more than MAX_FRAGMENTS (or the budget cannot hold a fragment at all)."""
    if len(payload) > MAX_UDP_DATAGRAM:
        raise DatagramError(f"UDP datagram too large: {len(payload)} bytes (max {MAX_UDP_DATAGRAM})")
    room = budget - fragment_overhead(flow_id)
    if room <= 0:
        return None
    count = max(2, -(-len(payload) // room))
    if count > MAX_FRAGMENTS or len(payload) < count:
        return None
    size = -(-len(payload) // count)
    prefix = _varint(flow_id) + bytes([KIND_FRAGMENT]) + (packet & 0xFFFF).to_bytes(2, "big")
    return [
        prefix + bytes([index, count]) + payload[index * size : (index + 1) * size] for index in range(count)
    ]


def split_datagram(flow_id: int, packet: int, payload: bytes, room: int) -> list[bytes] | None:
    """The DATAGRAM frames for one UDP datagram given ``room`` bytes per frame: one whole frame when it fits,
    2..MAX_FRAGMENTS fragments (numbered ``packet``) when they do, None when the flow's stream must take it."""
    if whole_overhead(flow_id) + len(payload) <= room:
        return [encode_whole(flow_id, payload)]
    return encode_fragments(flow_id, packet, payload, room)


def decode_datagram(data: bytes) -> Whole | Fragment:
    """Parse one QUIC DATAGRAM payload; DatagramError on anything malformed."""
    flow_id, used = _pull_varint(data)
    if len(data) <= used:
        raise DatagramError("tunnel datagram has no kind byte")
    kind = data[used]
    body = data[used + 1 :]
    if kind == KIND_WHOLE:
        if len(body) > MAX_UDP_DATAGRAM:
            raise DatagramError(f"UDP datagram too large: {len(body)} bytes")
        return Whole(flow_id, bytes(body))
    if kind != KIND_FRAGMENT:
        raise DatagramError(f"unknown tunnel datagram kind {kind:#04x}")
    if len(body) < _FRAGMENT_HEADER + 1:
        raise DatagramError("tunnel datagram fragment too short")
    packet = (body[0] << 8) | body[1]
    index, count = body[2], body[3]
    if not 2 <= count <= MAX_FRAGMENTS or index >= count:
        raise DatagramError(f"bad fragment {index} of {count}")
    return Fragment(flow_id, packet, index, count, bytes(body[_FRAGMENT_HEADER:]))


@attrs.define
class UdpStats:
    """What happened to each UDP datagram of a session (logged when the tunnel closes; docs/datagrams.md)."""

    datagrams: int = 0  # sent whole in one QUIC DATAGRAM frame
    fragmented: int = 0  # sent as 2..MAX_FRAGMENTS DATAGRAM frames
    stream: int = 0  # sent on the flow's stream (no datagram support, a flow's first datagram, or too big)
    stream_fallback: int = 0  # of ``stream``: datagrams were negotiated but the datagram needs too many fragments
    dropped_oldest: int = 0  # DATAGRAM frames dropped from a full send queue (congestion window or pacing)
    dropped_backlog: int = 0  # stream-framed datagrams dropped because the stream's send buffer is full
    too_big: int = 0  # refused: more than 65535 bytes cannot be framed
    received: int = 0  # datagrams delivered to local sockets from DATAGRAM frames
    reassembled: int = 0  # of ``received``: put together from fragments
    reassembly_dropped: int = 0  # given up: a fragment never came (timeout) or room was needed
    malformed: int = 0  # DATAGRAM frames we could not parse
    unknown_flow: int = 0  # DATAGRAM frames for a flow that ended (or, on a full early queue, had not started)

    def summary(self) -> str:
        return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in attrs.asdict(self).items())


@attrs.define(eq=False)
class _Partial:
    count: int
    deadline: float
    parts: list[bytes | None]
    have: int = 0
    size: int = 0


class Reassembler:
    """Puts fragments back together, within MAX_PARTIALS datagrams in flight and REASSEMBLY_TIMEOUT each.

    ``expired`` counts datagrams given up (timeout or evicted for room), ``malformed`` fragments that contradict
    their siblings or would exceed 64 KiB.
    """

    def __init__(self, *, timeout: float = REASSEMBLY_TIMEOUT, max_partials: int = MAX_PARTIALS) -> None:
        self._timeout = timeout
        self._max_partials = max_partials
        self._partials: OrderedDict[tuple[int, int], _Partial] = OrderedDict()
        self.expired = 0
        self.malformed = 0

    def __len__(self) -> int:
        return len(self._partials)

    def add(self, fragment: Fragment, now: float) -> bytes | None:
        """Take one fragment; the whole datagram once its last fragment arrived, else None."""
        key = (fragment.flow_id, fragment.packet)
        partial = self._partials.get(key)
        if partial is None:
            while len(self._partials) >= self._max_partials:
                self._partials.popitem(last=False)
                self.expired += 1
            partial = _Partial(count=fragment.count, deadline=now + self._timeout, parts=[None] * fragment.count)
            self._partials[key] = partial
        if fragment.count != partial.count or partial.size + len(fragment.payload) > MAX_UDP_DATAGRAM:
            del self._partials[key]
            self.malformed += 1
            return None
        if partial.parts[fragment.index] is not None:
            return None  # a duplicate piece: QUIC does not produce them, a buggy peer might
        partial.parts[fragment.index] = fragment.payload
        partial.have += 1
        partial.size += len(fragment.payload)
        if partial.have < partial.count:
            return None
        del self._partials[key]
        return b"".join(p for p in partial.parts if p is not None)

    def get_timer(self) -> float | None:
        """The oldest partial's deadline (partials are kept in arrival order, so it is the first)."""
        for partial in self._partials.values():
            return partial.deadline
        return None

    def handle_timer(self, now: float) -> None:
        while self._partials:
            key, partial = next(iter(self._partials.items()))
            if partial.deadline > now:
                return
            del self._partials[key]
            self.expired += 1

    def forget_flow(self, flow_id: int) -> None:
        """The flow ended: its unfinished datagrams will never complete."""
        for key in [k for k in self._partials if k[0] == flow_id]:
            del self._partials[key]


def take_payload(item: Whole | Fragment, reassembler: Reassembler, stats: UdpStats, now: float) -> bytes | None:
    """The UDP datagram ``item`` completes (itself when whole), counting in ``stats``; None while incomplete."""
    if isinstance(item, Fragment):
        expired, malformed = reassembler.expired, reassembler.malformed
        payload = reassembler.add(item, now)
        stats.reassembly_dropped += reassembler.expired - expired
        stats.malformed += reassembler.malformed - malformed
        if payload is None:
            return None
        stats.reassembled += 1
    else:
        payload = item.payload
    stats.received += 1
    return payload
