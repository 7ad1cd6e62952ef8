"""One manual-mode tunnel in the WAN lab with the congestion trace on (tunnel_io.cctrace): why is it slow?

Builds a WanLab on a profile, starts iperf3 in ``b`` and a manual tunnel (client in ``a``) with ``--congestion``,
runs iperf3 through it (1 or more streams) and prints the throughput plus a summary of the sender's trace: time in
each mode, the bandwidth / min_rtt / pacing / window estimates over time, how often the sender was app-limited,
pacing-limited or window-limited, the loss it saw and sends the socket refused. ``--raw FILE`` keeps the trace lines.

    sudo python benchmarks/wan_trace.py --profile broadband --congestion bbr --seconds 6 --streams 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_wan import iperf  # noqa: E402
from benchmarks.wan_paths import IPERF, run_tool, stop_signals_unwind  # noqa: E402
from tests.nat.lab import is_root, reap_stale_labs  # noqa: E402
from tests.nat.modes import Proc  # noqa: E402
from tests.wan.lab import PROFILES, WanLab, congestion_controls_allowed, set_congestion_control  # noqa: E402
from tests.wan.tunnels import start_manual  # noqa: E402

#: tunnel_io.cctrace's variables, spelled out so an older tree on PYTHONPATH (an A/B run) still starts this script
ENV, ENV_INTERVAL = "TUNNEL_CC_TRACE", "TUNNEL_CC_TRACE_INTERVAL"


def summarise(lines: list[dict[str, Any]]) -> str:
    """Per-process: the sender is the process whose trace delivered the most bytes."""
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for line in lines:
        by_pid.setdefault(line["pid"], []).append(line)
    if not by_pid:
        return "no trace lines"
    sender = max(by_pid.values(), key=lambda ls: ls[-1].get("delivered", 0) or ls[-1].get("sent", 0))
    out = [f"{len(sender)} samples of the sender (pid {sender[0]['pid']})"]
    t0 = sender[0]["t"]
    modes: dict[str, int] = {}
    for s in sender:
        modes[s.get("mode", "-")] = modes.get(s.get("mode", "-"), 0) + 1
    out.append("samples per mode: " + ", ".join(f"{k} {v}" for k, v in sorted(modes.items())))
    n = len(sender)
    limited = {
        "app-limited": sum(1 for s in sender if s.get("app_limited")),
        "pacing holds": sum(1 for s in sender if s["paced"]),
        "window full": sum(1 for s in sender if s["inflight"] + s["mss"] > s["cwnd"]),
    }
    out.append("share of samples: " + ", ".join(f"{k} {100 * v / n:.0f} %" for k, v in limited.items()))
    last = sender[-1]
    out.append(f"datagrams sent {last['sent']}, refused by the socket {last['refused']}, flushes {last['flushes']}, "
               f"timer wake-ups {last['timers']}, read wake-ups {last['reads']}; lost bytes {last.get('lost_bytes')}")
    span = last["t"] - sender[0]["t"]
    if span > 0:
        out.append(f"sender CPU {last['cpu'] - sender[0]['cpu']:.2f} s over {span:.2f} s")
    out.append("    t mode       gain    bw pacing   sent  dlvrd  cpu% min_rtt  srtt cwnd_kB infl_kB wakeups/s app")
    prev = sender[0]
    for s in sender[1:]:
        dt = s["t"] - prev["t"]
        if dt < max(0.1, (last["t"] - t0) / 40):
            continue
        sent = (s["sent"] - prev["sent"]) * s["mss"] * 8e-6 / dt
        delivered = (s.get("delivered", 0) - prev.get("delivered", 0)) * 8e-6 / dt
        cpu = 100 * (s["cpu"] - prev["cpu"]) / dt
        wakeups = (s["timers"] - prev["timers"] + s["reads"] - prev["reads"]) / dt
        out.append(
            f"{s['t'] - t0:5.2f} {s.get('mode', '-'):10} {s.get('pacing_gain', 0):4.2f} {s.get('bw_mbit', 0):5.1f} "
            f"{s.get('pacing_mbit', 0):6.1f} {sent:6.1f} {delivered:6.1f} {cpu:5.0f} "
            f"{1e3 * (s.get('min_rtt') or 0):7.1f} {1e3 * (s['srtt'] or 0):5.0f} {s['cwnd'] / 1e3:7.0f} "
            f"{s['inflight'] / 1e3:7.0f} {wakeups:9.0f} {int(bool(s.get('app_limited')))}"
        )
        prev = s
    bws = [s["bw_mbit"] for s in sender if "bw_mbit" in s]
    if bws:
        out.append(f"bw estimate: median {statistics.median(bws):.1f}, max {max(bws):.1f} Mbit/s")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="broadband", choices=sorted(PROFILES))
    parser.add_argument("--congestion", default="bbr")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--runtime", default="asyncio")
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between trace lines")
    parser.add_argument("--raw", type=Path, help="keep the trace lines here")
    parser.add_argument("--extra", default="", help="more tunnel flags, space-separated")
    args = parser.parse_args()
    if not is_root():
        print("Error: wan_trace.py builds network namespaces and must run as root", file=sys.stderr)
        return 2
    stop_signals_unwind()
    reap_stale_labs()
    trace = Path(tempfile.mkstemp(prefix="cctrace-", suffix=".jsonl")[1])
    os.environ[ENV] = str(trace)
    os.environ[ENV_INTERVAL] = str(args.interval)
    with congestion_controls_allowed("cubic"), WanLab(profile=PROFILES[args.profile]) as lab:
        set_congestion_control(lab, "cubic")
        server = Proc("iperf3", lab.in_ns("b", ["iperf3", "-s", "-p", str(IPERF)]))
        time.sleep(0.3)
        extra = ["--congestion", args.congestion, *args.extra.split()]
        pair = start_manual(lab, lab.addr, IPERF, runtime=args.runtime, extra=extra)
        try:
            pair.wait_listening()
            trace.write_text("")  # the handshake's lines are not the transfer's
            result = iperf(lab, "127.0.0.1", IPERF, args.seconds, args.streams)
        finally:
            pair.close()
            server.stop()
            os.environ.pop(ENV, None)
    print(f"{args.profile}, {args.congestion}, {args.streams} stream(s), {args.seconds:g} s: "
          f"{result.get('mbit', result.get('error'))} Mbit/s", flush=True)
    lines = [json.loads(x) for x in trace.read_text().splitlines() if x.strip()]
    if args.raw:
        args.raw.write_text(trace.read_text())
    trace.unlink()
    print(summarise(lines))
    return 0


if __name__ == "__main__":
    run_tool(main)
