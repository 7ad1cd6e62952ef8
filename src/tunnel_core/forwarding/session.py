"""The forwarding session: local TCP connections and UDP peers carried over the streams of one QUIC connection.

Wire behaviour follows upstream's ICE modes (reference 3.1, 3.3): one bidirectional stream per local TCP connection,
opened by the client with a single 0x00 marker byte that the server drops before dialling; UDP datagrams framed as
u16 length + payload on a stream. Two deliberate improvements over upstream, both invisible on the wire:

* half-close is preserved (a FIN travels one way while the other direction keeps flowing), and resets propagate;
* each local UDP peer gets its own stream, so the server opens one socket per peer and replies reach only the
  right peer (upstream keeps one stream and answers whoever sent last).

When both ends negotiated tunnel datagrams in the QUIC handshake (``TunnelQuicConnection.datagrams_negotiated``,
docs/datagrams.md), a UDP flow still opens with its stream (its first datagram travels there, reliably), but every
later datagram travels as an RFC 9221 DATAGRAM frame - whole, in 2..16 fragments, or on the stream when larger -
so a lost packet delays no other datagram. The adapter sees the same events either way: the choice lives here.

Several forwards in one session (docs/forwards.md): when both ends agreed on it in the signaling (the client asked
for more than one forward and the server answered with a verdict per forward), the session is built with ``routes``
and every client stream, TCP or UDP, starts with a FORWARD_HEADER (the forward's index, u16 big-endian) instead of
the 0x00 marker; the server routes the stream by it. Without ``routes`` the wire is upstream's, byte for byte.

Durable streams (docs/durable.md): when both ends advertised the capability in the QUIC handshake and the owner
called ``enable_durable``, TCP flows keep what they sent until the peer's application confirmed it and survive a
reconnect; the part that speaks that is ``tunnel_core.forwarding.durable.DurableLink``. A plain or reverse flow is
durable from its start; a dynamic (SOCKS5) flow carries a SourceRequest/SourceResponse first and can be resumed only
once both ends have passed it (the server once its dial succeeded, the client once it read the acceptance); a
client's reverse flow likewise once its dial succeeded. Offsets count payload bytes only.

Backpressure runs both ways: reading a local socket pauses while its stream's QUIC send buffer is above
``high_water`` (and resumes below ``low_water``), and QUIC receive credit is returned only for bytes the local socket
actually took (``flow_write_pending``), so a slow local reader slows the remote sender.

The owner (a Peer) feeds every QUIC event to ``handle_quic_event`` and flushes the QUIC connection after each call
into this session; the adapter drains ``next_event`` and performs the socket actions.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Sequence
from typing import Literal

import attrs
from aioquic.quic import events as qe

from tunnel_core.datagram import (
    REASSEMBLY_TIMEOUT,
    DatagramError,
    Fragment,
    Reassembler,
    UdpStats,
    Whole,
    decode_datagram,
    split_datagram,
    take_payload,
)
from tunnel_core.errors import LocalProtocolError
from tunnel_core.forwarding.durable import (
    OLD_PEER_REASON,
    REPLAY_LIMIT,
    REPLAY_LOW,
    UNKNOWN_REASON,
    DurableLink,
    DurableRegistry,
    DurableStream,
    DurableStreams,
)
from tunnel_core.forwarding.events import (
    AbortTcp,
    CloseTcp,
    CloseUdp,
    DialTcp,
    DropTcp,
    DynamicReply,
    ForwardingEvent,
    OpenUdp,
    PauseReading,
    ResolveTarget,
    ResumeReading,
    SendTcp,
    SendUdp,
    SendUdpTo,
    ShutdownTcpWrite,
)
from tunnel_core.policy import AccessPolicy, Decision, NeedsResolution, PolicyError, Source, parse_source
from tunnel_core.quic.connection import TunnelQuicConnection
from tunnel_core.socks5 import CONNECTION_REFUSED as SOCKS_CONNECTION_REFUSED
from tunnel_core.socks5 import GENERAL_FAILURE as SOCKS_GENERAL_FAILURE
from tunnel_core.socks5 import SUCCEEDED as SOCKS_SUCCEEDED
from tunnel_core.socks5 import refusal_code as socks_refusal_code
from tunnel_core.types import Address
from tunnel_core.wire import (
    MAX_UDP_DATAGRAM,
    STREAM_OPEN_MARKER,
    MessageReader,
    SourceRequest,
    SourceResponse,
    UdpFrameDecoder,
    WireError,
    decode_source_request,
    decode_source_response,
    encode_source_request,
    encode_source_response,
    encode_udp_frame,
)

#: Application error codes on RESET_STREAM / STOP_SENDING; informational only, the peer treats them alike.
RESET_LOCAL_ERROR = 0  # the local socket was reset or failed
RESET_DIAL_FAILED = 1  # the server could not reach the target
RESET_REJECTED = 2  # over max_flows, or a stream the protocol does not allow
RESET_BAD_FRAMING = 3  # a UDP stream ended in the middle of a frame
RESET_IDLE = 4  # an idle UDP flow was retired

#: Bytes of the forward index that opens every stream of a session with several forwards.
FORWARD_HEADER_SIZE = 2

DEFAULT_HIGH_WATER = 1 << 20
DEFAULT_LOW_WATER = 256 << 10
#: With the default thresholds a TCP flow's high water follows the path: SEND_WINDOW_FACTOR x the congestion window
#: (bandwidth x RTT and the queue the controller keeps, as the controller sees it), between DEFAULT_HIGH_WATER and
#: MAX_HIGH_WATER, and reading resumes at half of it. Why: a fixed 1 MiB, resuming at 256 kB, left one TCP connection
#: on a 100 Mbit/s, 50 ms path without data to send for part of every cycle (~64 Mbit/s where 4 connections moved
#: 93, docs/performance.md). The cap is the QUIC stream window (DEFAULT_WINDOW, 8 MiB): the peer cannot take more.
#: Flows that are paused already share it (see _tcp_high_water), so many fast connections do not multiply it.
SEND_WINDOW_FACTOR = 2
MAX_HIGH_WATER = 8 << 20
DEFAULT_UDP_IDLE_TIMEOUT = 120.0
#: Client: live UDP peers per tunnel before the least recently active one is retired to make room. Why a cap: each
#: peer holds a QUIC stream (the server grants a fixed number at a time) and a socket on the server; a DNS client
#: that uses a fresh source port per query would otherwise exhaust both long before the idle timeout frees them.
DEFAULT_MAX_UDP_PEERS = 256
#: Server: datagrams for a flow whose opening stream frame has not arrived yet (it was lost or reordered) are held,
#: this many at most and for REASSEMBLY_TIMEOUT, then delivered right after the flow opens.
EARLY_DATAGRAMS = 64
#: Peer stream ids this far above the lowest unseen one may be announced by a datagram before their stream.
_EARLY_WINDOW = 4 * 1024

log = logging.getLogger("tunnel_core.forwarding")


class _Kind(enum.Enum):
    TCP = "tcp"
    UDP = "udp"


@attrs.frozen
class Route:
    """One forward of a session that carries several: its protocol and, on the server, the addresses its source
    resolved to when the policy allowed it (empty: refused, its streams are reset).

    A ``dynamic`` route (SOCKS5, docs/forwards.md) names its target per stream: each stream carries a
    SourceRequest after its forward header, which the server checks with ``policy`` (None: refused).

    A ``reverse`` route runs the other way: the server listens (``granted``) and opens the streams, the client
    dials its ``addresses``."""

    protocol: Literal["tcp", "udp", "dynamic", "reverse"]
    addresses: tuple[Address, ...] = ()
    policy: AccessPolicy | None = None
    granted: bool = False

    @property
    def allowed(self) -> bool:
        return bool(self.addresses) or self.policy is not None or self.granted


def forward_header(index: int) -> bytes:
    """The bytes that open a stream of forward ``index`` (sessions with several forwards only)."""
    if not 0 <= index <= 0xFFFF:
        raise LocalProtocolError(f"forward index out of range: {index}")
    return index.to_bytes(FORWARD_HEADER_SIZE, "big")


@attrs.define(eq=False)
class _Flow:
    flow_id: int
    kind: _Kind
    # QUIC -> local
    awaiting_marker: bool = False  # server TCP: the 0x00 byte is still to be dropped
    connected: bool = True  # server TCP: False until the dial succeeded
    early: bytearray = attrs.Factory(bytearray)  # server TCP: bytes that arrived while dialling
    early_fin: bool = False
    recv_done: bool = False  # the peer's FIN was passed on (or reset)
    delivered: int = 0  # bytes handed to the adapter in SendTcp
    credited: int = 0  # of those, bytes returned to QUIC as credit
    # local -> QUIC
    send_done: bool = False  # our FIN is queued
    # UDP
    decoder: UdpFrameDecoder | None = None
    peer: Address | None = None  # client UDP: the local peer this stream belongs to
    last_active: float = 0.0
    packet: int = 0  # UDP over datagrams: the next fragmented datagram's number (u16, wraps)
    forward: int = 0  # the forward (route index) this flow belongs to
    # dynamic forwards: the SourceRequest (server) or SourceResponse (client) still being read, and the target
    request: MessageReader | None = None
    source: Source | None = None
    # durable streams: the replay state, and (client, a resumed flow) the server's answer still being read
    durable: DurableStream | None = None
    resuming: bytearray | None = None


def _client_initiated(stream_id: int) -> bool:
    return stream_id & 1 == 0


def _bidirectional(stream_id: int) -> bool:
    return stream_id & 2 == 0


class ForwardingSession:
    """Bridges local sockets (described as events) and the streams of one ``TunnelQuicConnection``."""

    def __init__(
        self,
        quic: TunnelQuicConnection,
        *,
        is_client: bool,
        protocol: Literal["tcp", "udp"],
        target_addresses: Sequence[Address] = (),
        high_water: int = DEFAULT_HIGH_WATER,
        low_water: int = DEFAULT_LOW_WATER,
        udp_idle_timeout: float = DEFAULT_UDP_IDLE_TIMEOUT,
        max_flows: int = 0,
        max_udp_peers: int = DEFAULT_MAX_UDP_PEERS,
        routes: Sequence[Route] | None = None,
    ) -> None:
        if routes is not None:
            if not routes or len(routes) > 0xFFFF:
                raise LocalProtocolError("a session with forwards needs 1..65535 routes")
            first = routes[0].protocol
            protocol = "tcp" if first in ("dynamic", "reverse") else first  # type: ignore[assignment]
        if protocol not in ("tcp", "udp"):
            raise LocalProtocolError(f"protocol must be 'tcp' or 'udp', got {protocol!r}")
        if quic.configuration.is_client != is_client:
            raise LocalProtocolError("the session's role must match the QUIC connection's")
        if not 0 <= low_water <= high_water:
            raise LocalProtocolError("need 0 <= low_water <= high_water")
        if udp_idle_timeout <= 0:
            raise LocalProtocolError("udp_idle_timeout must be positive")
        if max_flows < 0:
            raise LocalProtocolError("max_flows must be >= 0 (0 = unlimited)")
        if max_udp_peers < 1:
            raise LocalProtocolError("max_udp_peers must be >= 1")
        if not is_client and not target_addresses and routes is None:
            raise LocalProtocolError("a server session needs the target addresses it may use")
        self._quic = quic
        self._is_client = is_client
        self._kind = _Kind(protocol)
        self._targets: tuple[Address, ...] = tuple((str(h), int(p)) for h, p in target_addresses)
        #: With routes every stream carries a forward header; without, the session is upstream's single forward.
        self._tagged = routes is not None
        self._routes: tuple[Route, ...] = tuple(routes) if routes is not None else (Route(protocol, self._targets),)
        self._has_udp = any(r.protocol == "udp" for r in self._routes)
        self._headers: dict[int, bytearray] = {}  # server: streams whose forward header is still incomplete
        self._high_water = high_water
        self._low_water = low_water
        #: the thresholds follow the path (SEND_WINDOW_FACTOR) unless the owner chose them
        self._auto_water = (high_water, low_water) == (DEFAULT_HIGH_WATER, DEFAULT_LOW_WATER)
        self._udp_idle_timeout = udp_idle_timeout
        self._max_flows = max_flows
        self._max_udp_peers = max_udp_peers
        self._flows: dict[int, _Flow] = {}
        self._udp_by_peer: dict[tuple[int, Address], int] = {}
        self._paused: set[int] = set()
        self._events: deque[ForwardingEvent] = deque()
        self._now = 0.0
        # Peer-initiated stream ids seen so far: all below the floor, plus the set (streams may arrive reordered).
        self._peer_floor = 1 if is_client else 0
        self._peer_seen: set[int] = set()
        # UDP over QUIC datagrams: decided once, by the handshake both ends just completed.
        self.stats = UdpStats()
        self.datagrams = self._has_udp and bool(getattr(quic, "datagrams_negotiated", False))
        self._reassembler = Reassembler()
        self._early: deque[tuple[float, Whole | Fragment]] = deque()
        self._durable: DurableLink | None = None
        if self._has_udp:
            log.debug("UDP travels %s", "as QUIC datagrams" if self.datagrams else "on streams (no datagram support)")

    # ------------------------------------------------------------------------------------------ properties

    @property
    def flows(self) -> int:
        """Flows (TCP connections or UDP peers) that are still open in at least one direction."""
        return len(self._flows)

    @property
    def protocol(self) -> str:
        return self._kind.value

    @property
    def durable(self) -> bool:
        """Durable streams are on for this connection (docs/durable.md)."""
        return self._durable is not None

    def enable_durable(self, source: DurableStreams | DurableRegistry, now: float) -> None:
        """Right after the handshake: make TCP flows durable if both ends advertised the capability. A
        client passes its ``DurableStreams`` (held streams resume here, or are dropped if this connection cannot
        resume them), a server its ``DurableRegistry``."""
        negotiated = bool(getattr(self._quic, "durable_negotiated", False))
        usable = negotiated and any(r.protocol != "udp" for r in self._routes)
        if usable:
            self._durable = DurableLink(self, source, now)
        elif isinstance(source, DurableStreams):
            for stream in list(source.streams.values()):
                stream.lost = True
                if stream.local is not None and not stream.local_closed:
                    self._events.append(DropTcp(stream, OLD_PEER_REASON))
            source.streams.clear()

    def durable_stream(self, flow_id: int) -> DurableStream | None:
        """The replay state of a durable flow; the adapter keeps its local socket's object in ``local``."""
        flow = self._flows.get(flow_id)
        return None if flow is None else flow.durable

    # ------------------------------------------------------------------------------------------ TCP, adapter side

    def open_tcp(self, now: float, forward: int = 0) -> int:
        """Client (or server, for a reverse forward): a local TCP connection was accepted on ``forward``'s
        listener; returns its flow id (a new bidirectional stream)."""
        if self._is_client:
            self._require(client=True, kind=_Kind.TCP, forward=forward)
        else:
            self._require(client=False, kind=_Kind.TCP, forward=forward, protocol="reverse")
        self._now = now
        flow_id = self._quic.get_next_available_stream_id(is_unidirectional=False)
        # The marker (or forward header) makes aioquic emit a STREAM frame at once, so the server learns of the
        # stream and dials.
        self._quic.send_stream_data(flow_id, forward_header(forward) if self._tagged else STREAM_OPEN_MARKER)
        flow = self._flows[flow_id] = _Flow(flow_id, _Kind.TCP, forward=forward)
        if self._durable is not None:  # a client's plain forward, or a server's reverse one
            self._durable.opened(flow)
        return flow_id

    def flow_data(self, flow_id: int, data: bytes) -> None:
        """Bytes read from the flow's local socket."""
        flow = self._flows.get(flow_id)
        if flow is None or flow.kind is not _Kind.TCP:
            return  # the flow ended while the adapter was reading; the bytes have nowhere to go
        if flow.send_done:
            raise LocalProtocolError(f"flow {flow_id}: data after flow_eof")
        if not flow.connected:
            raise LocalProtocolError(f"flow {flow_id}: data before flow_connected")
        if not data:
            return
        replay = flow.durable
        if replay is not None:
            replay.record(data)
            if flow.resuming is None:
                self._quic.send_stream_data(flow_id, data)
            over = replay.unconfirmed > REPLAY_LIMIT
        else:
            self._quic.send_stream_data(flow_id, data)
            over = False
        if over or self._quic.send_buffer_size(flow_id) > self._tcp_high_water():
            self._pause(flow_id)

    def _pause(self, flow_id: int) -> None:
        if flow_id not in self._paused:
            self._paused.add(flow_id)
            self._events.append(PauseReading(flow_id))

    def flow_eof(self, flow_id: int) -> None:
        """The local peer shut down its writing side: send FIN; the other direction keeps flowing."""
        flow = self._flows.get(flow_id)
        if flow is None or flow.kind is not _Kind.TCP or flow.send_done:
            return
        flow.send_done = True
        self._paused.discard(flow_id)
        if flow.durable is not None:
            flow.durable.fin_sent = True
        if flow.resuming is None:
            self._quic.send_stream_data(flow_id, b"", end_stream=True)
        self._maybe_close(flow)

    def flow_reset(self, flow_id: int) -> None:
        """The local socket failed or was reset: reset the stream both ways. The adapter already closed it."""
        flow = self._flows.get(flow_id)
        if flow is None:
            return
        self._abort_stream(flow_id, RESET_LOCAL_ERROR)
        self._forget(flow)

    def flow_connected(self, flow_id: int) -> None:
        """Server: the dial for ``flow_id`` succeeded; bytes that arrived meanwhile are delivered now."""
        flow = self._flows.get(flow_id)
        if flow is None:
            # The peer reset the flow while we dialled: the adapter must drop the socket it just got.
            self._events.append(AbortTcp(flow_id))
            return
        if flow.connected:
            return
        flow.connected = True
        if flow.source is not None:  # a dynamic flow: tell the client only now, so its SOCKS reply is the truth
            self._quic.send_stream_data(flow_id, encode_source_response(SourceResponse(accepted=True)))
        if self._durable is not None and flow.durable is None:
            # A server's dynamic flow or a client's reverse one is a plain byte stream from here on (after the
            # SourceResponse just sent): durable now, its offsets counted from here. Bytes that arrived while
            # dialling are delivered below, so they count too.
            self._durable.opened(flow)
        if flow.early:
            data, flow.early = bytes(flow.early), bytearray()
            self._deliver_tcp(flow, data)
        if flow.early_fin:
            self._finish_receiving_tcp(flow)

    def flow_connect_failed(self, flow_id: int) -> None:
        """Server: no target address answered; the client sees its stream reset (upstream: the stream just ends)."""
        flow = self._flows.get(flow_id)
        if flow is None:
            return
        self._abort_stream(flow_id, RESET_DIAL_FAILED)
        self._forget(flow)

    def flow_write_pending(self, flow_id: int, pending: int) -> None:
        """How many delivered bytes the adapter still holds unwritten for this flow's socket.

        Only the bytes the socket took are returned to QUIC as credit, which is what makes a slow local reader
        slow the remote sender down.
        """
        flow = self._flows.get(flow_id)
        if flow is None or flow.kind is not _Kind.TCP:
            return
        if pending < 0:
            raise LocalProtocolError("pending bytes cannot be negative")
        taken = flow.delivered - min(pending, flow.delivered)
        if taken > flow.credited:
            self._quic.consume(flow_id, taken - flow.credited)
            flow.credited = taken

    #: docs/architecture.md's earlier name for the same report.
    flow_write_drained = flow_write_pending

    # ------------------------------------------------------------------------------------------ UDP, adapter side

    def udp_received(self, peer: Address, data: bytes, now: float, forward: int = 0) -> None:
        """Client: a datagram from local UDP peer ``peer`` (on ``forward``'s socket); each peer gets its own
        stream."""
        self._require(client=True, kind=_Kind.UDP, forward=forward)
        self._now = now
        if len(data) > MAX_UDP_DATAGRAM:
            self.stats.too_big += 1
            return  # cannot be framed; a real UDP socket never hands us more anyway
        key = (forward, peer)
        flow_id = self._udp_by_peer.get(key)
        if flow_id is None:
            if len(self._udp_by_peer) >= self._max_udp_peers:
                # Full: retire the least recently active peer (a clean FIN, as an idle expiry would); it gets a
                # fresh flow if it speaks again. Its stream's credit returns once the server has closed it.
                oldest = min(self._udp_by_peer.values(), key=lambda fid: self._flows[fid].last_active)
                self._expire_udp(self._flows[oldest])
            flow_id = self._quic.get_next_available_stream_id(is_unidirectional=False)
            flow = _Flow(flow_id, _Kind.UDP, decoder=UdpFrameDecoder(), peer=peer, last_active=now, forward=forward)
            self._flows[flow_id] = flow
            self._udp_by_peer[key] = flow_id
            if self._tagged:
                self._quic.send_stream_data(flow_id, forward_header(forward))
            # The first datagram opens the stream (QUIC shows the server a stream only once it carries data), so
            # the server learns of the flow reliably; the next ones may travel as datagrams.
            self._send_udp_on_stream(flow, data, now)
            return
        self._send_udp(self._flows[flow_id], data, now)

    def udp_reply(self, flow_id: int, data: bytes, now: float | None = None) -> None:
        """Server: a datagram the target sent back on ``flow_id``'s socket.

        Pass ``now`` so replies keep the flow from idling out; without it the last time the session saw is used.
        """
        if self._is_client or not self._has_udp:
            raise LocalProtocolError("only a server session with a UDP forward can do that")
        if now is not None:
            self._now = max(self._now, now)
        flow = self._flows.get(flow_id)
        if flow is None:
            return
        if len(data) > MAX_UDP_DATAGRAM:
            self.stats.too_big += 1
            return
        self._send_udp(flow, data, self._now)

    # ------------------------------------------------------------------------------------------ driving

    def handle_quic_event(self, event: qe.QuicEvent, now: float) -> None:
        self._now = now
        if isinstance(event, qe.StreamDataReceived):
            self._on_stream_data(event.stream_id, event.data, event.end_stream, now)
        elif isinstance(event, qe.DatagramFrameReceived):
            self._on_datagram(event.data, now)
        elif isinstance(event, qe.StreamReset | qe.StopSendingReceived):
            self._on_peer_abort(event.stream_id)
        elif isinstance(event, qe.ConnectionTerminated):
            self._on_connection_lost()

    def get_timer(self) -> float | None:
        """The next UDP idle expiry, or durable streams' next confirmation."""
        ack_at = None if self._durable is None else self._durable.ack_at
        if not self._has_udp:
            return ack_at
        deadlines = [] if ack_at is None else [ack_at]
        deadlines += [f.last_active + self._udp_idle_timeout for f in self._flows.values() if f.kind is _Kind.UDP]
        reassembly = self._reassembler.get_timer()
        if reassembly is not None:
            deadlines.append(reassembly)
        if self._early:
            deadlines.append(self._early[0][0])
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self._durable is not None:
            self._durable.handle_timer(now)
        expired = [
            f for f in self._flows.values() if f.kind is _Kind.UDP and f.last_active + self._udp_idle_timeout <= now
        ]
        for flow in expired:
            self._expire_udp(flow)
        self._reassembler.handle_timer(now)
        while self._early and self._early[0][0] <= now:
            self._early.popleft()
            self.stats.unknown_flow += 1

    def next_event(self) -> ForwardingEvent | None:
        """The next local action. Drain this after every batch of datagrams fed to QUIC: acknowledgements raise no
        QUIC event, so this is where the session notices drained send buffers and emits ``ResumeReading``."""
        if not self._events and self._paused:
            self._check_resume()
        if self._events:
            return self._events.popleft()
        return None

    # ------------------------------------------------------------------------------------------ QUIC side

    def _on_stream_data(self, stream_id: int, data: bytes, fin: bool, now: float) -> None:
        if self._durable is not None and self._durable.owns(stream_id):
            self._durable.on_stream(stream_id, data, fin, now)
            return
        flow = self._flows.get(stream_id)
        if flow is None:
            if stream_id not in self._headers:
                flow = self._accept_stream(stream_id, now)
            if flow is None:
                if stream_id not in self._headers:
                    return
                flow, data = self._read_header(stream_id, data, fin, now)
                if flow is None:
                    return
        if flow.kind is _Kind.TCP:
            self._on_tcp_data(flow, data, fin)
        else:
            self._on_udp_data(flow, data, fin, now)
            if self._early and flow.flow_id in self._flows:
                self._deliver_early(flow, now)

    def _accept_stream(self, stream_id: int, now: float) -> _Flow | None:
        """A stream we do not track: a new one from the peer, or leftovers of a flow that already ended."""
        if _client_initiated(stream_id) == self._is_client or not self._is_new_peer_stream(stream_id):
            return None
        self._mark_peer_stream(stream_id)
        # Upstream's server never opens streams; ours does only for reverse forwards, in a session with routes.
        if (self._is_client and not self._tagged) or not _bidirectional(stream_id):
            self._abort_stream(stream_id, RESET_REJECTED)  # upstream's server never opens streams
            return None
        if self._max_flows and len(self._flows) + len(self._headers) >= self._max_flows:
            self._abort_stream(stream_id, RESET_REJECTED)
            return None
        if self._tagged or self._durable is not None:
            self._headers[stream_id] = bytearray()  # routed once its forward header (or opening) is complete
            return None
        if self._kind is _Kind.TCP:
            flow = _Flow(stream_id, _Kind.TCP, awaiting_marker=True, connected=False)
        else:
            flow = _Flow(stream_id, _Kind.UDP, decoder=UdpFrameDecoder(), last_active=now)
            self._events.append(OpenUdp(stream_id, self._targets))
        self._flows[stream_id] = flow
        return flow

    def _read_header(self, stream_id: int, data: bytes, fin: bool, now: float) -> tuple[_Flow | None, bytes]:
        """Server, several forwards: collect the stream's forward header, then open the flow its route names."""
        buffer = self._headers[stream_id]
        buffer += data
        if self._durable is not None:
            taken = self._durable.read_opening(stream_id, buffer, fin, now)
            if taken is not None:  # a durable opening (the link owns the stream now) or the start of one
                if taken or fin:
                    del self._headers[stream_id]
                return None, b""
            if not self._tagged:  # upstream's one-forward wire: the 0x00 marker, as in _accept_stream
                del self._headers[stream_id]
                flow = self._flows[stream_id] = _Flow(stream_id, _Kind.TCP, awaiting_marker=True, connected=False)
                self._durable.opened(flow)
                return flow, bytes(buffer)
        if len(buffer) < FORWARD_HEADER_SIZE:
            if fin:  # ended before it said which forward: nothing to do but end ours too
                del self._headers[stream_id]
                self._abort_stream(stream_id, RESET_REJECTED)
            return None, b""
        del self._headers[stream_id]
        index = int.from_bytes(buffer[:FORWARD_HEADER_SIZE], "big")
        rest = bytes(buffer[FORWARD_HEADER_SIZE:])
        self._quic.consume(stream_id, FORWARD_HEADER_SIZE)
        route = self._routes[index] if index < len(self._routes) else None
        if route is not None and (route.protocol == "reverse") != self._is_client:
            route = None  # a stream in the wrong direction for its forward
        if route is None or not route.allowed:
            self._abort_stream(stream_id, RESET_REJECTED)  # a refused (or unknown) forward: nothing is dialled
            return None, b""
        flow: _Flow
        if route.protocol == "dynamic":
            flow = _Flow(stream_id, _Kind.TCP, connected=False, forward=index,
                         request=MessageReader("SourceRequest"))
        elif route.protocol in ("tcp", "reverse"):
            flow = _Flow(stream_id, _Kind.TCP, connected=False, forward=index)
            self._events.append(DialTcp(stream_id, route.addresses))
            if self._durable is not None and route.protocol == "tcp":
                self._durable.opened(flow)
        else:
            flow = _Flow(stream_id, _Kind.UDP, decoder=UdpFrameDecoder(), last_active=now, forward=index)
            self._events.append(OpenUdp(stream_id, route.addresses))
        self._flows[stream_id] = flow
        return flow, rest

    def _on_tcp_data(self, flow: _Flow, data: bytes, fin: bool) -> None:
        if flow.resuming is not None:
            assert self._durable is not None
            data = self._durable.answer_received(flow, data)
            if flow.resuming is not None or flow.flow_id not in self._flows:
                return
        if flow.request is not None:
            data = self._read_preamble(flow, data, fin)
            if flow.request is not None or flow.flow_id not in self._flows:
                return
        if flow.awaiting_marker:
            if not data:
                if fin:  # the stream ended before it even started: just end ours too
                    self._quic.send_stream_data(flow.flow_id, b"", end_stream=True)
                    self._forget(flow)
                return
            # Upstream reads and discards exactly one byte without looking at it; so do we.
            data = data[len(STREAM_OPEN_MARKER) :]
            flow.awaiting_marker = False
            self._quic.consume(flow.flow_id, len(STREAM_OPEN_MARKER))
            self._events.append(DialTcp(flow.flow_id, self._targets))
        if flow.recv_done:
            return
        if not flow.connected:
            flow.early += data
            flow.early_fin = flow.early_fin or fin
            return
        if data:
            self._deliver_tcp(flow, data)
        if fin:
            self._finish_receiving_tcp(flow)

    # ------------------------------------------------------------------------------------------ dynamic forwards

    def open_dynamic(self, now: float, forward: int, source: str) -> int:
        """Client: an application asked this dynamic forward's SOCKS listener for ``source`` (tcp://host:port, a
        name unresolved); returns the flow id. ``DynamicReply`` follows once the server answered."""
        self._require(client=True, kind=_Kind.TCP, forward=forward, protocol="dynamic")
        self._now = now
        flow_id = self._quic.get_next_available_stream_id(is_unidirectional=False)
        request = encode_source_request(SourceRequest(source=source))
        self._quic.send_stream_data(flow_id, forward_header(forward) + request)
        flow = self._flows[flow_id] = _Flow(flow_id, _Kind.TCP, forward=forward,
                                            request=MessageReader("SourceResponse"))
        if self._durable is not None:
            # The application may send before the server answered (the adapter reads on): keep those bytes too,
            # but resume the flow only once the server accepted (``_on_source_response``).
            self._durable.opened(flow, register=False)
        return flow_id

    def flow_resolved(self, flow_id: int, addresses: Sequence[str]) -> None:
        """Server: the names of a dynamic flow's target resolved to ``addresses`` (empty: they did not)."""
        flow = self._flows.get(flow_id)
        if flow is None or flow.source is None or flow.connected:
            return
        policy = self._routes[flow.forward].policy
        assert policy is not None
        self._decided(flow, policy.decide_resolved(flow.source, addresses))

    def _read_preamble(self, flow: _Flow, data: bytes, fin: bool) -> bytes:
        """Dynamic flows: the SourceRequest (server) or SourceResponse (client) before the payload."""
        assert flow.request is not None
        try:
            body = flow.request.feed(data) if data else None
            if body is None:
                if fin:
                    flow.request.feed_eof()
                return b""
            reader, flow.request = flow.request, None
            self._quic.consume(flow.flow_id, 4 + len(body))
            if self._is_client:
                self._on_source_response(flow, decode_source_response(body, expected_version=1))
            else:
                self._on_source_request(flow, decode_source_request(body, expected_version=1))
        except (WireError, PolicyError) as exc:
            log.debug("dynamic flow %d: %s", flow.flow_id, exc)
            self._refuse_dynamic(flow, None)
            return b""
        return reader.remainder

    def _on_source_request(self, flow: _Flow, request: SourceRequest) -> None:
        source = parse_source(request.source)
        if source.protocol != "tcp":
            raise PolicyError("dynamic forwards carry TCP only")
        flow.source = source
        policy = self._routes[flow.forward].policy
        assert policy is not None
        verdict = policy.decide(source)
        if isinstance(verdict, NeedsResolution):
            self._events.append(ResolveTarget(flow.flow_id, verdict.host, verdict.port))
        else:
            self._decided(flow, verdict)

    def _decided(self, flow: _Flow, decision: Decision) -> None:
        if not decision.allowed:
            reason = decision.reason or "not allowed"
            log.info("Dynamic target %s refused: %s", flow.source.url() if flow.source else "?", reason)
            # The verdict, then FIN; no STOP_SENDING, which could overtake the verdict. The client resets the rest.
            self._quic.send_stream_data(
                flow.flow_id, encode_source_response(SourceResponse(accepted=False, reason=reason)), end_stream=True
            )
            self._forget(flow)
            return
        self._events.append(DialTcp(flow.flow_id, decision.addresses))

    def _on_source_response(self, flow: _Flow, response: SourceResponse) -> None:
        if response.accepted:
            if flow.durable is not None and self._durable is not None:
                self._durable.register(flow)  # the server dialled: both ends carry a plain byte stream now
            self._events.append(DynamicReply(flow.flow_id, SOCKS_SUCCEEDED))
            return
        reason = response.reason or ""
        code = socks_refusal_code(reason)
        log.info("Dynamic target refused by the server: %s", reason)
        self._refuse_dynamic(flow, code)

    def _refuse_dynamic(self, flow: _Flow, code: int | None) -> None:
        """End a dynamic flow before it carried payload; the client tells its application ``code``."""
        self._abort_stream(flow.flow_id, RESET_REJECTED)
        if self._is_client:
            self._events.append(DynamicReply(flow.flow_id, SOCKS_GENERAL_FAILURE if code is None else code))
        self._forget(flow)

    def _deliver_tcp(self, flow: _Flow, data: bytes) -> None:
        flow.delivered += len(data)
        events = self._events
        last = events[-1] if events else None
        if type(last) is SendTcp and last.flow_id == flow.flow_id:
            # Stream frames of one connection arriving in one batch become one write: aioquic raises an event per
            # ~1.3 KB frame, and every event costs the adapter a dispatch and a write (a bulk receiver drains ~60
            # datagrams per wake-up). Only the newest event is extended, so nothing is reordered.
            if isinstance(last.data, bytearray):
                last.data.extend(data)
            else:
                events[-1] = SendTcp(flow.flow_id, bytearray(last.data) + data)
        else:
            events.append(SendTcp(flow.flow_id, data))
        if flow.durable is not None and self._durable is not None:
            self._durable.received(flow.durable, len(data), self._now)

    def _finish_receiving_tcp(self, flow: _Flow) -> None:
        flow.recv_done = True
        if flow.durable is not None and self._durable is not None and not flow.durable.fin_received:
            flow.durable.fin_received = True
            self._durable.received(flow.durable, 1, self._now)
        self._events.append(ShutdownTcpWrite(flow.flow_id))
        self._maybe_close(flow)

    def _maybe_close(self, flow: _Flow) -> None:
        if flow.send_done and flow.recv_done:
            self._events.append(CloseTcp(flow.flow_id))
            self._forget(flow, cleanly=True)

    def _on_udp_data(self, flow: _Flow, data: bytes, fin: bool, now: float) -> None:
        assert flow.decoder is not None
        # Datagrams are passed on at once (UDP has no backpressure), so the bytes are consumed at once.
        self._quic.consume(flow.flow_id, len(data))
        if data:
            flow.last_active = now
            for datagram in flow.decoder.feed(data):
                if flow.peer is not None:
                    self._events.append(SendUdpTo(flow.peer, datagram, flow.forward))
                else:
                    self._events.append(SendUdp(flow.flow_id, datagram))
        if not fin:
            return
        try:
            flow.decoder.feed_eof()
        except WireError:
            self._abort_stream(flow.flow_id, RESET_BAD_FRAMING)
        else:
            if not flow.send_done:
                flow.send_done = True
                self._quic.send_stream_data(flow.flow_id, b"", end_stream=True)
        self._end_udp(flow)

    def _send_udp(self, flow: _Flow, data: bytes, now: float) -> None:
        """One local datagram towards the peer: a DATAGRAM frame, fragments, or (without datagrams, or too big for
        MAX_FRAGMENTS) the flow's stream."""
        if not self.datagrams:
            self._send_udp_on_stream(flow, data, now)
            return
        if flow.send_done:
            return
        flow.last_active = now
        frames = split_datagram(flow.flow_id, flow.packet, data, self._quic.datagram_room())
        if frames is None:
            self.stats.stream_fallback += 1
            self._send_udp_on_stream(flow, data, now)
            return
        if len(frames) == 1:
            self.stats.datagrams += 1
        else:
            flow.packet = (flow.packet + 1) & 0xFFFF
            self.stats.fragmented += 1
        for frame in frames:
            self._queue_datagram(frame)

    def _queue_datagram(self, frame: bytes) -> None:
        self.stats.dropped_oldest += self._quic.queue_datagram(frame)

    def _send_udp_on_stream(self, flow: _Flow, data: bytes, now: float) -> None:
        if flow.send_done:
            return
        flow.last_active = now
        if self._quic.send_buffer_size(flow.flow_id) > self._high_water:
            self.stats.dropped_backlog += 1
            return  # a UDP tunnel drops rather than queue without bound
        self.stats.stream += 1
        self._quic.send_stream_data(flow.flow_id, encode_udp_frame(data))

    def _on_datagram(self, data: bytes, now: float) -> None:
        if not self._has_udp:
            self.stats.unknown_flow += 1
            return
        try:
            item = decode_datagram(data)
        except DatagramError:
            self.stats.malformed += 1
            return
        flow = self._flows.get(item.flow_id)
        if flow is not None:
            self._deliver_datagram(flow, item, now)
        elif self._may_open_later(item.flow_id):
            # Its stream's first frame is still on the way (lost or reordered): hold the datagram briefly.
            if len(self._early) >= EARLY_DATAGRAMS:
                self._early.popleft()
                self.stats.unknown_flow += 1
            self._early.append((now + REASSEMBLY_TIMEOUT, item))
        else:
            self.stats.unknown_flow += 1

    def _may_open_later(self, flow_id: int) -> bool:
        return (
            not self._is_client
            and _client_initiated(flow_id)
            and _bidirectional(flow_id)
            and self._is_new_peer_stream(flow_id)
            and flow_id < self._peer_floor + _EARLY_WINDOW
        )

    def _deliver_early(self, flow: _Flow, now: float) -> None:
        held, self._early = self._early, deque()
        for deadline, item in held:
            if item.flow_id == flow.flow_id:
                self._deliver_datagram(flow, item, now)
            else:
                self._early.append((deadline, item))

    def _deliver_datagram(self, flow: _Flow, item: Whole | Fragment, now: float) -> None:
        payload = take_payload(item, self._reassembler, self.stats, now)
        if payload is None:
            return
        flow.last_active = now
        if flow.peer is not None:
            self._events.append(SendUdpTo(flow.peer, payload, flow.forward))
        else:
            self._events.append(SendUdp(flow.flow_id, payload))

    def report_stats(self) -> None:
        """Log what happened to this session's UDP datagrams (once, when the tunnel closes)."""
        if self._has_udp:
            mode = "QUIC datagrams" if self.datagrams else "streams"
            log.info("UDP over %s: %s", mode, self.stats.summary())

    def _expire_udp(self, flow: _Flow) -> None:
        """Retire an idle UDP flow: a clean FIN (at a frame boundary) and no interest in the rest."""
        if not flow.send_done:
            flow.send_done = True
            self._quic.send_stream_data(flow.flow_id, b"", end_stream=True)
        self._stop_receiving(flow.flow_id, RESET_IDLE)
        self._end_udp(flow)

    def _end_udp(self, flow: _Flow) -> None:
        self._reassembler.forget_flow(flow.flow_id)
        if flow.peer is None:
            self._events.append(CloseUdp(flow.flow_id))
        self._forget(flow)

    def _on_peer_abort(self, stream_id: int) -> None:
        if self._headers.pop(stream_id, None) is not None:
            self._abort_stream(stream_id, RESET_LOCAL_ERROR)
            return
        flow = self._flows.get(stream_id)
        if flow is None:
            return
        self._abort_stream(stream_id, RESET_LOCAL_ERROR)
        if flow.resuming is not None and self._durable is not None:  # the server cannot resume it
            self._forget(flow)
            self._durable.drop(flow, UNKNOWN_REASON)
        elif self._is_client and flow.request is not None:  # a dynamic flow the server could not connect
            self._events.append(DynamicReply(stream_id, SOCKS_CONNECTION_REFUSED))
            self._forget(flow)
        elif flow.kind is _Kind.TCP:
            self._events.append(AbortTcp(stream_id))
            self._forget(flow)
        else:
            self._end_udp(flow)

    def _on_connection_lost(self) -> None:
        self._headers.clear()
        for flow in list(self._flows.values()):
            held = flow.durable
            if held is not None and held.key is not None and not held.lost:
                # A durable flow outlives its connection: the adapter holds the socket for the next one.
                self._flows.pop(flow.flow_id, None)
                self._paused.discard(flow.flow_id)
                continue
            if flow.kind is _Kind.TCP:
                self._events.append(AbortTcp(flow.flow_id))
                self._forget(flow)
            else:
                self._end_udp(flow)

    # ------------------------------------------------------------------------------------------ helpers

    def _require(self, *, client: bool, kind: _Kind, forward: int = 0, protocol: str | None = None) -> None:
        route = self._routes[forward] if 0 <= forward < len(self._routes) else None
        if self._is_client != client or route is None or route.protocol != (protocol or kind.value):
            role = "client" if client else "server"
            raise LocalProtocolError(f"only a {kind.value} {role} session (or forward) can do that")

    def _tcp_high_water(self) -> int:
        if not self._auto_water:
            return self._high_water
        # Flows already paused hold their share: together the buffers stay near SEND_WINDOW_FACTOR x the window
        # (memory bounded by the path, not by the number of connections), and never below DEFAULT_HIGH_WATER each.
        window = SEND_WINDOW_FACTOR * self._quic.congestion_window // (1 + len(self._paused))
        return max(self._high_water, min(MAX_HIGH_WATER, window))

    def _check_resume(self) -> None:
        # With the default thresholds a flow resumes once what it has never sent falls to a quarter of its high
        # water (half a congestion window alone on a path), however much is still in flight. Why not "unacked <=
        # half the high water" (our first rule): that half is one window, and with a full window in flight it was
        # only reached when nothing at all was left to send, so the sender idled for every wake-up of the reader
        # (wan_trace.py on ``broadband``: application-limited in 56 % of samples, 87 Mbit/s). Memory stays bounded:
        # a flow pauses again above the high water of unacknowledged bytes.
        auto = self._auto_water
        low = max(self._low_water, self._tcp_high_water() // 4) if auto else self._low_water
        for flow_id in sorted(self._paused):
            flow = self._flows.get(flow_id)
            replay = None if flow is None else flow.durable
            if replay is not None and replay.unconfirmed > REPLAY_LOW:
                continue
            left = self._quic.unsent_size(flow_id) if auto else self._quic.send_buffer_size(flow_id)
            if left <= low:
                self._paused.discard(flow_id)
                self._events.append(ResumeReading(flow_id))

    def _abort_stream(self, stream_id: int, code: int) -> None:
        """RESET_STREAM for our side and STOP_SENDING for theirs; no-ops for what aioquic already finished."""
        try:
            self._quic.reset_stream(stream_id, code)
        except ValueError:
            pass
        self._stop_receiving(stream_id, code)

    def _stop_receiving(self, stream_id: int, code: int) -> None:
        try:
            self._quic.stop_stream(stream_id, code)
        except ValueError:
            pass  # aioquic already discarded the stream

    def _forget(self, flow: _Flow, *, cleanly: bool = False) -> None:
        if flow.durable is not None and self._durable is not None and self._flows.get(flow.flow_id) is flow:
            self._durable.released(flow, cleanly=cleanly)
        self._flows.pop(flow.flow_id, None)
        self._paused.discard(flow.flow_id)
        if flow.peer is not None and self._udp_by_peer.get((flow.forward, flow.peer)) == flow.flow_id:
            del self._udp_by_peer[(flow.forward, flow.peer)]

    def _new_durable_flow(self, flow_id: int, stream: DurableStream) -> _Flow:
        """A connection continues a held durable stream as ``flow_id`` (DurableLink)."""
        flow = self._flows[flow_id] = _Flow(flow_id, _Kind.TCP, forward=stream.forward, durable=stream)
        return flow

    def _is_new_peer_stream(self, stream_id: int) -> bool:
        return stream_id >= self._peer_floor and stream_id not in self._peer_seen

    def _mark_peer_stream(self, stream_id: int) -> None:
        self._peer_seen.add(stream_id)
        # Bidirectional peer streams are numbered floor, floor+4, ...; fold the contiguous prefix into the floor.
        while self._peer_floor in self._peer_seen:
            self._peer_seen.discard(self._peer_floor)
            self._peer_floor += 4
