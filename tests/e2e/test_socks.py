"""Issue 17, dynamic forwarding (``--socks5``) with real processes and real ``curl --socks5-hostname``: names
resolve on the server's side only (its process runs in a private mount namespace with its own /etc/hosts), every
target is checked by the server's allowlist, refused targets get SOCKS reply 2 and nothing is dialled."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import programs
from .harness import TunnelProcess, cli_argv, supervised
from .programs import LOOPBACK
from .test_forwards import http_server
from .test_manual_e2e import CLIENT_RUNTIME, SERVER_RUNTIME

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ICE = ["--no-stun", "--host-candidate", "127.0.0.1"]
NAME = "web.only-server.test"
BOTH = "both.only-server.test"  # resolves to an allowed and a forbidden address


class CountingListener:
    """A TCP listener that only counts connections: proof of what was (not) dialled."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def socks_tunnel(tmp_path: Path, hosts: str, client_args: list[str]) -> Iterator[tuple[TunnelProcess, TunnelProcess]]:
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text(hosts)
    server_argv = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts_file),
                   *cli_argv(SERVER_RUNTIME, "server", "manual", "--allowed-tcp", "127.0.0.1/32",
                             "--allowed-tcp", "::1/128", *ICE)]
    client = TunnelProcess("client", cli_argv(CLIENT_RUNTIME, "client", "manual", *client_args, *ICE))
    server = TunnelProcess("server", server_argv)
    with supervised(client, server):
        offer = client.read_block("OFFER", 30)
        server.write("\n".join(offer) + "\n")
        answer = server.read_block("ANSWER", 30)
        client.write("\n".join(answer) + "\n")
        client.wait_stderr(r"Listening on SOCKS5", 30)
        yield client, server


def curl(proxy: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "20", "--proxy", proxy, url],
                          capture_output=True, text=True, timeout=30)


def test_socks5_reaches_server_side_names_and_refuses_what_the_allowlist_forbids(tmp_path: Path) -> None:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("served by name\n")
    password = tmp_path / "socks-password"
    password.write_text("pa55word\n")
    password.chmod(0o600)
    socks_port = programs.free_port()
    forbidden = CountingListener("127.0.0.3")
    both_allowed = CountingListener("127.0.0.1")
    both_forbidden = CountingListener("127.0.0.2", both_allowed.port)
    hosts = f"127.0.0.1 {NAME}\n127.0.0.1 {BOTH}\n127.0.0.2 {BOTH}\n"
    args = ["--socks5", f"{LOOPBACK}:{socks_port}", "--socks5-user", "alice", "--socks5-password-file", str(password)]
    assert subprocess.run(["getent", "hosts", NAME], capture_output=True).returncode != 0  # the client can't
    try:
        with (
            http_server(tmp_path / "www") as http_port,
            http_server_v6(tmp_path / "www") as http6_port,
            socks_tunnel(tmp_path, hosts, args) as (client, server),
        ):
            assert "Listening on SOCKS5" in client.stderr and "username/password required" in client.stderr
            proxy = f"socks5h://alice:pa55word@{LOOPBACK}:{socks_port}"
            by_name = curl(proxy, f"http://{NAME}:{http_port}/index.html")
            assert by_name.returncode == 0 and by_name.stdout == "served by name\n", by_name.stderr + server.stderr
            by_ip = curl(proxy, f"http://127.0.0.1:{http_port}/index.html")
            assert by_ip.stdout == "served by name\n", by_ip.stderr
            by_v6 = curl(proxy, f"http://[::1]:{http6_port}/index.html")
            assert by_v6.stdout == "served by name\n", by_v6.stderr

            outside = curl(proxy, f"http://127.0.0.3:{forbidden.port}/")
            assert outside.returncode != 0 and "(2)" in outside.stderr, outside.stderr  # not allowed by ruleset
            mixed = curl(proxy, f"http://{BOTH}:{both_allowed.port}/")
            assert mixed.returncode != 0 and "(2)" in mixed.stderr, mixed.stderr
            assert (forbidden.accepted, both_allowed.accepted, both_forbidden.accepted) == (0, 0, 0)
            assert "Dynamic target tcp://127.0.0.3" in server.stderr and f"tcp://{BOTH}" in server.stderr

            wrong = curl(f"socks5h://alice:nope@{LOOPBACK}:{socks_port}", f"http://{NAME}:{http_port}/")
            assert wrong.returncode != 0 and "served" not in wrong.stdout
            client.wait_stderr("SOCKS5 connection refused: wrong username or password", 5)
            assert server.stderr.count("Client connected over QUIC.") == 1

            # Not SOCKS at all: closed at once. A handshake that never completes: dropped after 10 s.
            with socket.create_connection((LOOPBACK, socks_port), timeout=5) as raw:
                raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
                assert raw.recv(100) == b""
            with socket.create_connection((LOOPBACK, socks_port), timeout=20) as slow:
                slow.sendall(b"\x05")
                assert slow.recv(100) == b""
            client.wait_stderr("SOCKS5 connection dropped: no complete request within 10 s", 5)
    finally:
        for listener in (forbidden, both_allowed, both_forbidden):
            listener.close()


@contextlib.contextmanager
def http_server_v6(root: Path) -> Iterator[int]:
    port = programs.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "::1", "--directory", str(root), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("::1", port), timeout=0.2):
                break
            import time

            time.sleep(0.05)
        yield port
    finally:
        programs.stop_process(proc)
