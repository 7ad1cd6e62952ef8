"""CPU seconds per GiB and CPU microseconds per round trip of each tunnel process (issue 12: "no step backwards").

Why CPU and not only MiB/s: on a shared machine throughput and latency swing with whatever else runs, while the CPU
a tunnel process spends for a fixed amount of work (user + system time from /proc/<pid>/stat, all threads) barely
does. So an A/B of two commits measures this on both and compares, next to the wall-clock figures.

One manual-mode tunnel in front of an iperf3 server: ``--mib`` MiB are sent (``iperf3 -n``), the CPU of the tunnel
client (the QUIC sender) and server (the receiver) is read before and after. A second tunnel in front of an echo
server: ``--rounds`` 1-byte ping-pongs, CPU per round trip per process. Linux only (/proc).

    python benchmarks/cpu_cost.py [--runtime asyncio] [--mib 256] [--rounds 2000] [--packet-size N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.e2e import programs  # noqa: E402
from tests.e2e.harness import RUNTIME_MODULES, ManualTunnel  # noqa: E402
from tests.e2e.programs import LOOPBACK  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process, all its threads (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces; fields start at 3
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def _spent(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]], role: str) -> float:
    return sum(after[role]) - sum(before[role])


def _pids(tunnel: ManualTunnel) -> dict[str, int]:
    assert tunnel.client is not None and tunnel.server is not None
    return {"client": tunnel.client.proc.pid, "server": tunnel.server.proc.pid}


def bulk(runtime: str, iperf_port: int, mib: int, packet_size: int | None) -> dict[str, float]:
    """Send ``mib`` MiB through a fresh tunnel; CPU seconds per GiB of each end and the wall-clock MiB/s."""
    with ManualTunnel(f"tcp://{LOOPBACK}:{iperf_port}", runtime=runtime, packet_size=packet_size,
                      timeout=30) as tunnel:
        pids = _pids(tunnel)
        before = {role: cpu_seconds(pid) for role, pid in pids.items()}
        argv = ["iperf3", "-c", LOOPBACK, "-p", str(tunnel.local_port), "-n", f"{mib}M", "-J",
                "--connect-timeout", "5000"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        after = {role: cpu_seconds(pid) for role, pid in pids.items()}
        tunnel.assert_alive()
    report = json.loads(done.stdout)
    if "error" in report:
        raise SystemExit(f"Error: iperf3 failed: {report['error']}")
    received = report["end"]["sum_received"]
    gib = received["bytes"] / 2**30
    out = {f"{role}_s_per_gib": _spent(before, after, role) / gib for role in pids}
    out["total_s_per_gib"] = sum(out.values())
    out["sys_s_per_gib"] = sum(after[role][1] - before[role][1] for role in pids) / gib
    out["mib_s"] = received["bytes"] / 2**20 / received["seconds"]
    return out


def round_trips(runtime: str, echo_port: int, rounds: int, packet_size: int | None) -> dict[str, float]:
    """``rounds`` 1-byte ping-pongs through a fresh tunnel; CPU µs per round trip of each end, median RTT."""
    with ManualTunnel(f"tcp://{LOOPBACK}:{echo_port}", runtime=runtime, packet_size=packet_size,
                      timeout=30) as tunnel:
        programs.tcp_ping_pong(tunnel.local_port, 50)  # opens the stream and warms both ends
        pids = _pids(tunnel)
        before = {role: cpu_seconds(pid) for role, pid in pids.items()}
        rtts = programs.tcp_ping_pong(tunnel.local_port, rounds)
        after = {role: cpu_seconds(pid) for role, pid in pids.items()}
        tunnel.assert_alive()
    out = {f"{role}_us_per_rt": _spent(before, after, role) / rounds * 1e6 for role in pids}
    out["total_us_per_rt"] = sum(out.values())
    out["rtt_median_us"] = statistics.median(rtts) * 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtime", default="asyncio", choices=sorted(RUNTIME_MODULES))
    parser.add_argument("--mib", type=int, default=256, help="MiB sent for the bulk figure (default 256)")
    parser.add_argument("--rounds", type=int, default=2000, help="ping-pongs for the round-trip figure")
    parser.add_argument("--packet-size", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    mib = max(1, min(args.mib, 4096))
    rounds = max(1, min(args.rounds, 100_000))
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="tunnel-cpu-") as tmp,
        programs.Iperf3Server(Path(tmp), one_off=False) as iperf,
        programs.TcpEchoServer() as echo,
    ):
        result = {"runtime": args.runtime, **bulk(args.runtime, iperf.port, mib, args.packet_size),
                  **round_trips(args.runtime, echo.port, rounds, args.packet_size)}
    result["wall_s"] = time.monotonic() - started
    print("  ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
