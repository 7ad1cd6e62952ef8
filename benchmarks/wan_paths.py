"""The paths bench_wan.py compares, each started across a ``WanLab`` (client side ``a``, services in ``b``).

A path gives the measuring clients in ``a`` three endpoints - iperf3 (TCP), the 64-byte echo (TCP) and the UDP
echo (None when the path has no UDP) - the processes whose CPU is charged to it, and its connect time: from the
moment its client side was started to the first byte echoed through it (for ``direct``: a TCP connect + 1 byte).

Services in ``b``: iperf3 on :5201, the TCP echo on :7000 and the UDP echo on :7001, all on every address, so the
direct path reaches them on b's WAN address and the forwarders on b's loopback. Forwarders listen on a's loopback
at the service port + 10000.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import attrs
from tests.nat.lab import LabError
from tests.nat.modes import Proc
from tests.wan.lab import WanLab
from tests.wan.tunnels import PROBE, PYTHON, Pair, cpu_seconds, start_iroh, start_manual, start_nostr

IPERF, ECHO, UDP = 5201, 7000, 7001
OFFSET = 10000


@attrs.frozen
class Row:
    """One row of the table: how to build the path, and the kernel congestion control set in both namespaces."""

    key: str
    name: str
    kind: str  # direct | ssh | socat | manual | nostr | iroh
    cc: str = "cubic"
    runtime: str = "asyncio"
    quic_cc: str | None = None  # the tunnel's --congestion (None: its default)


ROWS: dict[str, Row] = {r.key: r for r in (
    Row("direct-cubic", "direct (cubic)", "direct", "cubic"),
    Row("direct-bbr", "direct (bbr)", "direct", "bbr"),
    Row("ssh-cubic", "ssh -L (cubic)", "ssh", "cubic"),
    Row("ssh-bbr", "ssh -L (bbr)", "ssh", "bbr"),
    Row("socat", "socat (cubic)", "socat", "cubic"),
    # Every tunnel row names its QUIC controller explicitly, whatever the default is (keys of older JSON keep
    # their meaning: the rows without a suffix were, and are, cubic).
    Row("manual-asyncio", "tunnel manual, asyncio (QUIC cubic)", "manual", runtime="asyncio", quic_cc="cubic"),
    Row("manual-asyncio-bbr", "tunnel manual, asyncio (QUIC bbr)", "manual", runtime="asyncio", quic_cc="bbr"),
    Row("manual-trio", "tunnel manual, trio (QUIC cubic)", "manual", runtime="trio", quic_cc="cubic"),
    Row("manual-trio-bbr", "tunnel manual, trio (QUIC bbr)", "manual", runtime="trio", quic_cc="bbr"),
    Row("manual-gevent", "tunnel manual, gevent (QUIC cubic)", "manual", runtime="gevent", quic_cc="cubic"),
    Row("manual-gevent-bbr", "tunnel manual, gevent (QUIC bbr)", "manual", runtime="gevent", quic_cc="bbr"),
    # No --congestion flag at all: for A/B runs against an older tree whose CLI has no such flag.
    Row("manual-default", "tunnel manual, asyncio (its default controller)", "manual", runtime="asyncio"),
    Row("nostr", "tunnel nostr, asyncio (QUIC cubic)", "nostr", quic_cc="cubic"),
    Row("nostr-bbr", "tunnel nostr, asyncio (QUIC bbr)", "nostr", quic_cc="bbr"),
    Row("iroh", "tunnel iroh, direct addr (quinn cubic)", "iroh"),
)}


@attrs.define
class Path_:
    """A running path: where the measuring clients connect, and what it costs."""

    iperf: tuple[str, int]
    echo: tuple[str, int]
    udp: tuple[str, int] | None
    connect_s: float | None
    pids: dict[str, int] = attrs.Factory(dict)  # role -> pid (its live descendants are charged to it too)


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants, plus what their reaped children used (cutime/cstime)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        total += cpu_seconds(p, reaped_children=True)
        stack += children.get(p, [])
    return total


def first_byte(lab: WanLab, host: str, port: int, timeout: float = 90.0) -> subprocess.Popen[str]:
    """The connect-time probe, started *before* the forwarder so it catches the first moment the path works."""
    return subprocess.Popen(lab.in_ns("a", [PYTHON, PROBE, "first-byte", host, str(port), "--timeout", str(timeout)]),
                            stdout=subprocess.PIPE, text=True)


def connect_seconds(probe: subprocess.Popen[str], started: float | None, timeout: float = 120.0) -> float | None:
    """Seconds from ``started`` (None: the probe's own first attempt) to the first echoed byte.

    The probe's interpreter may still be starting when a fast forwarder is already up; counting from its first
    attempt then keeps Python's start-up time out of the forwarder's number."""
    import json

    out, _ = probe.communicate(timeout=timeout)
    try:
        verdict = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    if not verdict.get("ok"):
        return None
    return round(verdict["at"] - max(started or 0.0, verdict["t0"]), 3)


class Daemon:
    """A forking program (socat, sshd, ssh): output to a file, not pipes - its children would hold a pipe open
    and block the reader - and its own process group, so ``stop`` reaches the children too."""

    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        self.name = name
        self.log = workdir / f"{name}-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    @property
    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=3)
                return
            except subprocess.TimeoutExpired:
                continue


class Services:
    """iperf3, TCP echo and UDP echo in ``b``, for the whole profile."""

    def __init__(self, lab: WanLab) -> None:
        self.procs = [
            Proc("iperf3", lab.in_ns("b", ["iperf3", "-s", "-p", str(IPERF)])),
            Proc("tcp-echo", lab.in_ns("b", [PYTHON, PROBE, "tcp-echo", "0.0.0.0", str(ECHO)])),
            Proc("udp-echo", lab.in_ns("b", [PYTHON, PROBE, "udp-echo", "0.0.0.0", str(UDP)])),
        ]
        for proc in self.procs[1:]:
            proc.wait_ready(proc.name, 20)
        time.sleep(0.3)  # iperf3 prints nothing when ready; it listens within milliseconds

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


@contextlib.contextmanager
def open_path(lab: WanLab, row: Row) -> Iterator[Path_]:
    """Start ``row``'s forwarder (if any), yield its endpoints, stop it whatever happens."""
    b = lab.addr["b"]
    local = "127.0.0.1"
    if row.kind == "direct":
        probe = first_byte(lab, b, ECHO)
        yield Path_((b, IPERF), (b, ECHO), (b, UDP), connect_seconds(probe, None))
        return
    if row.kind in ("ssh", "socat"):
        procs: list[Daemon] = []
        try:
            if row.kind == "ssh":
                sshd, key = _sshd(lab)  # the server side is up before the user starts the client, as in every row
                procs.append(sshd)
            probe = first_byte(lab, local, ECHO + OFFSET)
            started = time.time()
            if row.kind == "ssh":
                procs.append(_ssh_client(lab, key))
            else:
                for port, proto in ((IPERF, "TCP"), (ECHO, "TCP"), (UDP, "UDP")):
                    listen = f"{proto}-LISTEN:{port + OFFSET},bind={local},fork,reuseaddr"
                    procs.append(Daemon("socat", lab.in_ns("a", ["socat", listen, f"{proto}:{b}:{port}"]),
                                        lab.workdir))
            connect = connect_seconds(probe, started)
            udp = (local, UDP + OFFSET) if row.kind == "socat" else None
            # The processes carrying the bulk transfer: socat's iperf3 listener (it forks per connection), or sshd
            # and ssh (one connection carries every forwarded port).
            pids = {p.name: p.proc.pid for p in procs[:2]} if row.kind == "ssh" else {"socat": procs[0].proc.pid}
            yield Path_((local, IPERF + OFFSET), (local, ECHO + OFFSET), udp, connect, pids)
        finally:
            for proc in procs:
                proc.stop()
        return
    pairs: list[Pair] = []
    try:
        probe = first_byte(lab, local, ECHO)
        for port, proto in ((ECHO, "tcp"), (IPERF, "tcp"), (UDP, "udp")):
            if row.kind == "manual":
                extra = ("--congestion", row.quic_cc) if row.quic_cc else ()
                pair = start_manual(lab, lab.addr, port, proto=proto, runtime=row.runtime, extra=extra)
            elif row.kind == "nostr":
                extra = ("--congestion", row.quic_cc) if row.quic_cc else ()
                pair = start_nostr(lab, lab.addr, port, proto=proto, relay_port=7700 + len(pairs), extra=extra)
            else:
                pair = start_iroh(lab, lab.addr, port, proto=proto)
            pairs.append(pair)
        for pair in pairs:
            pair.wait_listening()
        connect = connect_seconds(probe, pairs[0].started_at)
        bulk = pairs[1]
        yield Path_((local, IPERF), (local, ECHO), (local, UDP), connect,
                    {"client": bulk.client.proc.pid, "server": bulk.server.proc.pid})
    finally:
        for pair in pairs:
            pair.close()


def _sshd(lab: WanLab) -> tuple[Daemon, Path]:
    """sshd in ``b`` on its WAN address (key login only, files in the lab's work dir); also the client's key."""
    work = lab.workdir / "ssh"
    work.mkdir(exist_ok=True)
    host_key, user_key = work / "host_key", work / "id_ed25519"
    for key in (host_key, user_key):
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30,
                           stdin=subprocess.DEVNULL)
    (work / "authorized_keys").write_text(Path(f"{user_key}.pub").read_text())
    (work / "sshd_config").write_text("\n".join([
        f"ListenAddress {lab.addr['b']}:22", f"HostKey {host_key}", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        f"AuthorizedKeysFile {work / 'authorized_keys'}", "StrictModes no", "UsePAM no",
        f"PidFile {work / 'sshd.pid'}", "AllowTcpForwarding yes", "X11Forwarding no", "PrintMotd no",
        "LogLevel ERROR", ""]))
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    sshd = Daemon("sshd", lab.in_ns("b", ["/usr/sbin/sshd", "-D", "-e", "-f", str(work / "sshd_config")]),
                  lab.workdir)
    deadline = time.monotonic() + 10
    while lab.nx("b", "ss", "-Htln", "sport = :22", check=False).strip() == "":
        if time.monotonic() > deadline or sshd.proc.poll() is not None:
            sshd.stop()
            raise LabError(f"sshd did not start in {lab.ns('b')}: {sshd.output}")
        time.sleep(0.05)
    return sshd, user_key


def _ssh_client(lab: WanLab, user_key: Path) -> Daemon:
    """``ssh -N -L`` for the iperf3 and echo ports (ssh -L has no UDP)."""
    return Daemon("ssh", lab.in_ns("a", [
        "ssh", "-N", "-i", str(user_key), "-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        "-o", "ConnectTimeout=30", "-o", "LogLevel=ERROR", "-o", "ExitOnForwardFailure=yes",
        "-L", f"127.0.0.1:{IPERF + OFFSET}:127.0.0.1:{IPERF}", "-L", f"127.0.0.1:{ECHO + OFFSET}:127.0.0.1:{ECHO}",
        f"root@{lab.addr['b']}"]), lab.workdir)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def stop_signals_unwind() -> None:
    """SIGTERM and SIGINT (also when started in the background, where SIGINT is ignored) raise KeyboardInterrupt,
    so every lab's context manager tears its namespaces down before a lab tool exits."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def run_tool(main: Callable[[], int]) -> NoReturn:
    """The entry block of the lab tools: exit 130 after an interrupt (labs torn down), 1 with one line when a
    command in a lab failed, else main's code."""
    try:
        code = main()
    except KeyboardInterrupt:
        print("interrupted; labs torn down", file=sys.stderr)
        code = 130
    except subprocess.SubprocessError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        code = 1
    sys.exit(code)
