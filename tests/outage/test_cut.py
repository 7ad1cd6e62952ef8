"""A 20 s cut during a transfer, with real processes (issue 15 item 1): nothing ends, the data arrives intact
(sha256 of what went out = of what came back), and traffic resumes within 2 s after the path comes back.

The NAT lab of tests/nat (network namespaces, routers with nftables; unique names, always torn down) carries the
tunnel; the cut is an nftables table on the client's router dropping everything on its WAN side in both
directions, deleted to heal. The probe echoes a bounded transfer (``TRANSFER_MIB``, 32 MiB; the issue's 100 MiB is
``TUNNEL_OUTAGE_MIB=100``) through the tunnel and prints its progress with monotonic timestamps, which the test
compares with the moment the cut ended (same machine, same clock).

The runs happen in two groups, each group's runs at once, each run in its own lab with its own cut timed to its own
transfer (the suite pays for two 20 s cuts, not five); each test then asserts on its own result. The groups keep the
two iroh e4 runs (their resume needs a fresh handshake within 2 s) apart from the other modes' CPU. (Not started
early with the NAT suite, tests/helpers/early.py: the 2 s resume bound is the one here that CPU contention could
push.)
"""

from __future__ import annotations

import json
import os
import queue
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tests.nat.lab import Lab
from tests.nat.modes import ECHO_PORT, LISTEN_PORT, MODES, PROBE, PYTHON, Connected, Proc, RunningPair

from .cut import cut, heal, require_labs
from .iroh_e4 import start_iroh_e4

DOWNLOAD = str(Path(__file__).with_name("download.py"))

pytestmark = [pytest.mark.nat, pytest.mark.timeout(400)]

CUT_SECONDS = 20.0
TRANSFER_MIB = int(os.environ.get("TUNNEL_OUTAGE_MIB", "32"))
#: The cut starts once this much came back, so it falls inside the transfer.
CUT_AFTER = 4 * 1024 * 1024
#: How soon after the heal data must flow again. Manual and nostr mode: the ICE consent check that is answered again
#: makes our QUIC probe at once (tunnel_core.peer). Iroh mode (protocol e4 between our peers, durable streams) runs
#: quinn inside iroh, which we cannot prod; the client notices the stall, dials the server again in the background
#: and moves its durable streams to the first new connection that completes (tunnel_iroh.heal). Iroh e2 (upstream's
#: older format, no durable streams) keeps today's behaviour: it resumes at quinn's next backed-off probe, measured
#: at 1 to 9 s after a 20 s cut; its bound says "it comes back by itself, nothing ends" (docs/reconnect.md).
RESUME_LIMIT = {"manual": 2.0, "nostr": 2.0, "iroh": 2.0, "iroh-e2": 15.0}
#: The runs made at once (see the module docstring); "iroh-download" is iroh e4 with data towards the client only.
GROUPS = (("manual", "nostr", "iroh-e2"), ("iroh", "iroh-download"))


class Progress:
    """The probe's stdout: progress lines (bytes, monotonic time) and its final JSON verdict."""

    def __init__(self, probe: Proc) -> None:
        self.probe = probe
        self.points: list[tuple[int, float]] = []
        self.verdict: str | None = None

    def pump(self, until: float, enough: int | None = None) -> None:
        """Read the probe until ``until``, its verdict, or (``enough``) that many bytes came back."""
        while self.verdict is None and time.monotonic() < until:
            if enough is not None and self.received >= enough:
                return
            try:
                line = self.probe.stdout.get(timeout=max(0.0, min(0.2, until - time.monotonic())))
            except queue.Empty:
                continue
            if line is None:
                self.verdict = self.verdict or "{}"
                return
            if line.startswith("progress "):
                _, n, t = line.split()
                self.points.append((int(n), float(t)))
            elif line.startswith("{"):
                self.verdict = line

    @property
    def received(self) -> int:
        return self.points[-1][0] if self.points else 0

    def first_growth_after(self, mark: float, baseline: int) -> float | None:
        for n, t in self.points:
            if t > mark and n > baseline:
                return t
        return None


def run_cut(lab: Lab, pair: RunningPair, fetch_port: int | None = None) -> dict[str, object]:
    """Cut the path once the transfer is under way, heal it after CUT_SECONDS; what came back and when. The
    transfer is the probe's echo, or with ``fetch_port`` a download only (tests/outage/download.py)."""
    connected = pair.wait_connected()
    assert isinstance(connected, Connected), pair.describe()
    total = TRANSFER_MIB * 1024 * 1024
    if fetch_port is None:
        argv = [PYTHON, PROBE, "transfer", str(pair.listen_port), str(total), "--timeout", "300", "--progress"]
    else:
        argv = [PYTHON, DOWNLOAD, "fetch", str(fetch_port), str(total), "300"]
    probe = Proc("transfer", lab.in_ns("pA", argv))
    progress = Progress(probe)
    try:
        deadline = time.monotonic() + 120
        while progress.received < CUT_AFTER and progress.verdict is None and time.monotonic() < deadline:
            progress.pump(time.monotonic() + 0.5, enough=CUT_AFTER)  # cut at once: a fast path ends in ~1 s
        assert progress.verdict is None and progress.received >= CUT_AFTER, (progress.verdict, pair.describe())
        cut(lab)
        cut_at = time.monotonic()
        progress.pump(cut_at + CUT_SECONDS)
        at_heal = progress.received
        heal(lab)
        healed_at = time.monotonic()
        progress.pump(healed_at + 280)
        resumed = progress.first_growth_after(healed_at, at_heal)
        verdict = json.loads(progress.verdict or "{}")
        for proc in (pair.client, pair.server):
            assert proc.proc.poll() is None, f"{proc.name} exited during the cut\n{pair.describe()}"
        assert verdict.get("ok") is True, (verdict, pair.describe())
        assert resumed is not None, pair.describe()
        return {"bytes": total, "cut_at_bytes": at_heal, "resume_s": round(resumed - healed_at, 3),
                "transfer_s": verdict["seconds"], "client_stderr": pair.client.stderr}
    finally:
        probe.stop()


def check_resume(label: str, mode: str, result: dict[str, object]) -> None:
    """Print the numbers (and the client's degraded / back / reset lines), then hold them to ``mode``'s bound."""
    print(f"\n[outage] mode={label} MiB={TRANSFER_MIB} cut={CUT_SECONDS}s resume={result['resume_s']}s "
          f"transfer={result['transfer_s']}s", flush=True)
    for line in str(result["client_stderr"]).splitlines():
        if "Tunnel back" in line or "Tunnel degraded" in line or " reset" in line:
            print(f"[outage]   client: {line}", flush=True)
    resumed = float(result["resume_s"])  # type: ignore[arg-type]
    assert resumed <= RESUME_LIMIT[mode], f"resumed {resumed} s after the heal\n{result['client_stderr']}"
    if mode == "iroh":  # a move to a new connection resets nothing (durable streams)
        assert " reset:" not in str(result["client_stderr"]), result["client_stderr"]


def start_pair(lab: Lab, mode: str) -> RunningPair:
    """``iroh``: protocol e4 (our peers' durable streams, tests/outage/iroh_e4.py); ``iroh-e2``: the NAT suite's
    iroh pair, upstream's older format."""
    if mode == "iroh":
        return start_iroh_e4(lab, LISTEN_PORT, ECHO_PORT, [])
    return MODES["iroh" if mode == "iroh-e2" else mode].start(lab, turn=False)


def cut_in_own_lab(run: str) -> dict[str, object]:
    """One run: its own lab (full cone both sides), tunnel, transfer, cut."""
    with Lab("fullcone", "fullcone") as lab:
        if run != "iroh-download":
            pair = start_pair(lab, run)
            try:
                return run_cut(lab, pair)
            finally:
                pair.close()
        fetch_port, serve_port = LISTEN_PORT + 1, ECHO_PORT + 2
        server = Proc("download", lab.in_ns("pB", [PYTHON, DOWNLOAD, "serve", str(serve_port),
                                                   str(TRANSFER_MIB * 1024 * 1024)]))
        pair = start_iroh_e4(lab, LISTEN_PORT, ECHO_PORT,
                             ["-L", f"127.0.0.1:{fetch_port}=tcp://127.0.0.1:{serve_port}"])
        pair.helpers.append(server)
        try:
            server.wait_ready("download server", 10)
            return run_cut(lab, pair, fetch_port=fetch_port)
        finally:
            pair.close()


class CutResults:
    """Each group's runs, made at once the first time one of its tests asks; a failed run holds its exception."""

    def __init__(self) -> None:
        self._results: dict[str, dict[str, object] | BaseException] = {}

    def __getitem__(self, run: str) -> dict[str, object]:
        if run not in self._results:
            require_labs()
            group = next(g for g in GROUPS if run in g)
            with ThreadPoolExecutor(len(group)) as pool:
                futures = {name: pool.submit(cut_in_own_lab, name) for name in group}
                for name, future in futures.items():
                    error = future.exception()
                    self._results[name] = error if error is not None else future.result()
        result = self._results[run]
        if isinstance(result, BaseException):
            raise result
        return result


@pytest.fixture(scope="module")
def cut_results() -> Iterator[CutResults]:
    yield CutResults()


@pytest.mark.parametrize("mode", ["manual", "nostr", "iroh", "iroh-e2"])
def test_a_20s_cut_during_a_transfer_ends_nothing_and_traffic_resumes_within_2s(
        cut_results: CutResults, mode: str) -> None:
    check_resume(mode, mode, cut_results[mode])


def test_iroh_a_20s_cut_during_a_download_only_resumes_within_2s(cut_results: CutResults) -> None:
    """Data flowing only towards the client: nothing of the client's waits for a confirmation, so the client learns
    of the cut from its unanswered nudge (tunnel_iroh.heal) and still moves to a new connection within 2 s."""
    check_resume("iroh download", "iroh", cut_results["iroh-download"])
