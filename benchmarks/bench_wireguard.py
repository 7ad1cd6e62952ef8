"""WireGuard through the tunnel beside plain WireGuard, on the WAN lab's profiles (issue 14).

One WAN lab per profile (tests/wan: two namespaces on a user-space link with delay, jitter, loss, rate). Per row,
``wireguard-go`` runs in both namespaces (tests/wireguard/lab.py); its peer endpoint is either B's path address
(``plain``: WireGuard straight over the link) or the tunnel client's local UDP listener (``manual``, ``nostr``,
``iroh``: WireGuard's UDP carried by the tunnel as QUIC datagrams). Over the WireGuard interface it measures:

* ping: ``--pings`` 56-byte echo requests at 20/s: p50 / p99 round trip and the share delivered;
* iperf3 TCP (the namespaces' kernel congestion control, ``--cc``), A -> B and B -> A, ``--seconds`` each,
  receiver's Mbit/s;

and, for tunnel rows, the tunnel's datagram counters (fragmented, dropped oldest, ...) from its close summary.

    sudo python benchmarks/bench_wireguard.py                            # wifi; plain, manual, nostr, iroh
    sudo python benchmarks/bench_wireguard.py --profile wifi --profile broadband --rows plain,manual --seconds 10
    sudo python benchmarks/bench_wireguard.py --quick                    # 3 s iperf3, 60 pings: does it run?
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.wan_paths import stop_signals_unwind  # noqa: E402
from tests.nat.lab import LabError, is_root, reap_stale_labs  # noqa: E402
from tests.wan.lab import PROFILES, congestion_controls_allowed, set_congestion_control  # noqa: E402
from tests.wireguard.lab import (  # noqa: E402
    WG_IP,
    WG_MTU,
    WG_PORT_B,
    WanPath,
    WireGuardPair,
    iperf,
    percentile,
    ping,
    tools_missing,
)
from tests.wireguard.tunnel import CLIENT_LISTEN, MODES, TunnelInNamespaces, summary  # noqa: E402

ROWS = ("plain", *MODES)
NAMES = {"plain": "plain WireGuard", "manual": "WireGuard in tunnel manual", "nostr": "WireGuard in tunnel nostr",
         "iroh": "WireGuard in tunnel iroh"}


@contextlib.contextmanager
def carrier(path: WanPath, row: str) -> Iterator[tuple[tuple[str, int], TunnelInNamespaces | None]]:
    """Where WireGuard A sends: B directly (plain) or a running tunnel's local listener."""
    if row == "plain":
        yield (path.ip("B"), WG_PORT_B), None
        return
    with TunnelInNamespaces(path, f"udp://127.0.0.1:{WG_PORT_B}", mode=row) as tunnel:
        yield CLIENT_LISTEN, tunnel


def measure(path: WanPath, row: str, seconds: float, pings: int, mtu: int) -> dict[str, Any]:
    result: dict[str, Any] = {"row": row, "name": NAMES[row]}
    with carrier(path, row) as (endpoint, tunnel), \
            WireGuardPair(path.ns("A"), path.ns("B"), endpoint, mtu=mtu) as wg:
        warm = ping(path.ns("A"), WG_IP["B"], 5, interval=0.3)  # WireGuard's handshake, ARP
        if not warm["received"]:
            raise LabError(f"no ping over WireGuard: {warm['output']}\n{wg.show()}\n"
                           f"{tunnel.logs() if tunnel else ''}")
        got = ping(path.ns("A"), WG_IP["B"], pings, interval=0.05, timeout=pings * 0.05 + 60)
        result["ping"] = {"sent": got["sent"], "received": got["received"], "duplicates": got["duplicates"],
                          "p50_ms": percentile(got["rtts"], 50), "p99_ms": percentile(got["rtts"], 99)}
        for key, extra in (("up", ()), ("down", ("-R",))):
            report = iperf(path.ns("A"), path.ns("B"), *extra, seconds=seconds)
            result[key] = ({"error": str(report["error"])} if "error" in report
                           else {"mbit": report["end"]["sum_received"]["bits_per_second"] / 1e6})
        if tunnel is not None:
            tunnel.stop()
            assert tunnel.client is not None and tunnel.server is not None
            result["client"] = summary(tunnel.client.stderr)
            result["server"] = summary(tunnel.server.stderr)
    return result


def run_profile(name: str, rows: list[str], seconds: float, pings: int, cc: str, mtu: int) -> dict[str, Any]:
    profile = PROFILES[name]
    log(f"profile {name}: {profile.describe()}; iperf3 {seconds:g} s each way, {pings} pings at 20/s, TCP {cc}")
    results = []
    with WanPath(profile) as path:
        assert path.lab is not None
        set_congestion_control(path.lab, cc)
        for row in rows:
            started = time.monotonic()
            try:
                results.append(measure(path, row, seconds, pings, mtu))
            except (LabError, OSError, AssertionError) as exc:
                log(f"    {NAMES[row]}: FAILED {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
                results.append({"row": row, "name": NAMES[row], "error": str(exc)[:2000]})
            log(f"    {NAMES[row]}: done in {time.monotonic() - started:.0f} s")
    return {"profile": name, "describe": profile.describe(), "seconds": seconds, "pings": pings, "cc": cc,
            "mtu": mtu, "rows": results}


def table(result: dict[str, Any]) -> str:
    lines = [f"**{result['profile']}**: {result['describe']}; WireGuard MTU {result['mtu']}, inner TCP {result['cc']}, "
             f"iperf3 {result['seconds']:g} s each way, {result['pings']} pings at 20/s",
             "", "| path | ping p50 / p99 ms | ping delivered | iperf3 A->B Mbit/s | iperf3 B->A Mbit/s "
             "| tunnel: fragmented / dropped oldest (client, server) |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error'].splitlines()[0][:80]} | | | | |")
            continue
        p = r["ping"]
        rtt = "—" if p["p50_ms"] is None else f"{p['p50_ms']:.1f} / {p['p99_ms']:.1f}"
        delivered = f"{100 * p['received'] / max(1, p['sent']):.1f} %" + (f", {p['duplicates']} dup"
                                                                        if p["duplicates"] else "")
        tun = "—"
        if "client" in r:
            c, s = r["client"], r["server"]
            tun = f"{c['fragmented']} / {c['dropped_oldest']}, {s['fragmented']} / {s['dropped_oldest']}"
        lines.append(f"| {r['name']} | {rtt} | {delivered} | {mbit(r['up'])} | {mbit(r['down'])} | {tun} |")
    return "\n".join(lines)


def mbit(d: dict[str, Any]) -> str:
    return f"failed ({d['error'][:40]})" if "error" in d else f"{d['mbit']:.1f}"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", action="append", choices=sorted(PROFILES), help="repeatable; default: wifi")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, default all: {','.join(ROWS)}")
    parser.add_argument("--seconds", type=float, default=10.0, help="iperf3 seconds each way (default 10)")
    parser.add_argument("--pings", type=int, default=300, help="pings at 20/s (default 300: p99 from 3 samples)")
    parser.add_argument("--cc", choices=("cubic", "bbr"), default="cubic",
                        help="kernel TCP congestion control of the namespaces (inner TCP over WireGuard)")
    parser.add_argument("--wg-mtu", type=int, default=WG_MTU,
                        help=f"MTU of the WireGuard interfaces (default {WG_MTU}, WireGuard's: 1452-byte UDP payloads, "
                        "two QUIC datagram fragments each; up to 1400 fits one once path MTU discovery found a "
                        "1500-byte path)")
    parser.add_argument("--quick", action="store_true", help="3 s iperf3 and 60 pings: a check that it runs")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        print(f"Error: unknown row {unknown[0]!r}; rows: {', '.join(ROWS)}", file=sys.stderr)
        return 2
    if not is_root():
        print("Error: bench_wireguard.py builds network namespaces and must run as root", file=sys.stderr)
        return 2
    missing = tools_missing()
    if missing:
        print(f"Error: missing {', '.join(missing)} (scripts/install.sh --test)", file=sys.stderr)
        return 2
    seconds, pings = (3.0, 60) if args.quick else (args.seconds, args.pings)
    stop_signals_unwind()
    reap_stale_labs()
    load = os.getloadavg()[0]
    command = " ".join(["python benchmarks/bench_wireguard.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, load average at "
          f"start {load:.2f}. Command: `{command}`.\n", flush=True)
    results: list[dict[str, Any]] = []
    try:
        with congestion_controls_allowed(args.cc):
            for name in args.profile or ["wifi"]:
                results.append(run_profile(name, rows, seconds, pings, args.cc, args.wg_mtu))
                print(table(results[-1]) + "\n", flush=True)
    except KeyboardInterrupt:  # SIGTERM too (above): every lab's context manager has torn it down by now
        log("interrupted; labs torn down")
        return 130
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
