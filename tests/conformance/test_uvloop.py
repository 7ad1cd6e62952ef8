"""The asyncio runtime under uvloop, as an embedding program may run it.

uvloop's transports implement asyncio's interfaces without subclassing them; code that checked
``isinstance(transport, asyncio.Transport)`` broke every forwarded TCP connection there.
"""

from __future__ import annotations

import socket
import sys
import threading

import uvloop  # noqa: F401 - a test dependency (pyproject [test]): missing, this module fails rather than skips
from tests.e2e.harness import TunnelProcess, client_manual_args, server_manual_args
from tests.e2e.programs import free_port

UVLOOP_CLI = (
    "import runpy, sys, uvloop\n"
    "uvloop.install()\n"
    "sys.argv[0] = 'tunnel'\n"
    "runpy.run_module('tunnel_asyncio.cli', run_name='__main__')\n"
)


def _argv(*args: str) -> list[str]:
    return [sys.executable, "-c", UVLOOP_CLI, *args]


def test_tcp_and_half_close_through_a_tunnel_whose_both_ends_run_on_uvloop() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                conn.sendall(data[::-1])  # answers after the client's EOF: half-close must pass both ways

    threading.Thread(target=serve, daemon=True).start()
    listen = free_port()
    client = TunnelProcess("client", _argv(*client_manual_args(f"tcp://127.0.0.1:{port}", f"127.0.0.1:{listen}")))
    server = TunnelProcess("server", _argv(*server_manual_args(["127.0.0.0/8"])))
    try:
        server.write("\n".join(client.read_block("OFFER")) + "\n")
        client.write("\n".join(server.read_block("ANSWER")) + "\n")
        client.wait_stderr(r"Listening on TCP", 20)
        for round_ in range(3):
            payload = bytes(range(256)) * (200 + round_)
            with socket.create_connection(("127.0.0.1", listen), timeout=10) as conn:
                conn.sendall(payload)
                conn.shutdown(socket.SHUT_WR)
                got = b""
                while chunk := conn.recv(65536):
                    got += chunk
            assert got == payload[::-1]
        assert client.stop() == 0
        assert server.wait_exit(10) == 0
    finally:
        client.stop()
        server.stop()
        srv.close()
