"""IPv6 end to end: ICE host candidates on ::1, an IPv6-literal source, a bracketed listen target.

Upstream most likely broke on `tcp://[::1]:22` (it re-bracketed an already bracketed host); we must not.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from .harness import TunnelProcess, cli_argv

pytestmark = pytest.mark.e2e


def _free_v6_port() -> int:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        return int(s.getsockname()[1])


def test_tcp_tunnel_entirely_over_ipv6_loopback() -> None:
    srv = socket.socket(socket.AF_INET6)
    srv.bind(("::1", 0))
    srv.listen()
    port = srv.getsockname()[1]

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data[::-1])

    threading.Thread(target=serve, daemon=True).start()
    listen = _free_v6_port()
    v6 = ["--no-stun", "--host-candidate", "::1"]
    client = TunnelProcess("client", cli_argv("asyncio", "client", "manual", "--source", f"tcp://[::1]:{port}",
                                              "--target", f"[::1]:{listen}", *v6))
    server = TunnelProcess("server", cli_argv("asyncio", "server", "manual", "--allowed-tcp", "::1/128", *v6))
    try:
        server.write("\n".join(client.read_block("OFFER")) + "\n")
        client.write("\n".join(server.read_block("ANSWER")) + "\n")
        client.wait_stderr(r"Listening on TCP \[::1\]:", 20)
        assert "Local: [::1]:" in client.stderr
        deadline = time.monotonic() + 10
        with socket.create_connection(("::1", listen), timeout=10) as conn:
            conn.sendall(b"over six")
            got = b""
            while len(got) < 8 and time.monotonic() < deadline:
                got += conn.recv(100)
        assert got == b"xis revo"
        assert client.stop() == 0
        assert server.wait_exit(10) == 0
    finally:
        client.stop()
        server.stop()
        srv.close()
