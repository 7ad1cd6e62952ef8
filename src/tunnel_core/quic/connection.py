"""aioquic's ``QuicConnection`` plus what a tunnel needs and aioquic lacks.

Every override of aioquic internals is here, behind small methods with their own tests (aioquic is pinned to
1.7.x for that reason):

* fingerprint pinning: aioquic has no certificate-verify callback, so we check the peer certificate when the
  handshake completes, and close before anything of the application leaves or arrives;
* optional mutual pinning: the server asks for a client certificate through a private TLS flag;
* receive credit that follows bytes *consumed* by the application, not bytes received, so a slow local reader
  really slows the remote sender (aioquic doubles MAX_STREAM_DATA on receipt and never pushes back);
* a keep-alive PING after ``keepalive_interval`` of silence (upstream: 15 s), like quinn's keep_alive_interval;
* ``send_buffer_size`` for write backpressure (aioquic's stream writer has none);
* no unidirectional streams, as upstream's ICE modes (``max_concurrent_uni_streams = 0``);
* the tunnel-datagram capability (docs/datagrams.md): a private transport parameter that only our own peers send
  and every QUIC stack ignores (RFC 9000 section 7.4.2), a bounded DATAGRAM queue that drops its oldest entries,
  and the per-packet room a DATAGRAM frame has.
* the durable-streams capability (docs/durable.md): another private transport parameter, sent when built with
  ``durable=True``; ``durable_negotiated`` once both ends sent it with our version.
* with the "bbr" congestion controller, its model-based pacer and app-limited signal (tunnel_core.quic.bbr);
* fewer ACK-only packets: an ACK waits for ``ACK_EVERY`` ack-eliciting packets or ``srtt / 8`` (at most our
  advertised max_ack_delay), where aioquic acks after 1 ms; out-of-order arrival is acked at once (RFC 9000
  13.2.1), so the sender still detects loss quickly;
* path MTU discovery (RFC 8899, tunnel_core.quic.pmtu) when built with ``pmtu_ceiling``;
* ``get_timer`` is cached between inputs: aioquic recomputes every timer (a sum over packet spaces, path deadlines)
  on each call, and the drivers ask after every flush and again when a timer fires - under bulk load that was
  ~10 % of the CPU per packet (benchmarks/quic_cost.py --bulk, docs/congestion.md).
"""

from __future__ import annotations

import enum
import hashlib
from typing import Any

from aioquic.buffer import Buffer, BufferReadError, encode_uint_var, size_uint_var
from aioquic.quic import events as qe
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import (
    END_STATES,
    MAX_STREAM_DATA_FRAME_CAPACITY,
    NetworkAddress,
    QuicConnection,
)
from aioquic.quic.packet import QuicErrorCode, QuicFrameType, QuicPacketType
from aioquic.quic.packet_builder import QuicDeliveryState, QuicPacketBuilder
from aioquic.tls import Epoch
from cryptography.hazmat.primitives import serialization

from tunnel_core.datagram import DATAGRAM_VERSION
from tunnel_core.errors import LocalProtocolError
from tunnel_core.quic.bbr import HOST_STALL, BbrCongestionControl, BbrRecovery, ModelPacer
from tunnel_core.quic.events import PeerVerificationFailed
from tunnel_core.quic.identity import normalize_fingerprint
from tunnel_core.quic.pmtu import PmtuSearch
from tunnel_core.resume import DURABLE_VERSION

#: quinn's keep_alive_interval in upstream's ICE modes.
DEFAULT_KEEPALIVE_INTERVAL = 15.0
#: TLS alert bad_certificate (42) as a QUIC CRYPTO_ERROR (0x100 + alert), what a TLS verifier failure looks like.
FINGERPRINT_MISMATCH_ERROR = QuicErrorCode.CRYPTO_ERROR + 42
FINGERPRINT_MISMATCH_REASON = "manual fingerprint mismatch"
#: Concurrent bidirectional streams we let the peer open (aioquic: 128).
MAX_CONCURRENT_STREAMS = 1024
#: Our private transport parameter: "tund" in ASCII, outside the GREASE pattern 31*N+27. Its value (a varint) is
#: the tunnel-datagram format version both ends speak. quinn (upstream tunnel-rs) and older versions of ours
#: ignore it, so with them UDP stays on streams, byte for byte as before.
TRANSPORT_PARAMETER_TUNNEL_DATAGRAMS = 0x74756E64
#: Our private transport parameter for durable streams: "tdur" in ASCII (also outside the GREASE pattern). Its
#: value (a varint) is the durable-streams wire version (tunnel_core.resume).
TRANSPORT_PARAMETER_DURABLE = 0x74647572
#: DATAGRAM frames waiting for congestion window or pacing beyond this are dropped, oldest first, as a router
#: drops from a full queue: a game or a voice call wants the newest packet, not seconds of stale ones.
DATAGRAM_QUEUE_LIMIT = 128
#: Bytes of a 1-RTT packet around a DATAGRAM frame's data: first byte, packet number (at most 4), AEAD tag (16),
#: frame type and a 2-byte length; the destination connection id is added per connection.
_DATAGRAM_PACKET_OVERHEAD = 1 + 4 + 16 + 1 + 2
#: PING uids we use for keep-alives; their PingAcknowledged events are ours and not passed on.
_KEEPALIVE_UID_BASE = 1 << 62
#: Ack-eliciting packets received before an ACK goes out at once (RFC 9000 13.2.2 suggests 2; under bulk load
#: most ACK-only packets are then pure overhead for both ends, and both controllers cope with sparser ACKs).
ACK_EVERY = 20
#: The max_ack_delay aioquic advertises (25 ms): our ACK delay stays below it, so the peer's PTO stays right.
_ADVERTISED_MAX_ACK_DELAY = 0.025
#: Fraction of the smoothed RTT an ACK may wait for more packets.
_ACK_DELAY_RTT_FRACTION = 1 / 8
#: get_timer's cache is empty (None is a valid timer: "no timer").
_NO_CACHE = object()
#: "ACK now" is a moment just past: aioquic paces every packet unless its ACK is *overdue* (ack_at < now).
_ACK_NOW = 1e-6
#: See handle_timer: how far past its timer aioquic is told it is (far below any timer granularity).
_TIMER_NUDGE = 1e-9
#: PTOs in a row (nothing acknowledged) after which a raised packet size is taken for a PMTU black hole.
_PMTU_BLACK_HOLE_PTOS = 2


class _Pin(enum.Enum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class TunnelQuicConnection(QuicConnection):
    """A ``QuicConnection`` driven sans-IO exactly like aioquic's, with pinning, consumption-based credit and
    keep-alives. After every input (``receive_datagram``, ``handle_timer``, commands such as ``consume``) the owner
    flushes with ``datagrams_to_send`` as usual.
    """

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        expected_peer_fingerprint: str | None = None,
        request_client_certificate: bool = False,
        keepalive_interval: float | None = DEFAULT_KEEPALIVE_INTERVAL,
        pmtu_ceiling: int | None = None,
        ack_every: int = ACK_EVERY,
        durable: bool = False,
        **kwargs: Any,
    ) -> None:
        if request_client_certificate and configuration.is_client:
            raise LocalProtocolError("only a server can request a client certificate")
        if keepalive_interval is not None and keepalive_interval <= 0:
            raise LocalProtocolError("keepalive_interval must be positive (or None to disable)")
        if ack_every < 1:
            raise LocalProtocolError("ack_every must be at least 1")
        super().__init__(configuration=configuration, **kwargs)
        cc = self._loss._cc
        self._bbr = cc if isinstance(cc, BbrCongestionControl) else None
        if self._bbr is not None:
            self._loss._pacer = ModelPacer(max_datagram_size=self._max_datagram_size, controller=self._bbr)
            # aioquic builds its own recovery object; ours only adds the end-of-ACK call (it has no state of its own)
            self._loss.__class__ = BbrRecovery
        self._ack_every = ack_every
        self._ack_pending_count = 0
        self._pmtu = (
            None
            if pmtu_ceiling is None or pmtu_ceiling <= self._max_datagram_size
            else PmtuSearch(self._max_datagram_size, pmtu_ceiling)
        )
        self._pmtu_probes_sent = 0
        #: the latest ``now`` an input brought (aioquic's delivery handlers get no time of their own)
        self._now = 0.0
        #: get_timer's value until the next input; every method that can move a timer clears it
        self._timer_cache: Any = _NO_CACHE
        self._expected_fingerprint = (
            None if expected_peer_fingerprint is None else normalize_fingerprint(expected_peer_fingerprint)
        )
        self._request_client_cert = request_client_certificate
        self._pin = _Pin.PENDING
        self._established = False
        self._keepalive_interval = keepalive_interval
        self._last_sent: float | None = None
        self._keepalive_uids: set[int] = set()
        self._next_keepalive_uid = _KEEPALIVE_UID_BASE
        self._window = configuration.max_stream_data
        self._credit_step = max(1, self._window // 2)
        self._consumed: dict[int, int] = {}
        # Upstream's ICE modes allow no unidirectional streams; advertise that in the transport parameters.
        self._local_max_streams_uni.value = 0
        self._local_max_streams_uni.sent = 0
        # aioquic grants 128 concurrent bidirectional streams; every TCP connection and every UDP peer of a tunnel
        # is one, so a busy tunnel would stall its 129th. Memory is spent per stream in use, not per stream granted.
        self._local_max_streams_bidi.value = MAX_CONCURRENT_STREAMS
        self._local_max_streams_bidi.sent = MAX_CONCURRENT_STREAMS
        self._peer_datagram_version: int | None = None
        self.datagrams_dropped = 0
        self._durable_offered = durable
        self._peer_durable_version: int | None = None

    # ------------------------------------------------------------------------------------------ public additions

    @property
    def peer_fingerprint(self) -> str | None:
        """SHA-256 of the certificate the peer presented, once the handshake has it (None without one)."""
        tls_ctx = getattr(self, "tls", None)
        cert = None if tls_ctx is None else tls_ctx._peer_certificate
        if cert is None:
            return None
        return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    @property
    def peer_verified(self) -> bool:
        """True once the handshake completed and the pin (if any) matched."""
        return self._pin is _Pin.ACCEPTED

    def consume(self, stream_id: int, n: int) -> None:
        """The application has taken ``n`` more bytes of ``stream_id``: the peer may send that much more.

        Credit is announced only when it grew by half a window, so MAX_STREAM_DATA frames stay rare.
        """
        if n < 0:
            raise LocalProtocolError("cannot consume a negative number of bytes")
        if n == 0:
            return
        self._consumed[stream_id] = self._consumed.get(stream_id, 0) + n
        if len(self._consumed) > 2 * len(self._streams) + 64:
            self._consumed = {sid: v for sid, v in self._consumed.items() if sid in self._streams}

    def consumed(self, stream_id: int) -> int:
        return self._consumed.get(stream_id, 0)

    def receive_credit(self, stream_id: int) -> int:
        """The highest stream offset we allow the peer to send on ``stream_id`` (0 for unknown streams)."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None else stream.max_stream_data_local

    def send_buffer_size(self, stream_id: int) -> int:
        """Bytes written to ``stream_id`` that the peer has not acknowledged yet (0 for unknown streams).

        aioquic keeps bytes acknowledged beyond a lost packet in its buffer until the hole is repaired; they are not
        counted. Why: at 1 % loss a hole is open most of the time, and counting what lies beyond it paused the
        local reader half of the time - the sender idled with room in its window (wan_trace.py on ``wifi``: 54 %
        of samples application-limited, 51 Mbit/s; 11 % and 81 Mbit/s without them).
        """
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        size = sender._buffer_stop - sender._buffer_start
        for acked in sender._acked:
            size -= acked.stop - acked.start
        return size

    def unsent_size(self, stream_id: int) -> int:
        """Bytes written to ``stream_id`` that were never sent (retransmissions not counted; 0 for unknown streams):
        how much the sender has left before it runs dry, which is what the local reader must keep topped up."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return max(0, sender._buffer_stop - sender.highest_offset)

    @property
    def datagrams_negotiated(self) -> bool:
        """Both ends speak tunnel datagrams: we allow DATAGRAM frames, and the peer advertised both RFC 9221's
        max_datagram_frame_size and our capability with our format version (known once the handshake is done)."""
        return (
            self._configuration.max_datagram_frame_size is not None
            and self._peer_datagram_version == DATAGRAM_VERSION
            and self._remote_max_datagram_frame_size is not None
            and self._remote_max_datagram_frame_size > _DATAGRAM_PACKET_OVERHEAD
        )

    @property
    def durable_negotiated(self) -> bool:
        """Both ends offered durable streams in the handshake (docs/durable.md)."""
        return self._durable_offered and self._peer_durable_version == DURABLE_VERSION

    def datagram_room(self) -> int:
        """The largest DATAGRAM payload that fits one packet of the current size and the peer's frame limit."""
        room = self._max_datagram_size - _DATAGRAM_PACKET_OVERHEAD - len(self._peer_cid.cid)
        remote = self._remote_max_datagram_frame_size
        if remote is not None:
            room = min(room, remote - 1 - size_uint_var(remote))
        return max(0, room)

    def queue_datagram(self, data: bytes) -> int:
        """Queue one DATAGRAM frame; when more than DATAGRAM_QUEUE_LIMIT wait (congestion window or pacing), drop
        the oldest. Returns how many were dropped (also summed in ``datagrams_dropped``)."""
        pending = self._datagrams_pending
        pending.append(data)
        dropped = 0
        while len(pending) > DATAGRAM_QUEUE_LIMIT:
            pending.popleft()
            dropped += 1
        self.datagrams_dropped += dropped
        return dropped

    @property
    def congestion_window(self) -> int:
        """The congestion controller's window in bytes (what the path holds in flight, as the controller sees it)."""
        return int(self._loss.congestion_window)

    @property
    def max_datagram_size(self) -> int:
        """The QUIC packet size in use now (raised by path MTU discovery)."""
        return self._max_datagram_size

    @property
    def pmtu(self) -> PmtuSearch | None:
        """The path MTU search, when enabled."""
        return self._pmtu

    def probe_now(self, now: float) -> None:
        """The path is back after a cut (an ICE consent check was answered again): probe at once.

        During a cut QUIC's probe timeout doubles with every unanswered probe (RFC 9002 6.2.1), so after a 20 s cut
        the next probe may be many seconds away. Forgetting that backoff and sending a PING now gets an ACK within
        one round trip, which declares the packets of the cut lost and retransmits them: traffic resumes within
        about a second of the path's return (docs/reconnect.md). The owner flushes afterwards, as after any input.
        """
        if not self._established or self._state in END_STATES:
            return
        self._loss._pto_count = 0  # aioquic 1.7 keeps the backoff here; tests/test_quic_connection.py pins it
        uid = self._next_keepalive_uid
        self._next_keepalive_uid += 1
        self._keepalive_uids.add(uid)
        self.send_ping(uid)
        self._last_sent = now

    # ------------------------------------------------------------------------------------------ aioquic API

    def connect(self, addr: NetworkAddress, now: float) -> None:
        self._timer_cache = _NO_CACHE
        super().connect(addr, now)

    def close(self, *args: Any, **kwargs: Any) -> None:
        self._timer_cache = _NO_CACHE
        super().close(*args, **kwargs)

    def send_ping(self, uid: int) -> None:
        self._timer_cache = _NO_CACHE
        super().send_ping(uid)

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        self._timer_cache = _NO_CACHE
        self._now = now
        space = self._spaces.get(Epoch.ONE_RTT) if self._handshake_confirmed else None
        if space is None:
            super().receive_datagram(data, addr, now)
        else:
            self._receive_with_ack_frequency(space, data, addr, now)
        if self._pin is _Pin.PENDING:
            self._check_handshake()

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        self._timer_cache = _NO_CACHE
        out = super().datagrams_to_send(now)
        if self._bbr is not None and self._pacing_at is None and self._handshake_confirmed:
            # Not held back by pacing: if the window still has room for a packet, we ran out of data.
            if self._loss.bytes_in_flight + self._max_datagram_size <= self._loss.congestion_window:
                self._bbr.on_app_limited()
        if self._pmtu is not None and self._handshake_confirmed and self._state not in END_STATES:
            out += self._send_pmtu_probe(now)
        if out:
            self._last_sent = now
        return out

    def get_timer(self) -> float | None:
        cached = self._timer_cache
        if cached is not _NO_CACHE:
            return cached
        timer = super().get_timer()
        keepalive = self._keepalive_at()
        if keepalive is not None and (timer is None or keepalive < timer):
            timer = keepalive
        self._timer_cache = timer
        return timer

    def handle_timer(self, now: float) -> None:
        due = self._timer_cache
        self._timer_cache = _NO_CACHE
        self._now = now
        if self._bbr is not None and isinstance(due, float) and now - due >= HOST_STALL:
            self._bbr.on_host_stall(now)
        for space in self._loss.spaces:
            if space.ack_at is not None and space.ack_at <= now:
                # aioquic paces a due ACK unless it is strictly overdue; at ack_at exactly (a precise timer) a
                # pacing-limited sender would hold its ACK and spin on the same timer. An ACK that is due goes now.
                space.ack_at = now - _ACK_NOW
        keepalive = self._keepalive_at()
        if keepalive is not None and now >= keepalive:
            uid = self._next_keepalive_uid
            self._next_keepalive_uid += 1
            self._keepalive_uids.add(uid)
            self.send_ping(uid)
            # Count the ping as sent now, so the timer does not fire again before the owner flushes.
            self._last_sent = now
        base = super().get_timer()
        if base is not None and now >= base:
            # A hair past the timer: aioquic's loss timer is sent_time + delay, and its check is sent_time <= now -
            # delay, which float rounding can miss at exactly that moment - a timer that stays due. A real clock
            # moves on; virtual time (tests/test_congestion.py, with jitter) spun on it forever.
            super().handle_timer(max(now, base + _TIMER_NUDGE))
        if (
            self._pmtu is not None
            and self._loss._pto_count >= _PMTU_BLACK_HOLE_PTOS
            and self._max_datagram_size > self._pmtu.base
        ):
            # Nothing of the raised size gets through any more: back to the size known to work.
            self._pmtu.on_black_hole(now)
            self._set_packet_size(self._pmtu.base)
            if self._bbr is not None:
                self._bbr.on_path_change(now)

    def next_event(self) -> qe.QuicEvent | Any:
        if self._pin is _Pin.PENDING:
            # Until the peer is verified nothing of the application may surface; only the end of the connection.
            return self._take_first(qe.ConnectionTerminated)
        while True:
            event = super().next_event()
            if event is None:
                return None
            if isinstance(event, qe.PingAcknowledged) and event.uid in self._keepalive_uids:
                self._keepalive_uids.discard(event.uid)
                continue
            if self._pin is _Pin.REJECTED and not isinstance(event, PeerVerificationFailed | qe.ConnectionTerminated):
                continue
            return event

    # ------------------------------------------------------------------------------------------ aioquic internals

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if self._request_client_cert:
            # aioquic 1.7: private flag "for test purposes"; it makes the server send CertificateRequest.
            self.tls._request_client_certificate = True

    def _write_ack_frame(self, builder: QuicPacketBuilder, space: Any, now: float) -> None:
        super()._write_ack_frame(builder, space, now)
        if space.is_application_data:
            self._ack_pending_count = 0

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        """Replaces aioquic's doubling-on-receipt with credit = consumed + window (announced in half-window steps)."""
        if not stream.max_stream_data_local:
            return  # a locally opened unidirectional stream: nothing to receive
        if not stream.receiver.is_finished:
            target = self._consumed.get(stream.stream_id, 0) + self._window
            if target - stream.max_stream_data_local >= self._credit_step:
                stream.max_stream_data_local = target
        if stream.max_stream_data_local_sent == stream.max_stream_data_local:
            return
        buf = builder.start_frame(
            QuicFrameType.MAX_STREAM_DATA,
            capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
            handler=self._on_max_stream_data_delivery,  # re-sends the limit if this frame is lost
            handler_args=(stream,),
        )
        buf.push_uint_var(stream.stream_id)
        buf.push_uint_var(stream.max_stream_data_local)
        stream.max_stream_data_local_sent = stream.max_stream_data_local

    def _serialize_transport_parameters(self) -> bytes:
        """aioquic's parameters plus our capabilities: datagrams when DATAGRAM frames are enabled, durable
        streams when offered."""
        data = super()._serialize_transport_parameters()
        if self._configuration.max_datagram_frame_size is not None:
            data += _private_parameter(TRANSPORT_PARAMETER_TUNNEL_DATAGRAMS, DATAGRAM_VERSION)
        if self._durable_offered:
            data += _private_parameter(TRANSPORT_PARAMETER_DURABLE, DURABLE_VERSION)
        return data

    def _parse_transport_parameters(self, data: bytes, from_session_ticket: bool = False) -> None:
        self._peer_datagram_version = _find_version(data, TRANSPORT_PARAMETER_TUNNEL_DATAGRAMS)
        self._peer_durable_version = _find_version(data, TRANSPORT_PARAMETER_DURABLE)
        super()._parse_transport_parameters(data, from_session_ticket)

    # ------------------------------------------------------------------------------------------ helpers

    def _receive_with_ack_frequency(self, space: Any, data: bytes, addr: NetworkAddress, now: float) -> None:
        """aioquic schedules an ACK 1 ms after the first unacknowledged packet; we let up to ``ack_every`` packets
        or ``srtt / 8`` pass, and ack at once when packets arrive out of order (a gap or a late one)."""
        largest = space.largest_received_packet
        had_pending = space.ack_at is not None
        super().receive_datagram(data, addr, now)
        if space.ack_at is None or self._ack_every == 1:
            return
        newest = space.largest_received_packet
        if newest != largest + 1:
            space.ack_at = now - _ACK_NOW  # reordering or loss: tell the sender now
            return
        self._ack_pending_count += 1
        if self._ack_pending_count >= self._ack_every:
            space.ack_at = now - _ACK_NOW
        elif not had_pending:
            loss = self._loss
            delay = 0.001
            if loss._rtt_initialized:
                delay = max(delay, min(_ADVERTISED_MAX_ACK_DELAY, loss._rtt_smoothed * _ACK_DELAY_RTT_FRACTION))
            space.ack_at = now + delay

    def _send_pmtu_probe(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        """One PING + PADDING packet of the size the search asks for, outside congestion control (a probe's loss
        says nothing about congestion, RFC 9000 14.4), tracked through its own delivery handler."""
        assert self._pmtu is not None
        size = self._pmtu.probe_size(now)
        if size is None:
            return []
        crypto = self._cryptos[Epoch.ONE_RTT]
        if not crypto.send.is_valid():
            return []
        network_path = self._network_paths[0]
        builder = QuicPacketBuilder(
            host_cid=self.host_cid,
            is_client=self._is_client,
            max_datagram_size=size,
            packet_number=self._packet_number,
            peer_cid=self._peer_cid.cid,
            peer_token=self._peer_token,
            quic_logger=self._quic_logger,
            spin_bit=self._spin_bit,
            version=self._version,
        )
        builder.start_packet(QuicPacketType.ONE_RTT, crypto)
        builder.start_frame(QuicFrameType.PING, handler=self._on_pmtu_probe_delivery, handler_args=(size,))
        builder._datagram_needs_padding = True  # pad the packet to the builder's full size
        flush = builder.flush

        def flush_outside_congestion_control() -> tuple[list[bytes], list[Any]]:
            datagrams, packets = flush()
            for packet in packets:
                packet.in_flight = False
            return datagrams, packets

        builder.flush = flush_outside_congestion_control  # type: ignore[method-assign]
        self._pmtu_probes_sent += 1
        return self._flush_builder(builder=builder, network_path=network_path, peer_cid=self._peer_cid.cid, now=now)

    def _on_pmtu_probe_delivery(self, delivery: QuicDeliveryState, size: int) -> None:
        assert self._pmtu is not None
        now = self._now
        if delivery == QuicDeliveryState.ACKED:
            self._pmtu.on_probe_acked(size, now)
            if self._pmtu.size > self._max_datagram_size:
                self._set_packet_size(self._pmtu.size)
        else:
            self._pmtu.on_probe_lost(size, now)

    def _set_packet_size(self, size: int) -> None:
        """Use ``size``-byte packets from now on (the congestion controller and the pacer count in packets)."""
        self._max_datagram_size = size
        cc = self._loss._cc
        if isinstance(cc, BbrCongestionControl):
            cc.set_max_datagram_size(size)
        elif hasattr(cc, "_max_datagram_size"):
            cc._max_datagram_size = size
        pacer = self._loss._pacer
        if isinstance(pacer, ModelPacer):
            pacer.set_max_datagram_size(size)
        else:
            pacer._max_datagram_size = size

    def _keepalive_at(self) -> float | None:
        if (
            self._keepalive_interval is None
            or not self._established
            or self._last_sent is None
            or self._state in END_STATES
        ):
            return None
        return self._last_sent + self._keepalive_interval

    def _take_first(self, kind: type) -> Any:
        for event in self._events:
            if isinstance(event, kind):
                self._events.remove(event)
                return event
        return None

    def _check_handshake(self) -> None:
        if not any(isinstance(e, qe.HandshakeCompleted) for e in self._events):
            return
        self._established = True
        if self._expected_fingerprint is None:
            self._pin = _Pin.ACCEPTED
            return
        presented = self.peer_fingerprint
        if presented == self._expected_fingerprint:
            self._pin = _Pin.ACCEPTED
            return
        self._pin = _Pin.REJECTED
        # Drop everything already decoded (stream data that raced in with the handshake included).
        self._events.clear()
        self._events.append(PeerVerificationFailed(reason=FINGERPRINT_MISMATCH_REASON))
        self.close(
            error_code=FINGERPRINT_MISMATCH_ERROR,
            frame_type=QuicFrameType.CRYPTO,
            reason_phrase=FINGERPRINT_MISMATCH_REASON,
        )


def _private_parameter(param_id: int, version: int) -> bytes:
    value = encode_uint_var(version)
    return encode_uint_var(param_id) + encode_uint_var(len(value)) + value


def _find_version(data: bytes, wanted: int) -> int | None:
    """One of our capabilities' value in a peer's transport parameters (None when absent or malformed: aioquic's
    own parser judges the rest)."""
    buf = Buffer(data=data)
    try:
        while not buf.eof():
            param_id = buf.pull_uint_var()
            length = buf.pull_uint_var()
            value = buf.pull_bytes(length)
            if param_id == wanted:
                inner = Buffer(data=value)
                version = inner.pull_uint_var()
                return version if inner.eof() else None
    except BufferReadError:
        return None
    return None
