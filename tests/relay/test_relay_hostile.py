"""Issue 18 items 4 and 5 against a real `tunnel relay` process: pipelined HTTP and a WebSocket ping flood.

Item 4: ~330 pipelined ``GET /ping`` on one connection used to end in a RecursionError traceback. Item 5: a client
that sends WebSocket pings and never reads made the relay queue pongs without bound (RSS 37 -> 216 MB) and past
``--rate-limit``. Both run against the relay CLI started as a user would (``--dev`` on 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.timeout(90)

UPGRADE = (
    b"GET /relay HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: iroh-relay-v2\r\n\r\n"
)


@contextlib.contextmanager
def relay_process(*extra: str) -> Iterator[tuple[subprocess.Popen[str], tuple[str, int]]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunnel_asyncio.cli", "relay", "--dev", "--bind", "127.0.0.1:0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        match = re.search(r"http://127\.0\.0\.1:(\d+)", proc.stdout.readline())
        assert match, proc.stderr.read() if proc.stderr else ""
        yield proc, ("127.0.0.1", int(match.group(1)))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def ws_ping(payload: bytes) -> bytes:
    """A masked client PING frame (RFC 6455 5.5.2)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x89, 0x80 | len(payload)]) + mask + masked


def ping_answered(address: tuple[str, int]) -> bool:
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n")
        return sock.recv(4096).startswith(b"HTTP/1.1 200")


def test_thousands_of_pipelined_requests_on_one_connection_are_all_answered() -> None:
    count = 3000
    with relay_process() as (proc, address), socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: r\r\n\r\n" * count)
        data = b""
        deadline = time.monotonic() + 30
        while data.count(b"HTTP/1.1 200") < count and time.monotonic() < deadline:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
        assert data.count(b"HTTP/1.1 200") == count
        assert proc.poll() is None and ping_answered(address)
    assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")


def test_a_ping_flood_from_a_client_that_never_reads_stays_bounded() -> None:
    frame = ws_ping(b"p" * 125)
    burst = frame * 512
    with relay_process() as (proc, address), socket.create_connection(address, timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # we never read: keep our side small too
        sock.sendall(UPGRADE)
        time.sleep(0.3)
        before = rss_kib(proc.pid)
        sock.setblocking(False)
        sent = 0
        pending = memoryview(burst)
        until = time.monotonic() + 4  # within the relay's 10 s handshake deadline
        while time.monotonic() < until:
            try:
                n = sock.send(pending)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            sent += n
            pending = pending[n:] if n < len(pending) else memoryview(burst)
        growth_mib = (rss_kib(proc.pid) - before) / 1024
        print(f"relay accepted {sent / 2**20:.1f} MiB of pings; RSS grew {growth_mib:.1f} MiB")
        # Back-pressure: once our unread pongs fill the buffers, the relay stops reading us.
        assert sent < 24 * 2**20, f"{sent / 2**20:.1f} MiB accepted from a client that never reads"
        assert growth_mib < 20, f"RSS grew {growth_mib:.1f} MiB"
        assert proc.poll() is None and ping_answered(address)


def test_websocket_pings_count_against_the_rate_limit() -> None:
    rate = 200_000
    frame = ws_ping(b"p" * 125)
    with relay_process("--rate-limit", str(rate)) as (proc, address), socket.create_connection(address) as sock:
        sock.sendall(UPGRADE)
        sock.settimeout(0.05)
        sock.setblocking(False)
        sent = received = 0
        batch = frame * 64
        pending = memoryview(batch)
        started = time.monotonic()
        while time.monotonic() - started < 4:
            with contextlib.suppress(BlockingIOError):
                n = sock.send(pending)
                sent += n
                pending = pending[n:] if n < len(pending) else memoryview(batch)
            with contextlib.suppress(BlockingIOError):
                received += len(sock.recv(1 << 16))
            time.sleep(0.001)
        elapsed = time.monotonic() - started
        # The limiter's burst is at least one maximal frame (1 MiB); beyond that, the rate holds.
        budget = (1 << 20) + rate * elapsed
        print(f"sent {sent} B, pongs {received} B in {elapsed:.1f} s; budget {budget:.0f} B")
        assert received < budget * 1.5, f"{received} B of pongs in {elapsed:.1f} s at --rate-limit {rate}"
        assert proc.poll() is None
