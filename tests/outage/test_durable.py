"""Durable streams with real processes (issue 15 item 4; docs/durable.md): a cut past the consent limit during a
100 MiB transfer and during an interactive ssh session; both survive the reconnect.

One lab, one cut, three things at once (the suite's wall time matters more than separate reports):

- a nostr tunnel with two forwards: the echo service (a 100 MiB transfer, sha256 checked end to end) and a real
  sshd started by the test in the server's namespace (an interactive ``ssh`` session: a command before the cut and
  one typed after it must both be answered);
- a second nostr tunnel with ``--plaintext-compat`` (upstream's wire format): it reconnects too, but resumption is
  off, so its open connection is reset with one line;
- the client's RSS before and at the end of the cut, while the transfer's writer keeps trying to write.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import time
from pathlib import Path

import pytest
from tests.nat.lab import Lab
from tests.nat.modes import MODES, PROBE, PYTHON, Connected, Proc, RunningPair

from .cut import cut, heal
from .test_cut import Progress

pytestmark = [pytest.mark.nat, pytest.mark.timeout(600)]

CUT_SECONDS = float(os.environ.get("TUNNEL_DURABLE_CUT", "90"))
TRANSFER_MIB = int(os.environ.get("TUNNEL_DURABLE_MIB", "100"))
CUT_AFTER = 4 * 1024 * 1024
SSHD_PORT = 2222
SSH_LISTEN = 7102
COMPAT_LISTEN, COMPAT_ECHO = 7200, 7001


def _sshd(lab: Lab) -> tuple[Proc, Path]:
    """A real sshd on 127.0.0.1:SSHD_PORT in the server's namespace, accepting root by one generated key."""
    work = lab.workdir / "ssh"
    work.mkdir()
    host_key, user_key = work / "host_key", work / "id_ed25519"
    for key in (host_key, user_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    (work / "authorized_keys").write_text(Path(f"{user_key}.pub").read_text())
    config = work / "sshd_config"
    config.write_text("\n".join([
        "ListenAddress 127.0.0.1", f"HostKey {host_key}", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        f"AuthorizedKeysFile {work / 'authorized_keys'}", "StrictModes no", "UsePAM no",
        f"PidFile {work / 'sshd.pid'}", "PrintMotd no", "LogLevel ERROR", ""]))
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    sshd = Proc("sshd", lab.in_ns("pB", ["/usr/sbin/sshd", "-D", "-e", "-f", str(config), "-p", str(SSHD_PORT)]))
    return sshd, user_key


def _ssh_session(lab: Lab, user_key: Path) -> Proc:
    """An interactive ssh session through the tunnel: a shell reading the commands we type on its stdin."""
    return Proc("ssh", lab.in_ns("pA", [
        "ssh", "-T", "-p", str(SSH_LISTEN), "-i", str(user_key), "-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR", "root@127.0.0.1"]))


def _type(session: Proc, word: str, timeout: float) -> float | None:
    """Type ``echo word``; seconds until the shell's answer came back (None: no answer in time)."""
    started = time.monotonic()
    assert session.proc.stdin is not None
    session.proc.stdin.write(f"echo {word}\n")
    session.proc.stdin.flush()
    while time.monotonic() - started < timeout:
        try:
            line = session.stdout.get(timeout=0.5)
        except queue.Empty:
            continue
        if line is None:
            return None
        if line.strip() == word:
            return time.monotonic() - started
    return None


def _rss_kib(proc: Proc) -> int:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{proc.proc.pid}/status").read_text())
    assert match is not None
    return int(match.group(1))


def _count(proc: Proc, text: str) -> int:
    return sum(text in line for line in proc.stderr_lines)


def test_a_90s_cut_during_a_transfer_and_an_ssh_session_both_survive_in_nostr_mode(lab: Lab) -> None:
    sshd, user_key = _sshd(lab)
    pairs: list[RunningPair] = []
    transfer: Proc | None = None
    session: Proc | None = None
    try:
        durable = MODES["nostr"].start(
            lab, turn=False, client_extra=("--forward", f"127.0.0.1:{SSH_LISTEN}=tcp://127.0.0.1:{SSHD_PORT}"))
        pairs.append(durable)
        compat = MODES["nostr"].start(lab, turn=False, listen_port=COMPAT_LISTEN, echo_port=COMPAT_ECHO,
                                      extra=("--plaintext-compat",))
        pairs.append(compat)
        for pair in pairs:
            assert isinstance(pair.wait_connected(), Connected), pair.describe()
        held = compat.start_transfer(10**10, timeout=400)  # open across the cut: reset, resumption is off
        pairs[-1].helpers.append(held)
        assert held.stdout.get(timeout=20) == "started\n", compat.describe()

        session = _ssh_session(lab, user_key)
        assert _type(session, "before-cut", 30) is not None, (session.stderr, durable.describe())
        total = TRANSFER_MIB * 1024 * 1024
        transfer = Proc("transfer", lab.in_ns("pA", [PYTHON, PROBE, "transfer", str(durable.listen_port),
                                                     str(total), "--timeout", "500", "--progress"]))
        progress = Progress(transfer)
        progress.pump(time.monotonic() + 120, enough=CUT_AFTER)
        assert progress.verdict is None and progress.received >= CUT_AFTER, (progress.verdict, durable.describe())

        cut(lab)
        rss_at_cut = _rss_kib(durable.client)
        try:
            progress.pump(time.monotonic() + CUT_SECONDS)
            assert durable.client.wait_line(r"Reconnecting\.\.\.", 1), durable.describe()
            rss_end_of_cut = _rss_kib(durable.client)
            at_heal = progress.received
        finally:
            heal(lab)
        healed_at = time.monotonic()
        assert durable.client.wait_line(r"Tunnel back after", 120), durable.describe()
        back_at = durable.client.line_time(r"Tunnel back after")
        assert back_at is not None
        answered = _type(session, "after-cut", 60)
        progress.pump(healed_at + 400)
        resumed = progress.first_growth_after(healed_at, at_heal)
        verdict = json.loads(progress.verdict or "{}")

        assert verdict.get("ok") is True, (verdict, durable.describe())
        assert answered is not None, (session.stderr, durable.describe())
        assert _count(durable.client, "reset:") == 0, durable.describe()
        assert _count(durable.server, "reset:") == 0, durable.describe()
        assert _type(session, "still-there", 30) is not None
        # upstream's wire: the reconnect works, the open connection does not survive it (one line)
        assert compat.client.wait_line(r"Tunnel back after", 60), compat.describe()
        assert _count(compat.client, "reset: the tunnel was lost") == 1, compat.describe()
        again = compat.transfer(1024 * 1024, timeout=60)
        assert again.get("ok") is True, (again, compat.describe())
        assert rss_end_of_cut - rss_at_cut < 32 * 1024, (rss_at_cut, rss_end_of_cut)
        assert resumed is not None
        print(f"\n[durable] nostr cut={CUT_SECONDS:g}s MiB={TRANSFER_MIB} transfer ok in {verdict['seconds']}s "
              f"(sha256 match); tunnel back {back_at - healed_at:.1f}s after the heal, transfer data again "
              f"{resumed - back_at:.1f}s after that; ssh answered 'after-cut' in {answered:.2f}s; client RSS "
              f"{rss_at_cut} KiB at the cut, {rss_end_of_cut} KiB at its end", flush=True)
    finally:
        for proc in (transfer, session):
            if proc is not None:
                proc.stop()
        for pair in pairs:
            pair.close()
        sshd.stop()
