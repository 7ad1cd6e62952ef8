"""A model-based, loss-tolerant congestion controller for aioquic ("bbr"), and the pacer that goes with it.

Why it exists: aioquic's Reno and CUBIC halve their window on every loss, so a path with 1 % *random* loss (Wi-Fi,
mobile) caps a tunnel at the Mathis rate, ~2.6 Mbit/s at 50 ms (issue 13). This controller, like BBR, does not
read loss as the congestion signal; it builds a model of the path - the bottleneck bandwidth (a windowed max of
delivery-rate samples) and the round-trip propagation time (a windowed min of RTT samples) - and sends at the
bandwidth, with about one bandwidth-delay product (BDP) in flight.

Design (BBRv1 core with BBRv2's loss bounds; our own simplification, not a line-by-line port):

* delivery-rate samples per acknowledged packet (RFC draft-cheng-iccrg-delivery-rate-estimation): each sent
  packet remembers how much had been delivered when it left; a sample is delivered bytes / max(send interval,
  ack interval), discarded when shorter than min_rtt (ACK compression would inflate it). Samples taken while the
  sender was application-limited only count when they raise the estimate.
* ``btl_bw``: max of the samples of the last 10 round trips (and at most 10 min_rtt of time, see _MaxFilter);
  ``min_rtt``: min RTT of the last 10 s.
* STARTUP (gain 2/ln2 on pacing and window) until the bandwidth stops growing by 25 % for 3 rounds, or a round
  loses more than ``LOSS_THRESHOLD``; DRAIN (inverse gain) until in flight <= BDP; PROBE_BW cycles the pacing gain
  through 1.25, 0.75, then six rounds of 1.0; PROBE_RTT (every 5 s without a new min_rtt) holds the window at half
  a BDP for 200 ms so a standing queue of our own cannot hide the true min_rtt (BBRv2's gentler variant).
* loss response (BBRv2 idea): per round trip we count lost and delivered bytes. Below ``LOSS_THRESHOLD`` (2 %) loss
  is ignored - that is what keeps 1 % random loss from collapsing the rate. Above it the path is really congested
  (a tail-drop queue overflowing): ``inflight_hi`` is set to 0.7 x what was in flight, ``bw_lo`` to 0.7 x the
  bandwidth, and both bound the window and the pacing rate until a later probe finds room again (each loss-free
  PROBE_UP round raises ``inflight_hi`` by a growing step and clears ``bw_lo``).
* a path with loss of its own (``base_loss`` >= LOSSY_PATH, no standing queue; Wi-Fi, mobile) gets false cuts, and
  its delay may wander far above min_rtt: there a loss-free probe restores ``inflight_hi`` to what it carried, the
  round a probe starts in counts as probing, and a PROBE_BW phase lasts the path's RTT rather than min_rtt; a cut
  never takes ``inflight_hi`` below bw x the path's RTT (unless a standing queue is evident).
* a collapse - more than 20 % of a round lost, or bw_lo under 30 % of the bandwidth - and persistent congestion
  (RFC 9002 7.6) forget the bandwidth model and restart STARTUP.

The model is pure arithmetic on the ``now`` values aioquic passes in (sans-IO: no clock, no randomness; the gain
cycle starts in a fixed phase). aioquic gives its pacer ``congestion_window / smoothed_rtt``; with this controller
the connection installs :class:`ModelPacer`, which paces at ``pacing_gain x bandwidth`` instead
(tunnel_core.quic.connection does that).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Any

from aioquic.quic.congestion.base import (
    K_GRANULARITY,
    K_INITIAL_WINDOW,
    QuicCongestionControl,
    register_congestion_control,
)
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.recovery import K_MICRO_SECOND, QuicPacketPacer, QuicPacketRecovery

NAME = "bbr"
#: STARTUP's gain, 2/ln 2: the smallest that doubles the delivery rate every round.
STARTUP_GAIN = 2 / math.log(2)
#: PROBE_BW's pacing-gain cycle, one phase per min_rtt.
PROBE_BW_GAINS = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
#: The phase a connection enters PROBE_BW in; fixed (no randomness in the core), a cruise phase so the first
#: thing after DRAIN is not another queue-building probe.
PROBE_BW_START_PHASE = 2
#: Window gain in PROBE_BW: room for delayed and aggregated ACKs without building a standing queue of our own.
CWND_GAIN = 2.0
#: The window is sized on the RTT of the last round rather than min_rtt, capped at this multiple of min_rtt. Alone
#: on a path BBR is pacing-limited and the two agree; next to a loss-based flow that keeps a standing queue, a
#: window of 2 x bw x min_rtt would cap BBR below its share (rate = cwnd / RTT) and let the other flow starve it.
#: The cap bounds BBR's own standing queue at (CWND_GAIN x RTT_CAP - 1) BDP; 1.5 was not enough next to aioquic's
#: CUBIC in a 200 ms buffer (virtual time: BBR's share decayed from ~45 % to ~30 % within 12 s), 2 held 40-50 %
#: there, but not against the kernel's CUBIC TCP, which fills the whole buffer (WAN lab: RTT 250 ms = 5 min_rtt,
#: so the window held 0.8 x the estimate per round trip and BBR spiralled to 5-10 % of the link); 4 lets a window
#: cover a round trip that long.
CWND_RTT_CAP = 4.0
#: ...or min_rtt plus this, whichever is larger. On a LAN or loopback min_rtt is ~1 ms while delayed ACKs and a busy
#: host add several ms to every sample; sized on min_rtt alone the window caps the rate at a fraction of the
#: bandwidth, the measured rate follows, and the model spirals down (measured on loopback under load: 1 Mbit/s).
HOST_DELAY_SLACK = 0.01
#: ACK aggregation allowance: max-filter length in rounds, and the most it may add (seconds of sending).
EXTRA_ACKED_ROUNDS = 10
EXTRA_ACKED_MAX_TIME = 0.02
#: The bandwidth filter's time bound never drops below this: a host that stalls (descheduled, swapping) must not
#: forget the bandwidth it measured a moment ago.
BW_WINDOW_MIN_TIME = 0.25
#: Bandwidth max-filter length in round trips, min_rtt filter length in seconds.
BW_WINDOW_ROUNDS = 10
MIN_RTT_WINDOW = 10.0
#: How much an expired min_rtt may grow at once.
MIN_RTT_MAX_GROWTH = 1.25
#: PROBE_RTT: how often at most (without a fresh min_rtt), and how long.
PROBE_RTT_INTERVAL = 5.0
PROBE_RTT_DURATION = 0.2
#: STARTUP ends after this many rounds without 25 % bandwidth growth.
FULL_BW_ROUNDS = 3
FULL_BW_GROWTH = 1.25
#: Loss rate per round above which loss is read as congestion (BBRv2's 2 %). Random loss of 1 % stays below it.
LOSS_THRESHOLD = 0.02
#: The path's own loss rate - measured in PROBE_BW rounds that neither probed nor followed a probe, and saw no
#: standing queue, as a moving average with this weight per round - is added to LOSS_THRESHOLD: loss that probing
#: does not raise is not congestion. Why: a mobile link losing 2 % each way sat right at LOSS_THRESHOLD and was cut
#: every few rounds (WAN lab ``mobile``: 6.9-8.2 Mbit/s of 20, where BBR TCP, which ignores loss, keeps 17). On a
#: clean path with a shallow buffer the average stays ~0 and the 2 % still bounds the loss (tests/test_congestion.py).
BASE_LOSS_GAIN = 0.1
#: ...but at most this much (a path losing more than this is treated as congested whatever it does).
BASE_LOSS_MAX = 0.08
#: Loss rate per round read as congestion while a standing queue is evident: the last round's smallest RTT at
#: least QUEUE_RTT_FACTOR x min_rtt and QUEUE_MIN_DELAY above it (our own PROBE_BW queue stays under 2 x min_rtt).
#: Random loss (Wi-Fi, mobile) comes without a queue; loss next to a queue that never drains is a full bottleneck
#: buffer, the signal a loss-based flow sharing it lives by. Without this, a CUBIC TCP flow in a 200 ms buffer
#: loses well under 2 % of BBR's packets per round, BBR never yields, and CUBIC ends at 19 % of the link (WAN lab,
#: wan_fairness.py).
QUEUED_LOSS_THRESHOLD = 0.005
QUEUE_RTT_FACTOR = 2.5
QUEUE_MIN_DELAY = 0.02
#: Loss rate within one round that restarts the model: only a collapse (the path's rate fell far below ours)
#: looks like this.
HEAVY_LOSS_THRESHOLD = 0.2
#: Rounds the loss rate is measured over: at 1 % random loss one ~500-packet round exceeds 2 % about once in 30,
#: three rounds together about once in 3,000; a congested queue keeps losing round after round.
LOSS_WINDOW_ROUNDS = 3
#: bw_lo below this fraction of the max-filtered bandwidth means the path collapsed: restart from STARTUP.
COLLAPSE_FRACTION = 0.3
#: A loss window must lose at least this many packets to count as congested (BBRv2's full_loss_cnt). At 3, a slow
#: round (8 Mbit/s x 50 ms = 37 packets; 3 rounds = 111) at 1 % random loss counted as congested about one window in
#: seven, and each cut made the next window smaller still (WAN lab wifi: 24 -> 5 Mbit/s in 8 s); 8 losses in 111
#: packets at 1 % happen about once in 100,000 windows, while an overflowing queue loses far more.
LOSS_MIN_PACKETS = 8
#: Multiplicative decrease of inflight_hi and bw_lo on a congested round.
BETA = 0.7
#: A timer that fires this much late (or more) means the host did not run us: see on_host_stall.
HOST_STALL = 0.005
#: A loss cut never takes inflight_hi below bw x the path's RTT (see _path_rtt), which counts at most this multiple
#: of min_rtt. Virtual time, the WAN lab's ``mobile`` (20 Mbit/s, 100 ms +- 15 ms jitter each way, 2 % loss; before
#: the probe-round fixes): 11.5 Mbit/s with the floor at bw x min_rtt (1x), 14.5 at 1.5x, 15.1 at 2x. A standing
#: queue of our own counts for at most one more min_rtt.
JITTER_RTT_CAP = 2.0
#: The path's own loss rate (base_loss) from which a loss-free probe round restores inflight_hi at once (see
#: _end_round): a path that loses this much by itself gets false cuts (Wi-Fi 1 %, mobile 2 %).
LOSSY_PATH = 0.005
#: Smallest window, in packets.
MIN_WINDOW_PACKETS = 4


class _Mode:
    STARTUP = "startup"
    DRAIN = "drain"
    PROBE_BW = "probe_bw"
    PROBE_RTT = "probe_rtt"


class _SendState:
    """What the delivery-rate estimator remembers about one packet (kept on the packet as ``_bbr``)."""

    __slots__ = ("app_limited", "delivered", "delivered_time", "first_sent_time")

    def __init__(self, delivered: int, delivered_time: float, first_sent_time: float, app_limited: bool) -> None:
        self.delivered = delivered
        self.delivered_time = delivered_time
        self.first_sent_time = first_sent_time
        self.app_limited = app_limited


class _MaxFilter:
    """Windowed maximum over the last ``window`` rounds *and* ``window`` min_rtts of time (monotonic deque).

    BBRv1 counts rounds only; when the path's rate drops under a deep queue a round stretches to the queueing
    delay (10 rounds of a 1 s queue are 10 s of sending at a rate that no longer exists). Bounding the window in
    time as well (in units of min_rtt, so a PROBE_BW cycle always fits) lets the estimate follow within ~10
    min_rtt.
    """

    def __init__(self, window: int) -> None:
        self._window = window
        self._items: deque[tuple[int, float, float]] = deque()

    def update(self, round_count: int, now: float, span: float, value: float) -> None:
        items = self._items
        while items and items[-1][2] <= value:
            items.pop()
        items.append((round_count, now, value))
        self.expire(round_count, now, span)

    def expire(self, round_count: int, now: float, span: float) -> None:
        items = self._items
        oldest_round = round_count - self._window
        oldest_time = now - max(self._window * span, BW_WINDOW_MIN_TIME)
        while len(items) > 1 and (items[0][0] <= oldest_round or items[0][1] < oldest_time):
            items.popleft()

    def reset(self) -> None:
        self._items.clear()

    @property
    def value(self) -> float:
        return self._items[0][2] if self._items else 0.0


class BbrCongestionControl(QuicCongestionControl):
    """See the module docstring. aioquic creates one per connection through the registry name ``"bbr"``."""

    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self.max_datagram_size = max_datagram_size
        self.mode = _Mode.STARTUP
        self.pacing_gain = STARTUP_GAIN
        self.cwnd_gain = STARTUP_GAIN
        # delivery-rate estimator
        self._delivered = 0
        self._delivered_time = 0.0
        self._first_sent_time = 0.0
        self._app_limited_until = 0  # delivered count up to which samples are app-limited (0: not app-limited)
        # round trips
        self.round_count = 0
        self._next_round_delivered = 0
        self._round_start = False
        # model
        self._bw = _MaxFilter(BW_WINDOW_ROUNDS)
        self.min_rtt = math.inf
        self._min_rtt_stamp = 0.0
        self._probe_rtt_stamp = 0.0
        self._probe_rtt_done_at: float | None = None
        self._probe_rtt_round_done = False
        self._full_bw = 0.0
        self._full_bw_count = 0
        self.full_bw_reached = False
        # PROBE_BW
        self._cycle_index = PROBE_BW_START_PHASE
        self._cycle_stamp = 0.0
        # loss bounds
        self.inflight_hi = math.inf
        self.bw_lo = math.inf
        self._hi_growth = 1
        self._round_lost = 0
        self._round_lost_packets = 0
        self._round_delivered = 0
        self._round_max_rate = 0.0
        self._round_probe_up = False
        #: the most bytes in flight this round (a loss-free probe round raises inflight_hi to it)
        self._round_max_inflight = 0
        #: the last round that probed for more bandwidth, and the path's own loss rate (see BASE_LOSS_GAIN)
        self._probe_round = -2
        self.base_loss = 0.0
        #: (lost bytes, lost packets, delivered bytes) of the last rounds, newest last
        self._loss_window: deque[tuple[int, int, int]] = deque(maxlen=LOSS_WINDOW_ROUNDS - 1)
        # pacing
        self._pacing_rate = 0.0
        #: bumped whenever the pacing rate changes, so ModelPacer can recompute cheaply
        self.rate_version = 0
        self._last_rtt = 0.0
        # ACK aggregation (BBRv2's extra_acked): bytes acknowledged beyond what the bandwidth explains
        self._agg_start = 0.0
        self._agg_acked = 0
        self._extra_acked = _MaxFilter(EXTRA_ACKED_ROUNDS)
        self._cut_round = -1
        self._restart_time = 0.0
        self._round_min_rtt = math.inf
        self._recent_rtt = math.inf
        #: bytes declared lost over the connection's life (what counts for the model; a trace reads it)
        self.lost_bytes = 0
        #: the last moment the host stalled us (on_host_stall); samples spanning it cannot lower the estimate
        self._stall_time = -math.inf
        #: the ACK frame being counted (on_packet_acked): its newest packet's send state and time, bytes acked
        self._acked_state: _SendState | None = None
        self._acked_sent_time = 0.0
        self._acked_bytes = 0

    # ------------------------------------------------------------------------------------------ model readouts

    @property
    def bandwidth(self) -> float:
        """Estimated bottleneck bandwidth in bytes/s (0 before the first sample), bounded by ``bw_lo``."""
        return min(self._bw.value, self.bw_lo)

    @property
    def max_bandwidth(self) -> float:
        return self._bw.value

    @property
    def pacing_rate(self) -> float:
        """Bytes per second the pacer should send at."""
        return self._pacing_rate

    def bdp(self, gain: float = 1.0) -> int:
        bw = self.bandwidth
        if bw <= 0 or math.isinf(self.min_rtt):
            return K_INITIAL_WINDOW * self.max_datagram_size
        return int(gain * bw * self.min_rtt)

    def set_max_datagram_size(self, size: int) -> None:
        """Path MTU discovery changed the packet size."""
        self.max_datagram_size = size
        self._update_control()

    def on_path_change(self, now: float) -> None:
        """The path is not what the model describes any more (e.g. a PMTU black hole): search again."""
        self._restart_model(now)
        self._update_control()

    def on_host_stall(self, now: float) -> None:
        """The owner was woken ``HOST_STALL`` or more after the timer it asked for: the host did not run us (a busy
        machine, a descheduled process). Delivery-rate samples whose interval contains this moment measured the
        host, not the path - the same stall usually holds up the receiver's ACKs too - so, like app-limited samples,
        they may only raise the bandwidth estimate. Measured in the WAN lab on a loaded 2-core host: stalls of
        100-300 ms every second or two, each taking the estimate down a step until 100 Mbit/s became 7."""
        self._stall_time = now

    def on_app_limited(self) -> None:
        """The sender ran out of data with room in the window: samples until what is in flight now is delivered
        understate the path, so they may only raise the bandwidth estimate."""
        self._app_limited_until = max(self._delivered + self.bytes_in_flight, 1)

    # ------------------------------------------------------------------------------------------ aioquic hooks

    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        now = packet.sent_time or 0.0
        if self.bytes_in_flight == 0:
            # Restarting from idle: intervals start now, not at the last ACK long ago.
            self._first_sent_time = now
            self._delivered_time = now
        # PROBE_RTT sends half a BDP on purpose: what it delivers says nothing about the path's rate, so its samples
        # count like app-limited ones. Next to CUBIC's 200 ms queue a round is 5 min_rtt long, PROBE_RTT outlasted
        # the filter's time bound, and the estimate fell from 94 to 19 Mbit/s in one step (WAN lab, wan_fairness.py).
        packet._bbr = _SendState(  # type: ignore[attr-defined]
            self._delivered,
            self._delivered_time,
            self._first_sent_time,
            self._app_limited_until > 0 or self.mode == _Mode.PROBE_RTT,
        )
        self.bytes_in_flight += packet.sent_bytes
        if self.bytes_in_flight > self._round_max_inflight:
            self._round_max_inflight = self.bytes_in_flight

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        """Per packet only the counters; the model is updated once per ACK frame in :meth:`on_ack_done`. Why: an
        ACK frame acknowledges up to ~20 packets under bulk load, and a model update per packet was a tenth of the
        sender's CPU (py-spy) for the same answer - like Linux, one delivery-rate sample per ACK, from the newest
        packet it acknowledges (its sample spans the most delivered bytes)."""
        sent = packet.sent_bytes
        self.bytes_in_flight -= sent
        self._delivered += sent
        self._delivered_time = now
        self._round_delivered += sent
        if self._app_limited_until and self._delivered > self._app_limited_until:
            self._app_limited_until = 0
        state: _SendState | None = getattr(packet, "_bbr", None)
        if state is not None:
            self._acked_state = state
            self._acked_sent_time = packet.sent_time or now
            self._acked_bytes += sent

    def on_ack_done(self, now: float) -> None:
        """The ACK frame's packets are all counted (BbrRecovery calls this): update the model once."""
        state = self._acked_state
        if state is None:
            return
        self._acked_state = None
        acked, self._acked_bytes = self._acked_bytes, 0
        # round trips: a round ends when a packet sent after the previous round's end is acknowledged
        if state.delivered >= self._next_round_delivered:
            self._next_round_delivered = self._delivered
            self.round_count += 1
            self._end_round(now, state.app_limited)
        self._update_ack_aggregation(now, acked)
        # delivery-rate sample
        sent_time = self._acked_sent_time
        self._first_sent_time = sent_time
        interval = max(sent_time - state.first_sent_time, now - state.delivered_time)
        # Linux tcp_rate.c: an interval shorter than min_rtt is ACK compression, not the path's rate.
        if interval > 0 and interval >= self.min_rtt:
            rate = (self._delivered - state.delivered) / interval
            if rate > self._round_max_rate:
                self._round_max_rate = rate
            discounted = state.app_limited or self._stall_time > min(state.delivered_time, state.first_sent_time)
            if not discounted or rate >= self._bw.value:
                self._bw.update(self.round_count, now, self._phase_rtt(), rate)
        self._update_mode(now)
        self._update_control()

    def on_packets_expired(self, *, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes
            if (packet.sent_time or 0.0) < self._restart_time:
                continue  # sent under the model we threw away: its loss says nothing about the new search
            self._round_lost += packet.sent_bytes
            self._round_lost_packets += 1
            self.lost_bytes += packet.sent_bytes
        # Act within the round when it is already heavily congested, so a collapsed link is left quickly.
        lost = self._round_lost
        if (
            self._cut_round != self.round_count
            and self._round_lost_packets >= 4 * LOSS_MIN_PACKETS
            and lost > HEAVY_LOSS_THRESHOLD * (lost + self._round_delivered)
        ):
            # Not congestion at the margin but a path that lost most of its rate (an outage, a re-route, a much
            # slower link, an MTU black hole): the model is of no use; STARTUP finds the new rate in a few rounds.
            if self.mode == _Mode.STARTUP:
                self._on_congestion(now)  # STARTUP overshooting a shallow buffer: leave it, bounded
            else:
                self._cut_round = self.round_count
                self._restart_model(now)
        self._update_control()

    def on_persistent_congestion(self) -> None:
        self._restart_model(0.0)
        self.congestion_window = MIN_WINDOW_PACKETS * self.max_datagram_size
        self._set_pacing_rate(self.congestion_window / max(self._last_rtt or 0.1, K_MICRO_SECOND))

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        # aioquic passes the raw sample; like its own estimator, never believe less than its 1 ms granularity
        # (loopback or same-instant test harnesses give ~0, which would make every BDP zero).
        rtt = max(rtt, K_GRANULARITY)
        self._last_rtt = rtt
        if rtt < self._round_min_rtt:
            self._round_min_rtt = rtt
        if rtt <= self.min_rtt:
            self.min_rtt = rtt
            self._min_rtt_stamp = now
        elif now - self._min_rtt_stamp > MIN_RTT_WINDOW:
            # Expired: a loss-based competitor's standing queue (which PROBE_RTT cannot drain) would otherwise
            # become our "propagation delay" in one step and make BBR grab the link (measured: CUBIC fell from
            # ~50 % to ~20 % within 6 s). A real route change still gets there, 25 % per window.
            self.min_rtt = min(rtt, MIN_RTT_MAX_GROWTH * self.min_rtt)
            self._min_rtt_stamp = now
        if self._pacing_rate == 0.0:
            self._update_control()

    def get_log_data(self) -> dict[str, Any]:
        data = super().get_log_data()
        data.update(mode=self.mode, bw=self.bandwidth, min_rtt=self.min_rtt, pacing_rate=self._pacing_rate)
        return data

    # ------------------------------------------------------------------------------------------ state machine

    def _update_ack_aggregation(self, now: float, acked: int) -> None:
        """Delayed ACKs (ours wait for 20 packets), Wi-Fi and a busy host deliver ACKs in bursts; between bursts a
        window of 2 x bw x min_rtt runs dry and the measured rate - hence the model - spirals down (measured on
        loopback under load: 1 Mbit/s). The largest excess of acknowledged bytes over ``bw x elapsed`` within an
        aggregation epoch (max over 10 rounds, at most 20 ms of sending) is added to the window."""
        bw = self.bandwidth
        if bw <= 0:
            return
        expected = bw * (now - self._agg_start)
        if self._agg_acked <= expected:
            # ACKs arrive no faster than the bandwidth: a new epoch starts here
            self._agg_start = now
            self._agg_acked = 0
            expected = 0.0
        self._agg_acked += acked
        extra = min(self._agg_acked - expected, bw * EXTRA_ACKED_MAX_TIME)
        if extra > 0:
            self._extra_acked.update(self.round_count, now, math.inf, extra)

    def _round_congested(self) -> bool:
        """Loss over the last LOSS_WINDOW_ROUNDS rounds (this one included) above LOSS_THRESHOLD."""
        lost, packets, delivered = self._round_lost, self._round_lost_packets, self._round_delivered
        for r_lost, r_packets, r_delivered in self._loss_window:
            lost += r_lost
            packets += r_packets
            delivered += r_delivered
        return packets >= LOSS_MIN_PACKETS and lost > self._loss_threshold() * (lost + delivered)

    def _loss_threshold(self) -> float:
        """LOSS_THRESHOLD above the path's own loss rate (see BASE_LOSS_GAIN); in PROBE_BW QUEUED_LOSS_THRESHOLD
        while the path keeps a standing queue. Outside PROBE_BW a queue is our own (STARTUP, DRAIN) and says nothing
        about a competitor. The path's own loss counts in every mode: PROBE_RTT at the bare 2 % on a path losing 2 %
        was cut about every other time, each cut a step down (virtual time, ``mobile`` with jitter)."""
        if self.mode == _Mode.PROBE_BW and self._standing_queue():
            return QUEUED_LOSS_THRESHOLD
        return LOSS_THRESHOLD + self.base_loss

    def _lossy_path(self) -> bool:
        """The path loses packets by itself (LOSSY_PATH or more, measured without a queue) and no queue stands."""
        return self.base_loss >= LOSSY_PATH and not self._standing_queue()

    def _standing_queue(self) -> bool:
        """The last round's smallest RTT is well above min_rtt (see QUEUE_RTT_FACTOR): a queue that never drained."""
        min_rtt, recent = self.min_rtt, self._recent_rtt
        return (
            not math.isinf(recent) and recent >= QUEUE_RTT_FACTOR * min_rtt and recent - min_rtt >= QUEUE_MIN_DELAY
        )

    def _on_congestion(self, now: float) -> None:
        """Loss above the threshold: the path is congested; bound what we send by what it carried."""
        self._cut_round = self.round_count
        rate = self._round_max_rate or self._bw.value
        self.bw_lo = max(rate, BETA * min(self.bw_lo, self._bw.value)) if self._bw.value else math.inf
        if self.bw_lo < COLLAPSE_FRACTION * self._bw.value:
            # Most of the path's rate is gone (an outage, a re-route, an MTU black hole): the old model is of no
            # use; search again from STARTUP, which finds the new rate in a few round trips.
            self._restart_model(now)
            return
        # What was in flight, less BETA - but never below one BDP at the (lowered) bandwidth: the path carried that.
        inflight = self.bytes_in_flight + self._round_lost
        base = min(self.congestion_window, inflight) if math.isinf(self.inflight_hi) else self.inflight_hi
        floor = MIN_WINDOW_PACKETS * self.max_datagram_size
        bdp = 0 if math.isinf(self.min_rtt) else int(self.bandwidth * self._path_rtt())
        self.inflight_hi = max(floor, bdp, BETA * base)
        self._hi_growth = 1
        self._loss_window.clear()
        if self.mode == _Mode.STARTUP:
            self.full_bw_reached = True
            self._enter(_Mode.DRAIN, now)
        elif self.mode == _Mode.PROBE_BW and PROBE_BW_GAINS[self._cycle_index] > 1.0:
            self._cycle_index = (self._cycle_index + 1) % len(PROBE_BW_GAINS)
            self._cycle_stamp = now
            self.pacing_gain = PROBE_BW_GAINS[self._cycle_index]
        self._round_lost = 0
        self._round_lost_packets = 0
        self._round_delivered = 0

    def _restart_model(self, now: float) -> None:
        """Forget the bandwidth model and its loss bounds and search again from STARTUP (min_rtt stays)."""
        self._restart_time = now
        self._bw.reset()
        self._extra_acked.reset()
        self.bw_lo = math.inf
        self.inflight_hi = math.inf
        self.full_bw_reached = False
        self._full_bw = 0.0
        self._full_bw_count = 0
        self._loss_window.clear()
        self._round_lost = 0
        self._round_lost_packets = 0
        self._round_delivered = 0
        self._enter(_Mode.STARTUP, now)
        self.congestion_window = max(MIN_WINDOW_PACKETS, K_INITIAL_WINDOW) * self.max_datagram_size

    def _end_round(self, now: float, app_limited: bool) -> None:
        """A round trip ended with the acknowledgement of a packet sent while ``app_limited`` (or not)."""
        self._bw.expire(self.round_count, now, self._phase_rtt())
        self._extra_acked.expire(self.round_count, now, math.inf)
        if self._round_congested():
            self._on_congestion(now)
        elif self._round_probe_up:
            # A loss-free probe round: there may be room above the old bound; grow it faster each round.
            if not math.isinf(self.inflight_hi):
                # On a path with loss of its own (where most cuts were random loss) a loss-free probe carried what
                # it had in flight: the bound is at least that. Not on a clean path, where a cut was congestion:
                # there it made bbr too hard on kernel CUBIC TCP (WAN lab fairness: 22-25 % left to CUBIC).
                self.inflight_hi += self._hi_growth * self.max_datagram_size
                if self._lossy_path():
                    self.inflight_hi = max(self.inflight_hi, self._round_max_inflight)
                self._hi_growth = min(self._hi_growth * 2, 1 << 16)
                if self.inflight_hi > self._unbounded_window():
                    self.inflight_hi = math.inf
            self.bw_lo = math.inf
        if self._round_probe_up:
            self._probe_round = self.round_count
        elif (
            self.mode == _Mode.PROBE_BW
            and self.round_count - self._probe_round > 1
            and self._loss_threshold() != QUEUED_LOSS_THRESHOLD
            and self._round_lost + self._round_delivered > 0
        ):
            rate = self._round_lost / (self._round_lost + self._round_delivered)
            self.base_loss = min(BASE_LOSS_MAX, self.base_loss + BASE_LOSS_GAIN * (rate - self.base_loss))
        self._round_probe_up = self.mode == _Mode.PROBE_BW and PROBE_BW_GAINS[self._cycle_index] > 1.0
        round_delivered = self._round_delivered
        self._loss_window.append((self._round_lost, self._round_lost_packets, self._round_delivered))
        if not math.isinf(self._round_min_rtt):
            self._recent_rtt = self._round_min_rtt
            self._round_min_rtt = math.inf
        self._round_lost = 0
        self._round_lost_packets = 0
        self._round_delivered = 0
        self._round_max_rate = 0.0
        self._round_max_inflight = self.bytes_in_flight
        # STARTUP: is the bandwidth still growing? (A round that delivered next to nothing - an outage - says no.)
        if (
            not self.full_bw_reached
            and not app_limited  # Linux: the round's sample, not the sender's state now
            and round_delivered >= MIN_WINDOW_PACKETS * self.max_datagram_size
        ):
            bw = self._bw.value
            if bw >= self._full_bw * FULL_BW_GROWTH:
                self._full_bw = bw
                self._full_bw_count = 0
            else:
                self._full_bw_count += 1
                if self._full_bw_count >= FULL_BW_ROUNDS:
                    self.full_bw_reached = True
        if self.mode == _Mode.PROBE_RTT and self._probe_rtt_done_at is not None:
            self._probe_rtt_round_done = True

    def _enter(self, mode: str, now: float) -> None:
        self.mode = mode
        if mode == _Mode.STARTUP:
            self.pacing_gain = self.cwnd_gain = STARTUP_GAIN
        elif mode == _Mode.DRAIN:
            self.pacing_gain = 1 / STARTUP_GAIN
            self.cwnd_gain = STARTUP_GAIN
        elif mode == _Mode.PROBE_BW:
            self._cycle_index = PROBE_BW_START_PHASE
            self._cycle_stamp = now
            self.pacing_gain = PROBE_BW_GAINS[self._cycle_index]
            self.cwnd_gain = CWND_GAIN
        elif mode == _Mode.PROBE_RTT:
            self.pacing_gain = 1.0
            self.cwnd_gain = 0.5
            self._probe_rtt_done_at = None
            self._probe_rtt_round_done = False

    def _update_mode(self, now: float) -> None:
        if self.mode == _Mode.STARTUP and self.full_bw_reached:
            self._enter(_Mode.DRAIN, now)
        if self.mode == _Mode.DRAIN and self.bytes_in_flight <= self.bdp():
            self._enter(_Mode.PROBE_BW, now)
        if self.mode == _Mode.PROBE_BW:
            self._advance_cycle(now)
        # PROBE_RTT: min_rtt has not been refreshed for a while
        if (
            self.mode != _Mode.PROBE_RTT
            and self.full_bw_reached
            and not math.isinf(self.min_rtt)
            and now - self._min_rtt_stamp > PROBE_RTT_INTERVAL
            and now - self._probe_rtt_stamp > PROBE_RTT_INTERVAL
        ):
            self._enter(_Mode.PROBE_RTT, now)
        if self.mode == _Mode.PROBE_RTT:
            if self._probe_rtt_done_at is None and self.bytes_in_flight <= self._probe_rtt_window():
                self._probe_rtt_done_at = now + PROBE_RTT_DURATION
                self._probe_rtt_round_done = False
                self._next_round_delivered = self._delivered
            elif (
                self._probe_rtt_done_at is not None
                and self._probe_rtt_round_done
                and now >= self._probe_rtt_done_at
            ):
                self._probe_rtt_stamp = now
                self._enter(_Mode.PROBE_BW if self.full_bw_reached else _Mode.STARTUP, now)

    def _advance_cycle(self, now: float) -> None:
        gain = PROBE_BW_GAINS[self._cycle_index]
        elapsed = now - self._cycle_stamp > self._phase_rtt()
        if gain > 1.0:
            done = elapsed and (self.bytes_in_flight >= self.bdp(gain) or self.bytes_in_flight >= self.inflight_hi)
        elif gain < 1.0:
            done = elapsed or self.bytes_in_flight <= self.bdp()
        else:
            done = elapsed
        if done:
            self._cycle_index = (self._cycle_index + 1) % len(PROBE_BW_GAINS)
            self._cycle_stamp = now
            self.pacing_gain = PROBE_BW_GAINS[self._cycle_index]
            if self.pacing_gain > 1.0 and self._lossy_path():
                # A probe phase lasts min_rtt, a round the whole RTT: the round it starts in is a probing round
                # (on a path whose RTT is well above min_rtt a probe often began and ended within one round). Only
                # where loss of the path's own makes false cuts worth undoing quickly, as above.
                self._round_probe_up = True

    def _probe_rtt_window(self) -> int:
        """PROBE_RTT's window, half a BDP and nothing on top: it must be reachable, since PROBE_RTT only starts its
        200 ms once what is in flight fits in it."""
        return max(MIN_WINDOW_PACKETS * self.max_datagram_size, self.bdp(0.5))

    def _path_rtt(self) -> float:
        """The round trip a window must cover on this path: the last round's smallest RTT, at most
        JITTER_RTT_CAP x min_rtt. On a path whose delay wanders (mobile: 100 ms +- 30) min_rtt is the rare low
        point, and a window of bw x min_rtt holds the rate to min_rtt / RTT of the bandwidth. Beside a standing
        queue (a loss-based flow filling the buffer) it is min_rtt: that queue is not the path's, and a floor above
        one BDP kept bbr from yielding to kernel CUBIC TCP (WAN lab fairness: 22 % left to CUBIC)."""
        recent = self._recent_rtt
        if math.isinf(recent) or recent <= self.min_rtt or self._standing_queue():
            return self.min_rtt
        return min(recent, JITTER_RTT_CAP * self.min_rtt)

    def _phase_rtt(self) -> float:
        """How long a PROBE_BW phase lasts, and the unit of the bandwidth filter's time bound: min_rtt, or on a path
        with loss of its own whose delay wanders, the path's RTT (_path_rtt). A probe of one min_rtt on a path whose
        rounds take twice that moved the delivery-rate samples by half its gain, which jitter and the path's loss
        ate: the estimate sat at a third of a ``mobile`` link for seconds (WAN lab)."""
        return self._path_rtt() if self._lossy_path() else self.min_rtt

    def _window_rtt(self) -> float:
        """The RTT the window is sized on: the last round's smallest sample, but at most CWND_RTT_CAP x min_rtt or
        min_rtt + HOST_DELAY_SLACK, whichever is larger (see both constants)."""
        min_rtt = self.min_rtt
        if self._recent_rtt <= min_rtt:
            return min_rtt
        if self.mode != _Mode.PROBE_BW:
            # STARTUP's own queue inflates the RTT: allow only the host-delay slack there, not the relative cap
            return min(self._recent_rtt, min_rtt + HOST_DELAY_SLACK)
        return min(self._recent_rtt, max(CWND_RTT_CAP * min_rtt, min_rtt + HOST_DELAY_SLACK))

    def _unbounded_window(self) -> float:
        """The window the model asks for before the loss bound: an inflight_hi grown past it by loss-free probes
        bounds nothing any more. (It was 4 x the BDP at min_rtt; behind a loss-based flow's standing queue the
        window the model asks for is several times that, so the bound vanished a few probes after every cut.)"""
        return self.cwnd_gain * self.bandwidth * self._window_rtt() + self._extra_acked.value

    def _update_control(self) -> None:
        mss = self.max_datagram_size
        floor = MIN_WINDOW_PACKETS * mss
        bw = self.bandwidth
        if bw <= 0 or math.isinf(self.min_rtt):
            # No model yet: the initial window, paced over the first RTT sample (or 100 ms before one).
            cwnd = max(self.congestion_window, K_INITIAL_WINDOW * mss)
            rtt = self._last_rtt or 0.1
            self._set_pacing_rate(STARTUP_GAIN * cwnd / max(rtt, K_MICRO_SECOND))
            self.congestion_window = cwnd
            return
        # 3 packets of headroom for delayed/aggregated ACKs, as BBR's "quantization budget".
        if self.mode == _Mode.PROBE_RTT:
            cwnd = self._probe_rtt_window()
        else:
            cwnd = int(self.cwnd_gain * bw * self._window_rtt() + self._extra_acked.value) + 3 * mss
        if self.mode == _Mode.STARTUP:
            # Never shrink while searching for the bandwidth.
            cwnd = max(cwnd, self.congestion_window)
        if cwnd > self.inflight_hi:
            cwnd = int(self.inflight_hi)
        self.congestion_window = max(floor, cwnd)
        rate = self.pacing_gain * bw
        if self.mode == _Mode.STARTUP:
            rate = max(rate, self._pacing_rate)
        self._set_pacing_rate(rate)

    def _set_pacing_rate(self, rate: float) -> None:
        if rate != self._pacing_rate:
            self._pacing_rate = rate
            self.rate_version += 1


class BbrRecovery(QuicPacketRecovery):
    """aioquic's loss recovery, telling the controller when an ACK frame's packets are all counted
    (:meth:`BbrCongestionControl.on_ack_done`). The connection puts it in place when it runs this controller."""

    def on_ack_received(self, *, ack_rangeset: Any, ack_delay: float, now: float, space: Any) -> None:
        super().on_ack_received(ack_rangeset=ack_rangeset, ack_delay=ack_delay, now=now, space=space)
        cc = self._cc
        if isinstance(cc, BbrCongestionControl):
            cc.on_ack_done(now)


class ModelPacer(QuicPacketPacer):
    """A token-bucket pacer at the controller's pacing rate (instead of aioquic's ``cwnd / srtt``).

    aioquic's bucket is floored at zero after every packet, so any sliver of credit lets a whole packet go: an
    ACK-clocked sender then sends at the ACK rate whatever the pacing rate says (we measured DRAIN at gain 0.35
    still sending at the full link rate). Here a packet may drive the credit negative, and the next one waits until
    it is paid back, so the long-run rate is exactly the pacing rate.

    Why the bucket grows with the measured wake-up lateness: a real event loop does not wake when asked. asyncio's
    epoll rounds every wait up to whole milliseconds and a busy host adds more, so a pacer that asks to wake "in
    0.1 ms" for the next packet wakes 1-3 ms later; with a fixed bucket of ~1 ms (2..16 packets, our first version)
    the credit of the rest of the wait is thrown away and the sender moves less than its pacing rate, which the rate
    samples then report as the path's bandwidth. So the pacer measures how late it is woken (a max that decays over
    ~100 wake-ups, capped at PACING_MAX_LATENESS), holds twice that much credit on top of the quantum
    (PACING_MIN_BURST..PACING_MAX_BURST packets, at least PACING_QUANTUM of sending), and a held sender waits for
    a quantum of credit the size of that lateness (at most PACING_QUANTUM): each wake-up then sends a batch, which
    means fewer wake-ups and runs that UDP GSO can carry. Woken on time (virtual time, a quiet host) it behaves as
    before: one packet's wait and a ~1 ms bucket, which a shallow bottleneck buffer absorbs
    (tests/test_congestion.py has both).
    """

    def __init__(self, *, max_datagram_size: int, controller: BbrCongestionControl) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._controller = controller
        self._version = -1
        self._quantum = 0.0
        #: when the last wait we asked for ends (None: not waiting), and the recent lateness of wake-ups
        self._wake_at: float | None = None
        self.lateness = 0.0

    def set_max_datagram_size(self, size: int) -> None:
        self._max_datagram_size = size
        self._version = -1

    def next_send_time(self, now: float) -> float | None:  # type: ignore[override]
        wake_at = self._wake_at
        if wake_at is not None and now >= wake_at:
            self._wake_at = None
            late = now - wake_at
            # a max that decays by 1/64 per wake-up: one descheduled moment is remembered for ~100 wake-ups
            decayed = self.lateness * (1 - 1 / 64)
            lateness = min(late, PACING_MAX_LATENESS) if late > decayed else decayed
            if abs(lateness - self.lateness) > 0.1 * self.lateness + 1e-5:
                self._version = -1  # resize the bucket
            self.lateness = lateness
        if self._version != self._controller.rate_version:
            self._refresh()
        if self.packet_time is None:
            return None
        cc = self._controller
        if cc._app_limited_until and cc.bytes_in_flight < PACING_MIN_BURST * self._max_datagram_size:
            # Interactive traffic: an application-limited flow with next to nothing in flight is not what pacing is
            # for. aioquic's pacer charges every packet a full packet_time (mss / rate), and the rate of such a flow
            # is its own small delivery rate: a ping-pong of small messages paid ~1.4 ms per round trip on loopback
            # (bench.py: 2238 against cubic's 841 us). Bulk flows keep their windows full and are paced as before.
            return None
        self.update_bucket(now)
        if self.bucket_time > -_PACING_SLACK:
            return None
        self._wake_at = now + self._quantum - self.bucket_time
        return self._wake_at

    def update_after_send(self, now: float) -> None:
        if self.packet_time is not None:
            self.update_bucket(now)
            self.bucket_time -= self.packet_time

    def update_bucket(self, now: float) -> None:
        if now > self.evaluation_time:
            self.bucket_time = min(self.bucket_time + (now - self.evaluation_time), self.bucket_max)
            self.evaluation_time = now

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        self._refresh()

    def _refresh(self) -> None:
        cc = self._controller
        self._version = cc.rate_version
        rate = cc.pacing_rate
        if rate <= 0:
            self.packet_time = None
            return
        mss = self._max_datagram_size
        self.packet_time = max(K_MICRO_SECOND, min(mss / rate, 1.0))
        # Wait for as much credit as the loop's lateness would bring anyway (on time: one packet's, as before).
        self._quantum = min(PACING_QUANTUM, self.lateness)
        span = max(PACING_QUANTUM, self._quantum + 2 * self.lateness)
        burst = max(PACING_MIN_BURST * mss, min(rate * span, PACING_MAX_BURST * mss))
        self.bucket_max = burst / rate
        if self.bucket_time > self.bucket_max:
            self.bucket_time = self.bucket_max


#: Credit shortfall (seconds) still treated as paid: float rounding must not schedule nanosecond timers.
_PACING_SLACK = 1e-7
#: A held sender waits for at most this much credit (its recent lateness) so each wake-up sends a batch; the bucket
#: holds at least this much sending.
PACING_QUANTUM = 0.001
#: The bucket in packets: at least this many (slow paths), at most this many (a 64-datagram GSO batch).
PACING_MIN_BURST = 2
PACING_MAX_BURST = 64
#: Lateness beyond this is a stall (the process was not running), not the loop's granularity: not worth a burst.
PACING_MAX_LATENESS = 0.01


register_congestion_control(NAME, BbrCongestionControl)
