"""A trace of the QUIC sender's congestion state, for finding out why a real path is slower than the model says.

Off unless the environment names a file: ``TUNNEL_CC_TRACE=/tmp/client.trace tunnel client manual ...``. Then the
driver appends one JSON line at most every ``TUNNEL_CC_TRACE_INTERVAL`` seconds (default 0.01) while the connection
sends: the controller's mode and model (bandwidth, min_rtt, pacing rate, window, loss bounds, app-limited), aioquic's
view (bytes in flight, smoothed RTT, whether pacing holds the sender back) and the driver's own counters (datagrams
sent, sends the socket refused, flushes, timer wake-ups). ``benchmarks/wan_trace.py`` runs a tunnel in the WAN lab
with it and summarises the lines. Why the driver and not the core: the core may not write files or read the
environment (sans-IO), and the driver is the one place that sees both the machine and the socket.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

ENV = "TUNNEL_CC_TRACE"
ENV_INTERVAL = "TUNNEL_CC_TRACE_INTERVAL"


class CcTrace:
    """Samples one Peer's QUIC sender; ``counts`` are bumped by the driver."""

    def __init__(self, path: str, interval: float) -> None:
        # Line-buffered: one append per line, so the two processes of a tunnel may share one file (each line names
        # its pid) and a process ended by a signal loses no line. At most 100 lines a second: the cost is nil.
        self._out = open(path, "a", buffering=1)  # open for the life of the driver
        self._interval = interval
        self._next = 0.0
        #: reads = readable wake-ups, received = datagrams read, recv_calls = GRO receive calls (TUNNEL_UDP_GRO)
        self.counts = {
            "sent": 0, "refused": 0, "flushes": 0, "timers": 0, "reads": 0, "received": 0, "recv_calls": 0,
        }

    @classmethod
    def from_environment(cls) -> CcTrace | None:
        path = os.environ.get(ENV)
        if not path:
            return None
        return cls(path, float(os.environ.get(ENV_INTERVAL, "0.01")))

    def counting(self, deliver: Callable[[bytes, Any], None]) -> Callable[[bytes, Any], None]:
        """``deliver`` that also counts the datagrams it is handed."""
        counts = self.counts

        def counted(data: bytes, remote: Any) -> None:
            counts["received"] += 1
            deliver(data, remote)

        return counted

    def sample(self, machine: Any, now: float) -> None:
        if now < self._next:
            return
        self._next = now + self._interval
        quic = getattr(machine, "quic", None)
        loss = getattr(quic, "_loss", None)
        if loss is None:
            return
        cc = loss._cc
        line: dict[str, Any] = {
            "pid": os.getpid(),
            "cpu": round(time.process_time(), 3),
            "t": round(now, 4),
            "cwnd": loss.congestion_window,
            "inflight": loss.bytes_in_flight,
            "srtt": round(loss._rtt_smoothed, 5) if loss._rtt_initialized else None,
            "paced": quic._pacing_at is not None,
            "pacing_in": None if quic._pacing_at is None else round(quic._pacing_at - now, 5),
            "timer_in": None if machine.get_timer() is None else round(machine.get_timer() - now, 5),
            "bucket": round(loss._pacer.bucket_time, 5),
            "mss": quic._max_datagram_size,
            **self.counts,
        }
        for name in ("mode", "pacing_gain", "round_count", "min_rtt", "inflight_hi", "bw_lo", "base_loss"):
            value = getattr(cc, name, None)
            if isinstance(value, float):
                value = None if math.isinf(value) else round(value, 5)
            if value is not None:
                line[name] = value
        if hasattr(cc, "bandwidth"):
            line["bw_mbit"] = round(cc.bandwidth * 8e-6, 2)
            line["pacing_mbit"] = round(cc.pacing_rate * 8e-6, 2)
            line["app_limited"] = cc._app_limited_until > 0
            line["extra_acked"] = int(cc._extra_acked.value)
            line["recent_rtt"] = None if math.isinf(cc._recent_rtt) else round(cc._recent_rtt, 5)
            line["delivered"] = cc._delivered
            line["lost_bytes"] = cc.lost_bytes
        self._out.write(json.dumps(line) + "\n")

    def close(self) -> None:
        self._out.close()
