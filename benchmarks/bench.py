"""Throughput and latency of the tunnel (manual mode, and iroh mode) against ssh -L, socat and a direct connection.

Why these baselines: "direct" is the ceiling, socat is the cost of one user-space hop without crypto, and ssh -L
is what users would otherwise use for the same job, so the tunnel should be no slower than it where it counts.
Everything runs on 127.0.0.1; see README.md for how to read the numbers.

    python benchmarks/bench.py [--quick] [--runtime asyncio] [--packet-size N] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.private_net import reexec_in_private_net  # noqa: E402
from tests.e2e import programs  # noqa: E402
from tests.e2e.harness import FAKE_RUNTIME, RUNTIME_MODULES, ManualTunnel  # noqa: E402
from tests.e2e.programs import LOOPBACK  # noqa: E402

TARGET_MIB_S = 40.0  # issue 3: manual mode at the default packet size
TARGET_IROH_MIB_S = 100.0  # issue 5: iroh mode on loopback


@attrs.frozen
class PathResult:
    name: str
    mib_s: float
    rtt_median_us: float
    rtt_p99_us: float
    note: str = ""


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def measure(
    name: str, tcp_port: int, echo_port: int, seconds: int, rounds: int, note: str = ""
) -> PathResult:
    """One iperf3 TCP run and ``rounds`` 1-byte ping-pongs through whatever listens on the two ports."""
    print(f"  {name}: iperf3 {seconds} s ...", file=sys.stderr, flush=True)
    iperf = programs.run_iperf3_client(tcp_port, seconds=seconds)
    print(f"  {name}: {rounds} ping-pongs ...", file=sys.stderr, flush=True)
    rtts = [rtt * 1e6 for rtt in programs.tcp_ping_pong(echo_port, rounds)]
    return PathResult(
        name=name,
        mib_s=iperf.mib_per_second,
        rtt_median_us=statistics.median(rtts),
        rtt_p99_us=percentile(rtts, 0.99),
        note=note,
    )


@contextlib.contextmanager
def ports_pair(
    factory: Callable[[int], contextlib.AbstractContextManager[int]], iperf_port: int, echo_port: int
) -> Iterator[tuple[int, int]]:
    """Put the same kind of forwarder in front of the iperf3 server and the echo server."""
    with factory(iperf_port) as tcp_port, factory(echo_port) as echo:
        yield tcp_port, echo


@contextlib.contextmanager
def python_relay_chain(port: int) -> Iterator[int]:
    """Two py_relay.py processes in front of ``port``: the tunnel's shape without QUIC, i.e. what being written in
    Python costs by itself. Yields the entry port."""
    entry, middle = programs.free_port(), programs.free_port()
    script = str(Path(__file__).resolve().parent / "py_relay.py")
    procs = [subprocess.Popen([sys.executable, script, "exit", str(middle), str(port)]),
             subprocess.Popen([sys.executable, script, "entry", str(entry), str(middle)])]
    try:
        programs.wait_tcp_listening(middle, proc=procs[0])  # type: ignore[arg-type]
        programs.wait_tcp_listening(entry, proc=procs[1])  # type: ignore[arg-type]
        yield entry
    finally:
        for proc in procs:
            programs.stop_process(proc)  # type: ignore[arg-type]


def run(args: argparse.Namespace) -> list[PathResult]:
    seconds = 2 if args.quick else args.seconds
    rounds = 300 if args.quick else args.rounds
    results: list[PathResult] = []
    with (
        tempfile.TemporaryDirectory(prefix="tunnel-bench-") as tmp,
        programs.Iperf3Server(Path(tmp), one_off=False) as iperf,
        programs.TcpEchoServer() as echo,
        programs.Sshd(Path(tmp) / "sshd") as sshd,
    ):
        workdir = Path(tmp)

        @contextlib.contextmanager
        def direct(port: int) -> Iterator[int]:
            yield port

        @contextlib.contextmanager
        def socat(port: int) -> Iterator[int]:
            local = programs.free_port()
            with programs.SocatRelay(workdir, local, port):
                yield local

        @contextlib.contextmanager
        def ssh_forward(port: int) -> Iterator[int]:
            local = programs.free_port()
            with sshd.forward(local, port):
                yield local

        setup: list[float] = []

        @contextlib.contextmanager
        def tunnel(port: int) -> Iterator[int]:
            with ManualTunnel(
                f"tcp://{LOOPBACK}:{port}", runtime=args.runtime, packet_size=args.packet_size, timeout=30
            ) as t:
                setup.append(t.setup_seconds or 0.0)
                yield t.local_port
                t.assert_alive()

        iroh_keys: dict[str, tuple[Path, str]] = {}

        @contextlib.contextmanager
        def iroh_tunnel(port: int) -> Iterator[int]:
            """iroh mode on direct addressing (no relay, no discovery): one server and one client per port."""
            from tests.iroh_mode.tunnels import IrohClientProc, IrohServerProc, make_key

            if not iroh_keys:
                iroh_keys["server"] = make_key(workdir, "server.key", 1)
                iroh_keys["client"] = make_key(workdir, "client.key", 2)
            client_key, client_id = iroh_keys["client"]
            with IrohServerProc(iroh_keys["server"][0], "--allowed-tcp", "127.0.0.0/8",
                                "--allowed-clients", client_id) as server, \
                    IrohClientProc(server, client_key, f"tcp://{LOOPBACK}:{port}") as client:
                yield client.port

        paths = [
            ("direct", direct),
            ("socat", socat),
            ("ssh -L", ssh_forward),
            ("python relay x2", python_relay_chain),
            (f"tunnel ({args.runtime})", tunnel),
        ]
        if not args.no_iroh:
            paths.append(("tunnel (iroh mode)", iroh_tunnel))
        for name, factory in paths:
            if args.only and not any(word in name for word in args.only):
                continue
            print(f"measuring {name}", file=sys.stderr, flush=True)
            with ports_pair(factory, iperf.port, echo.port) as (tcp_port, echo_port):
                result = measure(name, tcp_port, echo_port, seconds, rounds)
            if factory is iroh_tunnel:
                result = attrs.evolve(result, note="asyncio, direct addressing")
            if factory is tunnel and setup:
                note = f"setup {statistics.median(setup):.2f} s"
                if args.packet_size:
                    note += f", packet size {args.packet_size}"
                result = attrs.evolve(result, note=note)
            results.append(result)
    return results


def ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}x" if base else "-"


def report(results: list[PathResult], quic_us: float | None = None) -> str:
    by_name = {r.name: r for r in results}
    direct = by_name.get("direct")
    ssh = by_name.get("ssh -L")
    header = (
        f"{'path':<18}{'TCP MiB/s':>11}{'vs direct':>11}{'vs ssh -L':>11}"
        f"{'RTT med µs':>12}{'p99 µs':>10}{'added µs':>10}{'vs ssh -L':>11}  note"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        added = r.rtt_median_us - direct.rtt_median_us if direct else float("nan")
        ssh_added = ssh.rtt_median_us - direct.rtt_median_us if ssh and direct else None
        lines.append(
            f"{r.name:<18}{r.mib_s:>11.1f}{ratio(r.mib_s, direct.mib_s if direct else None):>11}"
            f"{ratio(r.mib_s, ssh.mib_s if ssh else None):>11}"
            f"{r.rtt_median_us:>12.1f}{r.rtt_p99_us:>10.1f}{added:>10.1f}"
            f"{ratio(added, ssh_added) if ssh_added and ssh_added > 0 else '-':>11}  {r.note}"
        )
    tunnels = [r for r in results if r.name.startswith("tunnel")]
    for t in tunnels:
        target = TARGET_IROH_MIB_S if "iroh" in t.name else TARGET_MIB_S
        ok = t.mib_s >= target
        lines.append(
            f"{t.name}: target TCP >= {target:.0f} MiB/s: {'PASS' if ok else 'FAIL'} ({t.mib_s:.1f} MiB/s)"
        )
        if ssh and direct:
            added = t.rtt_median_us - direct.rtt_median_us
            ssh_added = ssh.rtt_median_us - direct.rtt_median_us
            verdict = "PASS" if added <= ssh_added else "FAIL"
            lines.append(
                f"{t.name}: target added latency <= ssh -L: {verdict} "
                f"(tunnel +{added:.1f} µs, ssh -L +{ssh_added:.1f} µs)"
            )
    relay = by_name.get("python relay x2")
    if relay and direct:
        lines.append(
            f"floor, two Python processes without QUIC (python relay x2): "
            f"+{relay.rtt_median_us - direct.rtt_median_us:.1f} µs"
        )
    if quic_us is not None:
        lines.append(
            "floor, QUIC protocol work alone (aioquic, both ends, one process, no I/O): "
            f"{quic_us:.1f} µs per round trip"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 s iperf3 runs and 300 round trips")
    parser.add_argument("--seconds", type=int, default=5, help="iperf3 duration per path (default 5)")
    parser.add_argument(
        "--rounds", type=int, default=2000, help="ping-pong round trips per path (default 2000)"
    )
    parser.add_argument(
        "--runtime",
        default="asyncio",
        choices=[*sorted(RUNTIME_MODULES), FAKE_RUNTIME],
        help="tunnel runtime ('fake' = the harness's stand-in CLI, to check this script)",
    )
    parser.add_argument(
        "--packet-size", type=int, default=None, help="pass --packet-size N to both tunnel ends"
    )
    parser.add_argument(
        "--only", action="append", help="measure only paths whose name contains this (repeatable)"
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--no-iroh", action="store_true", help="skip the iroh-mode row")
    args = parser.parse_args(argv)
    code = reexec_in_private_net()  # iroh's portmapper probes must not leave the host (benchmarks/private_net.py)
    if code is not None:
        return code
    results = run(args)
    quic_us = None
    if any(r.name.startswith("tunnel (") and "iroh" not in r.name for r in results) and args.runtime != FAKE_RUNTIME:
        from benchmarks.quic_cost import round_trip_cost

        print("measuring QUIC protocol cost in-process", file=sys.stderr, flush=True)
        quic_us = min(round_trip_cost(1000 if args.quick else 3000, args.packet_size or 1350) for _ in range(3))
    print(report(results, quic_us))
    if args.json:
        args.json.write_text(json.dumps([attrs.asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
