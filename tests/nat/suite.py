"""The NAT suite's runs, executed concurrently in separate labs, and the results table they produce.

Why a runner separate from the test functions: every run needs its own lab (namespaces, NAT rules, coturn) and the
unpunchable pairs without TURN each wait out ICE's 30 s deadline, so running the matrix one test at a time would
take many minutes. The session fixture runs everything here at once in a bounded thread pool; each test function
then asserts on its own entry, so a failure still names the pair and mode.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import os
import queue
import signal
import subprocess
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import attrs
from tests.helpers import early

from .lab import Lab, is_root, reap_stale_labs, tools_missing
from .modes import MODES, PROBE, PYTHON, Connected, Failed, IrohMode, PathChange, RunningPair

#: Pairs (client NAT, server NAT) where hole punching cannot work: a symmetric NAT against a port-restricted or
#: symmetric one (the far side only accepts the port it sent to, which the symmetric side never reuses).
UNPUNCHABLE: frozenset[tuple[str, str]] = frozenset({("prc", "sym"), ("sym", "prc"), ("sym", "sym")})
DIRECT_PATHS = frozenset({"Direct (Host)", "NAT Traversal (Server Reflexive)", "Peer Reflexive"})
RELAY_PATH = "Relay (TURN)"
WORKERS = int(os.environ.get("TUNNEL_NAT_WORKERS", "4"))
#: Comma-separated subset of MODES to run (default: all); for working on one mode.
SELECTED_MODES: tuple[str, ...] = tuple(
    m for m in os.environ.get("TUNNEL_NAT_MODES", ",".join(MODES)).replace(" ", "").split(",") if m)
#: The suite prints its table always; it rewrites docs/nat.md only when asked (CI's tree stays clean).
WRITE_DOCS = os.environ.get("TUNNEL_NAT_WRITE_DOCS", "") == "1"
SMALL_TRANSFER = 256 * 1024
RELAY_TRANSFER = 5 * 1024 * 1024
BIG_TRANSFER = 20 * 1024 * 1024
LOSS_PERCENT = 5
#: kill -9 of the server is noticed through consent freshness (30 s without an answer) or QUIC's idle timeout.
LOST_DEADLINE = 40.0
DOC = Path(__file__).resolve().parents[2] / "docs" / "nat.md"


@attrs.frozen
class MatrixResult:
    mode: str
    nat_a: str
    nat_b: str
    turn: bool
    outcome: Connected | Failed | None
    transfer_ok: bool = False
    detail: str = ""
    #: iroh: the direct path it moved to after connecting (None: stayed on the path it connected with).
    later: PathChange | None = None


@attrs.frozen
class ImpairResult:
    outcome: Connected | Failed | None
    transfer: dict[str, object] = attrs.Factory(dict)
    detail: str = ""


@attrs.frozen
class RestartResult:
    outcome: Connected | Failed | None
    exit_code: int | None = None
    seconds_to_exit: float | None = None
    last_line: str = ""
    port_released: bool = False
    transfer_started: bool = False
    detail: str = ""


@attrs.define
class SuiteResults:
    matrix: dict[tuple[str, str, str, bool], MatrixResult] = attrs.Factory(dict)
    #: Per mode: the 5 % loss run and the killed-server run.
    impair: dict[str, ImpairResult] = attrs.Factory(dict)
    restart: dict[str, RestartResult] = attrs.Factory(dict)
    prefixes: list[str] = attrs.Factory(list)
    seconds: float = 0.0


def _run_pair(lab: Lab, mode: str, turn: bool, listen_port: int, body: Callable[[RunningPair], object],
              **options: object) -> object:
    pair = MODES[mode].start(lab, turn=turn, listen_port=listen_port, echo_port=listen_port - 100, **options)
    try:
        return body(pair)
    finally:
        pair.close()


def run_matrix_pair(mode: str, nat_a: str, nat_b: str, prefixes: list[str]) -> list[MatrixResult]:
    """One lab per NAT pair: first with TURN, then (fresh conntrack and NAT state) without (ICE modes)."""
    results: list[MatrixResult] = []
    spec = MODES[mode]
    with Lab(nat_a, nat_b) as lab:
        prefixes.append(lab.prefix)
        for index, turn in enumerate(spec.turn_variants):
            port = 7101 + index
            if index:
                lab.set_nat("A", nat_a)
                lab.set_nat("B", nat_b)

            def body(pair: RunningPair, turn: bool = turn) -> MatrixResult:
                outcome = pair.wait_connected()
                ok = False
                detail = ""
                if isinstance(outcome, Connected):
                    # Relayed paths carry more: QUIC through ChannelData must hold up beyond a handshake.
                    relayed = outcome.path == RELAY_PATH or outcome.path.startswith("Relay ")
                    verdict = pair.transfer(RELAY_TRANSFER if relayed else SMALL_TRANSFER, timeout=20)
                    ok = bool(verdict.get("ok"))
                    detail = "" if ok else f"transfer: {verdict}\n{pair.describe()}"
                    if isinstance(spec, IrohMode) and relayed:
                        later = pair.wait_path(spec.direct_pattern, spec.direct_wait)
                        return MatrixResult(mode, nat_a, nat_b, turn, outcome, ok, detail, later)
                else:
                    detail = pair.describe()
                return MatrixResult(mode, nat_a, nat_b, turn, outcome, ok, detail)

            try:
                results.append(_run_pair(lab, mode, turn, port, body))  # type: ignore[arg-type]
            except Exception:
                results.append(MatrixResult(mode, nat_a, nat_b, turn, None, False, traceback.format_exc()))
    return results


def run_impairment(mode: str, prefixes: list[str]) -> ImpairResult:
    """5 % random loss each way on the client's router; a 20 MB echo must come back intact."""
    with Lab("prc", "prc") as lab:
        prefixes.append(lab.prefix)
        lab.impair_loss("A", LOSS_PERCENT)

        def body(pair: RunningPair) -> ImpairResult:
            outcome = pair.wait_connected()
            if not isinstance(outcome, Connected):
                return ImpairResult(outcome, detail=pair.describe())
            verdict = pair.transfer(BIG_TRANSFER, timeout=150)
            return ImpairResult(outcome, verdict, "" if verdict.get("ok") else pair.describe())

        try:
            return _run_pair(lab, mode, False, 7103, body)  # type: ignore[return-value]
        except Exception:
            return ImpairResult(None, detail=traceback.format_exc())


def run_restart(mode: str, prefixes: list[str]) -> RestartResult:
    """kill -9 the server mid-transfer: the client must exit with 11 (connection lost) and free its port."""
    with Lab("fullcone", "prc") as lab:
        prefixes.append(lab.prefix)

        def body(pair: RunningPair) -> RestartResult:
            outcome = pair.wait_connected()
            if not isinstance(outcome, Connected):
                return RestartResult(outcome, detail=pair.describe())
            mover = pair.start_transfer(10**10, timeout=120)
            try:
                started = False
                try:
                    started = mover.stdout.get(timeout=15) == "started\n"
                except queue.Empty:
                    started = False
                time.sleep(0.5)
                os.kill(pair.server.proc.pid, signal.SIGKILL)  # `ip netns exec` exec()s: this is the tunnel
                killed_at = time.monotonic()
                try:
                    code: int | None = pair.client.proc.wait(timeout=LOST_DEADLINE + 20)
                except subprocess.TimeoutExpired:
                    code = None
                took = round(time.monotonic() - killed_at, 2)
                last = pair.client.stderr_lines[-1] if pair.client.stderr_lines else ""
                released = _bindable(lab, pair.listen_port)
                return RestartResult(outcome, code, took, last, released, started, pair.describe())
            finally:
                mover.stop()

        try:
            # Clients reconnect (nostr, iroh) or hold on (manual) by default (docs/reconnect.md); this run checks
            # the old behaviour, exit 11 at once, which --reconnect-timeout 0 restores.
            off = ("--reconnect-timeout", "0")
            options = {"client_extra": off} if mode in ("nostr", "iroh") else {"extra": off}
            return _run_pair(lab, mode, False, 7104, body, **options)  # type: ignore[return-value]
        except Exception:
            return RestartResult(None, detail=traceback.format_exc())


def _bindable(lab: Lab, port: int) -> bool:
    result = subprocess.run(lab.in_ns("pA", [PYTHON, PROBE, "bindable", str(port)]), capture_output=True,
                            timeout=20, check=False)
    return result.returncode == 0


def _job_cost(mode: str, nat_a: str, nat_b: str) -> float:
    """Rough seconds a matrix job takes, so the long ones start first and the pool ends together."""
    spec = MODES[mode]
    if True in spec.turn_variants and False in spec.turn_variants and (nat_a, nat_b) in UNPUNCHABLE:
        return 20.0  # the run without TURN waits out ICE's failure deadline
    if isinstance(spec, IrohMode):
        return 3.0 + spec.direct_wait
    return 4.0


def suite_results() -> SuiteResults:
    """The whole suite's results: the run started when collection ended (tests/helpers/early.py), or one now."""
    return early.result("nat", _reaped_run_suite)  # type: ignore[no-any-return]


def _reaped_run_suite() -> SuiteResults:
    if not is_root() or tools_missing():
        raise RuntimeError("the NAT suite needs root and its tools (test_nat.py's fixture says which)")
    reap_stale_labs()  # a previous run killed with SIGKILL cannot have cleaned up after itself
    return run_suite()


def run_suite(modes: tuple[str, ...] = SELECTED_MODES) -> SuiteResults:
    results = SuiteResults()
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS) as pool:
        # Longest jobs first: the restart waits out the consent timeout, the failing pairs the ICE deadline.
        restart = {m: pool.submit(run_restart, m, results.prefixes) for m in modes}
        impair = {m: pool.submit(run_impairment, m, results.prefixes) for m in modes}
        jobs = sorted(((m, a, b) for m in modes for a, b in MODES[m].pairs), key=lambda job: -_job_cost(*job))
        futures = [pool.submit(run_matrix_pair, m, a, b, results.prefixes) for m, a, b in jobs]
        for future in futures:
            for entry in future.result():
                results.matrix[(entry.mode, entry.nat_a, entry.nat_b, entry.turn)] = entry
        results.restart = {m: f.result() for m, f in restart.items()}
        results.impair = {m: f.result() for m, f in impair.items()}
    results.seconds = round(time.monotonic() - started, 1)
    return results


# ------------------------------------------------------------------------------------------------ reporting


def _cell(entry: MatrixResult | None) -> tuple[str, str]:
    if entry is None or entry.outcome is None:
        return "error", "-"
    if isinstance(entry.outcome, Connected):
        path = entry.outcome.path + ("" if entry.transfer_ok else " (transfer FAILED)")
        return path, f"{entry.outcome.seconds:.2f} s"
    return f"fails, exit {entry.outcome.exit_code}", f"{entry.outcome.seconds:.1f} s"


def _iroh_cells(entry: MatrixResult | None) -> tuple[str, str, str]:
    path, seconds = _cell(entry)
    if entry is None or not isinstance(entry.outcome, Connected):
        return path, seconds, "-"
    if entry.later is not None:
        later = f"{entry.later.path} after {entry.later.seconds:.1f} s"
    elif entry.outcome.path.startswith("Relay"):
        spec = MODES[entry.mode]
        later = f"stayed relayed ({spec.direct_wait:g} s watched)" if isinstance(spec, IrohMode) else "-"
    else:
        later = "-"
    return path, seconds, later


def results_table(results: SuiteResults) -> str:
    lines = []
    modes = [m for m in MODES if any(k[0] == m for k in results.matrix)]
    for mode in modes:
        if MODES[mode].turn_variants == (False,):
            lines += [f"| client NAT / server NAT | {mode} path at connect | connect | later |", "|---|---|---|---|"]
            for a, b in MODES[mode].pairs:
                path, seconds, later = _iroh_cells(results.matrix.get((mode, a, b, False)))
                lines.append(f"| {a} / {b} | {path} | {seconds} | {later} |")
            lines.append("")
            continue
        lines += [
            f"| client NAT / server NAT | {mode}, TURN configured | connect | {mode}, no TURN | connect |",
            "|---|---|---|---|---|",
        ]
        for a, b in MODES[mode].pairs:
            with_turn = _cell(results.matrix.get((mode, a, b, True)))
            without = _cell(results.matrix.get((mode, a, b, False)))
            lines.append(f"| {a} / {b} | {with_turn[0]} | {with_turn[1]} | {without[0]} | {without[1]} |")
        lines.append("")
    return "\n".join(lines)


def summary_lines(results: SuiteResults) -> list[str]:
    out = []
    for mode, imp in results.impair.items():
        verdict = imp.transfer
        path = imp.outcome.path if isinstance(imp.outcome, Connected) else "not connected"
        out.append(f"- {mode} mode, {LOSS_PERCENT} % random loss on the client's router (prc / prc, {path}): "
                   f"{BIG_TRANSFER // (1024 * 1024)} MiB echoed {'intact' if verdict.get('ok') else 'NOT intact'} "
                   f"in {verdict.get('seconds', '?')} s")
    for mode, res in results.restart.items():
        out.append(f"- {mode} mode, server killed with SIGKILL mid-transfer (fullcone / prc): client exited with "
                   f"code {res.exit_code} after {res.seconds_to_exit} s "
                   f"({res.last_line.removeprefix('Error: ')!r}); its listening port "
                   f"{'was released' if res.port_released else 'was NOT released'}")
    out.append(f"- every connected pair echoed {SMALL_TRANSFER // 1024} KiB intact, relayed pairs (TURN, iroh relay) "
               f"{RELAY_TRANSFER // (1024 * 1024)} MiB")
    counts = "; ".join(
        f"{m}: {'all' if len(MODES[m].pairs) == 16 else 'a subset of'} {len(MODES[m].pairs)} NAT pairs"
        + (", with and without TURN" if len(MODES[m].turn_variants) == 2 else "")
        for m in MODES if any(k[0] == m for k in results.matrix))
    out.append(f"- runs: {counts}")
    out.append(f"- whole suite: {results.seconds} s wall time with {WORKERS} labs at a time on {os.cpu_count()} "
               "CPU(s)")
    return out


def write_doc(results: SuiteResults, path: Path = DOC) -> str:
    today = datetime.date.today().isoformat()
    text = f"""# NAT traversal results

Produced by the project's own NAT suite (`tests/nat/`), which builds a small internet in Linux network namespaces:
two peers, each behind its own NAT router, and coturn (STUN + TURN) on the public side. The routers' NAT behaviour
is made with nftables exactly as described in the shared lab's README (full cone and restricted cone with nft
dynamic maps, port-restricted cone as plain masquerade, symmetric as `masquerade fully-random`). Each run starts the
real CLI (`python -m tunnel_asyncio.cli client|server <mode> ...`) in the peer namespaces, then echoes data through
the tunnel from the client's namespace. "client NAT" is router A (the `client` side), "server NAT" router B.

| mode | public side | both peers get | "connect" is measured from |
|---|---|---|---|
{chr(10).join(_mode_rows())}

Expected for the ICE modes (manual, nostr): with TURN configured every pair connects; pairs that can be
hole-punched connect directly (host, server reflexive or peer reflexive), the three that cannot (port-restricted or
symmetric against symmetric) through `Relay (TURN)`. Without TURN the punchable pairs connect directly and the others
fail with ICE's message ("ICE connectivity failed - peers may be behind incompatible NAT types. ...") and exit
code 10. iroh mode has no TURN: it connects through the relay first and moves to a direct path when iroh's hole
punching finds one. Our relay has no QUIC address discovery (docs/relay.md), so the endpoints never learn their
public addresses and, behind NATs, stay relayed; "later" says what the client reported within the watch time.

## Results ({today})

{results_table(results)}
{chr(10).join(summary_lines(results))}

## How to run

As root on Linux with iproute2, nftables, conntrack, coturn and the test extras (nostr-sdk, iroh) installed
(`scripts/install.sh --test` installs them; CI runs as root):

```
python -m pytest -q -m nat tests/nat        # the NAT suite alone; it also runs in a plain `pytest`
TUNNEL_NAT_WORKERS=2 python -m pytest -q -m nat tests/nat   # fewer labs at a time on a small machine
TUNNEL_NAT_MODES=nostr,iroh python -m pytest -q -m nat tests/nat   # only some modes
TUNNEL_NAT_ALL_PAIRS=1 python -m pytest -q -m nat tests/nat        # all 16 pairs in nostr and iroh mode too
TUNNEL_NAT_WRITE_DOCS=1 python -m pytest -q -m nat tests/nat       # all 16 pairs everywhere, rewrite this file
```

By default manual mode runs all 16 pairs and nostr and iroh mode a subset in which every NAT type is once the
client's and once the server's, one of them unpunchable (`tests/nat/modes.py`, `COVERING_PAIRS`): nostr mode has
the same ICE agent and TURN client as manual mode, iroh mode goes through the lab's relay whatever the NATs, and
the full matrix in three modes would keep CI waiting. The tables above are from a run of all 16 pairs.

The suite prints the table of every run; it rewrites this file only with `TUNNEL_NAT_WRITE_DOCS=1` (so a CI run
leaves the tree clean). Every lab uses its own namespace prefix (`tn<pid>x<n>-`), addresses from documentation
ranges (198.51.100.0/24 public, 10.0.1.0/24 and 10.0.2.0/24 LANs), never touches the host namespace, and is torn
down even when a run fails. New modes join by adding one class to `tests/nat/modes.py` (`MODES`).
"""
    path.write_text(text)
    return text


_PUBLIC_SIDE = {
    "manual": ("coturn", "`--host-candidate <LAN IP> --stun-server 198.51.100.10:3478` [+ `--turn-server "
               "turn:198.51.100.10:3478 --turn-user ... --turn-password-file ...`]; the test pastes OFFER and ANSWER"),
    "nostr": ("coturn + a Nostr relay (nostr-sdk LocalRelay, `tests/nat/nostr_relay.py`) on 198.51.100.10",
              "the same ICE flags + `--relay ws://198.51.100.10:<port> --event-kind 24243` and fresh key pairs"),
    "iroh": ("`tunnel relay --bind 198.51.100.10:<port>` (plain HTTP)",
             "`--relay-url http://198.51.100.10:<port> --dns-server none` and fresh identities (no n0 service)"),
}


def _mode_rows() -> list[str]:
    rows = []
    for name, spec in MODES.items():
        public, flags = _PUBLIC_SIDE.get(name, ("?", "?"))
        rows.append(f"| {name} | {public} | {flags} | {spec.connect_from} -> client's `Listening on` line |")
    return rows


early.offer("nat", "nat_results", _reaped_run_suite)
