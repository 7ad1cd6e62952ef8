"""Flame graphs of both ends of a manual-mode tunnel under bulk load on loopback (issue 13, "a profile of aioquic's
send and receive paths"), with py-spy.

One iperf3 TCP upload through a manual-mode tunnel at a realistic packet size (1350 by default: loopback would pick
16000, which no real path carries) while ``py-spy record`` samples the tunnel client (the QUIC sender) and the tunnel
server (the receiver). Bounded: one iperf3 run of ``--seconds`` (default 8), py-spy stops with it.

    python benchmarks/profile_tunnel.py [--seconds N] [--packet-size N] [--congestion NAME] [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.e2e import programs  # noqa: E402
from tests.e2e.harness import ManualTunnel  # noqa: E402
from tests.e2e.programs import LOOPBACK  # noqa: E402


def _py_spy() -> str:
    """py-spy's executable: on PATH, or where pip installed the distribution's script."""
    found = shutil.which("py-spy")
    if found:
        return found
    try:
        files = importlib.metadata.distribution("py-spy").files or []
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit("Error: py-spy is not installed (pip install py-spy)") from None
    for file in files:
        if file.name == "py-spy":
            return str(file.locate())
    raise SystemExit("Error: py-spy's executable not found")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--packet-size", type=int, default=1350)
    parser.add_argument("--congestion", default=None)
    parser.add_argument("--runtime", default="asyncio")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "profiles")
    parser.add_argument("--no-profile", action="store_true", help="only the iperf3 figure (a before/after check)")
    parser.add_argument("--raw", action="store_true",
                        help="collapsed stacks (.txt) instead of SVG flame graphs, for a text summary of the hot spots")
    args = parser.parse_args(argv)
    py_spy = "" if args.no_profile else _py_spy()
    extra = ["--congestion", args.congestion] if args.congestion else []
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"tunnel-{args.runtime}-{args.packet_size}-{args.congestion or 'default'}"
    seconds = max(2, min(args.seconds, 60))
    with (
        tempfile.TemporaryDirectory(prefix="tunnel-profile-") as tmp,
        programs.Iperf3Server(Path(tmp), one_off=False) as iperf,
        ManualTunnel(f"tcp://{LOOPBACK}:{iperf.port}", runtime=args.runtime, packet_size=args.packet_size,
                     server_extra_args=extra, client_extra_args=extra, timeout=30) as tunnel,
    ):
        assert tunnel.client is not None and tunnel.server is not None
        spies = [
            subprocess.Popen([py_spy, "record", "--nonblocking", "-r", "250", "-d", str(seconds + 1), "-p",
                              str(proc.proc.pid), *(["--format", "raw"] if args.raw else []),
                              "-o", str(args.out / f"{tag}-{role}.{'txt' if args.raw else 'svg'}")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for role, proc in (("client-sender", tunnel.client), ("server-receiver", tunnel.server))
            if not args.no_profile
        ]
        result = programs.run_iperf3_client(tunnel.local_port, seconds=seconds)
        for spy in spies:
            spy.wait(timeout=seconds + 30)
        tunnel.assert_alive()
    print(f"{tag}: {result.bits_per_second / 1e6:.1f} Mbit/s; flame graphs in {args.out}/{tag}-*.svg")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
