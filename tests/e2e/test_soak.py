"""A bounded soak of one manual tunnel: many short TCP connections and many short-lived UDP peers, as a tunnel that
runs for days sees them. What it guards against: per-connection state that is never freed (file descriptors, QUIC
streams, session flows), and running out of QUIC stream credit after the first few hundred connections - the
peer must keep raising MAX_STREAMS as streams close.

Bounded: a fixed number of connections in batches, each with a timeout; the whole module well under a minute.
"""

from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tunnel_core.forwarding import DEFAULT_MAX_UDP_PEERS

from . import programs
from .harness import ManualTunnel
from .programs import LOOPBACK

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

TCP_CONNECTIONS = 1200  # several times aioquic's initial stream limit (128)
BATCH = 40
UDP_PEERS = DEFAULT_MAX_UDP_PEERS + 100  # past the client's cap: the least recently active peers are retired


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _settled_fds(pid: int, limit: int, seconds: float = 10.0) -> int:
    """File descriptors once closing connections have been reaped (bounded wait)."""
    deadline = time.monotonic() + seconds
    count = _fds(pid)
    while count > limit and time.monotonic() < deadline:
        time.sleep(0.1)
        count = _fds(pid)
    return count


def _tcp_once(port: int, index: int) -> bool:
    data = programs.deterministic_bytes(2048, seed=index)
    with socket.create_connection((LOOPBACK, port), timeout=20) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return programs.recv_all(sock) == data


RUNTIMES = ["asyncio", "trio", "gevent"]  # each adapter owns its local sockets, so each could leak them


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_twelve_hundred_short_tcp_connections_leak_nothing(runtime: str) -> None:
    with programs.TcpEchoServer() as echo, ManualTunnel(f"tcp://{LOOPBACK}:{echo.port}", runtime=runtime) as t:
        pids = {"client": t.client.proc.pid, "server": t.server.proc.pid}
        base_fds = {name: _fds(pid) for name, pid in pids.items()}
        warm_rss: dict[str, int] = {}
        ok = 0
        with ThreadPoolExecutor(max_workers=BATCH) as pool:
            for start in range(0, TCP_CONNECTIONS, BATCH):
                ok += sum(pool.map(lambda i: _tcp_once(t.local_port, i), range(start, start + BATCH)))
                if start == 4 * BATCH:  # allocator and caches warmed up
                    warm_rss = {name: _rss_kib(pid) for name, pid in pids.items()}
        assert ok == TCP_CONNECTIONS, f"{TCP_CONNECTIONS - ok} connections failed\n{t.logs()}"
        t.assert_alive()
        for name, pid in pids.items():
            fds = _settled_fds(pid, base_fds[name] + 2)
            assert fds <= base_fds[name] + 2, f"{name}: {fds} fds open, {base_fds[name]} before the soak"
            growth = _rss_kib(pid) - warm_rss[name]
            # ~1000 connections after warm-up: a leak of even 10 KiB each would show as 10 MiB.
            assert growth < 8 * 1024, f"{name}: RSS grew {growth} KiB over ~1000 connections"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_more_udp_peers_than_the_cap_each_get_their_reply(runtime: str) -> None:
    with programs.UdpEchoServer() as echo, ManualTunnel(f"udp://{LOOPBACK}:{echo.port}", runtime=runtime) as t:
        server_pid = t.server.proc.pid
        base_fds = _fds(server_pid)
        ok = 0
        for index in range(UDP_PEERS):  # each its own socket: a new peer for the client, a new flow for the server
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(5)
                payload = f"peer {index}".encode()
                sock.sendto(payload, (LOOPBACK, t.local_port))
                data, _ = sock.recvfrom(2048)
                ok += data == payload
        assert ok == UDP_PEERS, t.logs()
        t.assert_alive()
        # One target socket per live UDP flow on the server: retired peers' sockets are closed, so at most the cap.
        fds = _settled_fds(server_pid, base_fds + DEFAULT_MAX_UDP_PEERS + 2)
        assert fds <= base_fds + DEFAULT_MAX_UDP_PEERS + 2, f"server has {fds} fds, {base_fds} before"
