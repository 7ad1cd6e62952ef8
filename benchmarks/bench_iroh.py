"""Throughput and 1-byte round-trip latency of iroh mode (``tunnel server|client iroh``) beside ssh -L and a
direct connection, all on 127.0.0.1 (direct addressing, no relays, no discovery).

Throughput: a 256 MiB (``--mib``) upload into a sha256 sink through the tunnel (checked). Latency: 1-byte
ping-pong on one connection through the tunnel to an echo server (``--rounds``). Target: >= 100 MiB/s.

    python benchmarks/bench_iroh.py [--mib 256] [--rounds 2000] [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.private_net import reexec_in_private_net  # noqa: E402
from tests.e2e import programs  # noqa: E402
from tests.iroh_mode.tunnels import IrohClientProc, IrohServerProc, make_key  # noqa: E402

TARGET_MIB_S = 100.0


def measure(name: str, sink_port: int, echo_port: int, payload: bytes, digest: str, rounds: int) -> dict[str, object]:
    start = time.perf_counter()
    count, got = programs.tcp_transfer_upload(sink_port, payload)
    elapsed = time.perf_counter() - start
    if (count, got) != (len(payload), digest):
        raise SystemExit(f"{name}: transfer corrupted ({count} bytes, {got})")
    rtts = sorted(programs.tcp_ping_pong(echo_port, rounds))
    return {
        "path": name,
        "mib_s": round(len(payload) / elapsed / 2**20, 1),
        "rtt_median_us": round(statistics.median(rtts) * 1e6, 1),
        "rtt_p99_us": round(rtts[min(len(rtts) - 1, int(0.99 * len(rtts)))] * 1e6, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--no-ssh", action="store_true", help="skip the ssh -L baseline")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    code = reexec_in_private_net()  # iroh's portmapper probes must not leave the host (benchmarks/private_net.py)
    if code is not None:
        return code
    block = programs.deterministic_bytes(16 * 2**20, seed=9)
    payload = block * max(1, args.mib // 16)  # 16 MiB of noise repeated: cheap to build, still checked
    digest = hashlib.sha256(payload).hexdigest()
    results = []
    with tempfile.TemporaryDirectory() as tmp, programs.TcpSinkServer() as sink, programs.TcpEchoServer() as echo:
        work = Path(tmp)
        results.append(measure("direct", sink.port, echo.port, payload, digest, args.rounds))
        server_key, _ = make_key(work, "server.key", 1)
        client_key, client_id = make_key(work, "client.key", 2)
        with IrohServerProc(server_key, "--allowed-tcp", "127.0.0.0/8", "--allowed-clients", client_id) as server, \
                IrohClientProc(server, client_key, f"tcp://127.0.0.1:{sink.port}") as up, \
                IrohClientProc(server, client_key, f"tcp://127.0.0.1:{echo.port}") as ping:
            results.append(measure("iroh", up.port, ping.port, payload, digest, args.rounds))
        if not args.no_ssh:
            with programs.Sshd(work / "sshd") as sshd:
                sink_fwd, echo_fwd = programs.free_port(), programs.free_port()
                with sshd.forward(sink_fwd, sink.port), sshd.forward(echo_fwd, echo.port):
                    results.append(measure("ssh -L", sink_fwd, echo_fwd, payload, digest, args.rounds))
    print(f"{'path':8} {'MiB/s':>8} {'rtt median us':>14} {'rtt p99 us':>11}")
    for row in results:
        print(f"{row['path']:8} {row['mib_s']:>8} {row['rtt_median_us']:>14} {row['rtt_p99_us']:>11}")
    iroh = next(r for r in results if r["path"] == "iroh")
    verdict = "meets" if float(iroh["mib_s"]) >= TARGET_MIB_S else "MISSES"  # type: ignore[arg-type]
    print(f"iroh mode {verdict} the {TARGET_MIB_S:.0f} MiB/s target")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
