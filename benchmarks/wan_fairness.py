"""Issue 13's fairness check in the WAN lab: the tunnel against one kernel CUBIC TCP flow on one bottleneck.

One 100 Mbit/s link, 25 ms each way, a 200 ms tail-drop queue (the deep buffer where a loss-based flow keeps a
standing queue). Two bulk transfers share it for ``--seconds``: iperf3 through a manual-mode tunnel (``--congestion``,
default bbr) and iperf3 directly over TCP with the kernel's CUBIC (set in both namespaces). Reported: each flow's
receiver Mbit/s over the whole run and per second, and the split. Issue 13 asks that neither gets less than a quarter
of the link.

    sudo python benchmarks/wan_fairness.py --seconds 20
    sudo python benchmarks/wan_fairness.py --congestion cubic      # the tunnel's CUBIC against the kernel's
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.wan_paths import run_tool, stop_signals_unwind  # noqa: E402
from tests.nat.lab import is_root, reap_stale_labs  # noqa: E402
from tests.nat.modes import Proc  # noqa: E402
from tests.wan.lab import Profile, WanLab, congestion_controls_allowed, set_congestion_control  # noqa: E402
from tests.wan.tunnels import start_manual  # noqa: E402

TUNNELLED, DIRECT = 5201, 5202
FAIRNESS = Profile("fairness", delay_ms=25, rate_mbit=100, queue_ms=200)


def _iperf(lab: WanLab, host: str, port: int, seconds: float) -> subprocess.Popen[str]:
    argv = lab.in_ns("a", ["iperf3", "-c", host, "-p", str(port), "-t", str(seconds), "-i", "1", "-J",
                           "--connect-timeout", "15000"])
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen[str], seconds: float) -> dict[str, Any]:
    try:
        out, _ = proc.communicate(timeout=seconds + 60)
        report = json.loads(out)
    except (subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        proc.kill()
        return {"error": type(exc).__name__}
    if "error" in report:
        return {"error": report["error"]}
    per_second = [round(i["sum"]["bits_per_second"] / 1e6, 1) for i in report.get("intervals", [])]
    return {"mbit": report["end"]["sum_received"]["bits_per_second"] / 1e6, "per_second": per_second}


def measure(congestion: str, seconds: float, head_start: float) -> dict[str, Any]:
    with congestion_controls_allowed("cubic"), WanLab(profile=FAIRNESS) as lab:
        set_congestion_control(lab, "cubic")
        servers = [Proc("iperf3", lab.in_ns("b", ["iperf3", "-s", "-p", str(port)])) for port in (TUNNELLED, DIRECT)]
        time.sleep(0.3)
        pair = start_manual(lab, lab.addr, TUNNELLED, extra=["--congestion", congestion])
        try:
            pair.wait_listening()
            tunnel = _iperf(lab, "127.0.0.1", TUNNELLED, seconds + head_start)
            time.sleep(head_start)  # the tunnel's flow is going before the competitor joins
            direct = _iperf(lab, lab.addr["b"], DIRECT, seconds)
            return {"tunnel": _result(tunnel, seconds), "cubic": _result(direct, seconds),
                    "congestion": congestion, "seconds": seconds, "head_start": head_start}
        finally:
            pair.close()
            for server in servers:
                server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--congestion", default="bbr", help="the tunnel's --congestion (default bbr)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds both flows share the link")
    parser.add_argument("--head-start", type=float, default=3.0, help="seconds the tunnel's flow runs alone first")
    parser.add_argument("--json", type=Path, help="also write the raw result here")
    args = parser.parse_args()
    if not is_root():
        print("Error: wan_fairness.py builds network namespaces and must run as root", file=sys.stderr)
        return 2
    stop_signals_unwind()
    reap_stale_labs()
    result = measure(args.congestion, args.seconds, args.head_start)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    tunnel, cubic = result["tunnel"], result["cubic"]
    print(f"{FAIRNESS.describe()}; tunnel --congestion {args.congestion} vs kernel CUBIC TCP, {args.seconds:g} s")
    if "error" in tunnel or "error" in cubic:
        print(f"Error: iperf3 failed: tunnel {tunnel.get('error')}, cubic {cubic.get('error')}")
        return 1
    # the tunnel's iperf3 ran head_start longer: compare the seconds both flows shared
    shared = tunnel["per_second"][round(args.head_start):][: len(cubic["per_second"])]
    t_mbit = sum(shared) / max(1, len(shared))
    total = t_mbit + cubic["mbit"]
    print(f"tunnel {t_mbit:.1f} Mbit/s ({100 * t_mbit / total:.0f} %), kernel CUBIC {cubic['mbit']:.1f} Mbit/s "
          f"({100 * cubic['mbit'] / total:.0f} %), sum {total:.1f}")
    print("per second, tunnel:", " ".join(f"{x:g}" for x in shared))
    print("per second, CUBIC: ", " ".join(f"{x:g}" for x in cubic["per_second"]))
    return 0


if __name__ == "__main__":
    run_tool(main)
