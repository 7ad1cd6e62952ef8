"""Run Debian's coturn ``turnserver`` on loopback for STUN/TURN interop tests.

A real, independent server is the check that our codec speaks STUN as others do; it listens and relays
on 127.0.0.1 only, so tests never send traffic anywhere else. Missing coturn is a failure, not a skip: CI
installs it, and a silently skipped interop test would prove nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from tunnel_core import stun

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT = 10.0
RELAY_PORT_COUNT = 16


@attrs.frozen
class CoturnServer:
    """Where the running server listens and the long-term credentials it accepts."""

    port: int
    user: str
    password: str
    realm: str
    min_relay_port: int
    max_relay_port: int
    log_file: Path
    host: str = LOOPBACK

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)


def _port_is_free(port: int) -> bool:
    """Free for both UDP and TCP, since turnserver listens on both at the same number."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind((LOOPBACK, port))
            except OSError:
                return False
    return True


def _free_port_pair() -> int:
    """A port whose successor is free too (coturn may claim port+1 as its RFC 5780 alternate port)."""
    from tests.e2e.programs import free_port  # below the ephemeral range: no outgoing connection can take it

    for _ in range(50):
        port = free_port(tcp=True, udp=True)
        if port < 65535 and _port_is_free(port) and _port_is_free(port + 1):
            return port
    raise RuntimeError("no free loopback port pair for turnserver")


def _free_relay_range(avoid: int) -> tuple[int, int]:
    """A small block of free UDP ports, so relayed allocations cannot collide with other tests' sockets."""
    seed = int.from_bytes(os.urandom(2), "big")
    for attempt in range(40):
        start = 40000 + ((seed + attempt * 997) % 1500) * 16
        ports = range(start, start + RELAY_PORT_COUNT)
        if avoid in ports or avoid + 1 in ports:
            continue
        if all(_port_is_free(p) for p in ports):
            return start, start + RELAY_PORT_COUNT - 1
    raise RuntimeError("no free block of relay ports for turnserver")


def binding_round_trip(address: tuple[str, int], timeout: float = 0.3) -> stun.StunMessage | None:
    """Send one Binding request from a fresh loopback socket; the decoded reply, or None on silence."""
    tid = stun.transaction_id(os.urandom)
    message = stun.StunMessage(stun.Method.BINDING, stun.MessageClass.REQUEST, tid)
    request = stun.encode(message, fingerprint=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.settimeout(timeout)
        sock.sendto(request, address)
        try:
            data, _ = sock.recvfrom(2048)
        except (TimeoutError, ConnectionRefusedError):
            return None
    try:
        reply = stun.decode(data)
    except stun.StunError:
        return None
    return reply if reply.transaction_id == tid else None


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log written)"


@contextlib.contextmanager
def run_coturn(
    workdir: Path, *, user: str = "u", password: str = "p", realm: str = "test.local"
) -> Iterator[CoturnServer]:
    """Start turnserver on a free loopback port, wait (<= 10 s) until it answers a Binding; stop on exit."""
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.fail("turnserver (coturn) is not installed; install it with `apt-get install -y coturn`",
                    pytrace=False)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port_pair()
    min_relay, max_relay = _free_relay_range(port)
    log_file = workdir / "turnserver.log"
    command = [
        binary, "-n",
        f"--listening-ip={LOOPBACK}", f"--listening-port={port}", f"--relay-ip={LOOPBACK}",
        f"--min-port={min_relay}", f"--max-port={max_relay}",
        "--lt-cred-mech", f"--user={user}:{password}", f"--realm={realm}",
        "--fingerprint", "--no-tls", "--no-dtls", "--no-cli", "--allow-loopback-peers",
        f"--pidfile={workdir / 'turnserver.pid'}", f"--log-file={log_file}", "--simple-log",
        f"--userdb={workdir / 'turndb'}",
    ]
    with open(workdir / "turnserver.out", "wb") as output:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
    server = CoturnServer(port=port, user=user, password=password, realm=realm, min_relay_port=min_relay,
                          max_relay_port=max_relay, log_file=log_file)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"turnserver exited with {process.returncode} at startup:\n{_log_tail(log_file)}",
                            pytrace=False)
            if binding_round_trip(server.address) is not None:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"turnserver did not answer a Binding within {STARTUP_TIMEOUT} s:\n"
                            f"{_log_tail(log_file)}", pytrace=False)
            time.sleep(0.05)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
