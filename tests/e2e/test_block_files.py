"""Scriptable manual mode through files: `client > offer.txt`, `server < offer.txt > answer.txt`, answer back."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .harness import cli_argv, client_manual_args, server_manual_args
from .programs import free_port

pytestmark = pytest.mark.e2e


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_blocks_travel_through_files(tmp_path: Path) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.sendall(b"hello from a file-driven tunnel")

    threading.Thread(target=serve, daemon=True).start()
    offer, answer, client_err = tmp_path / "offer.txt", tmp_path / "answer.txt", tmp_path / "client.err"
    listen = free_port()
    with offer.open("w") as out, client_err.open("w") as err:
        client = subprocess.Popen(cli_argv("asyncio", *client_manual_args(f"tcp://127.0.0.1:{port}",
                                                                          f"127.0.0.1:{listen}")),
                                  stdin=subprocess.PIPE, stdout=out, stderr=err, text=True)
    try:
        assert _wait_for(lambda: "-----END TUNNEL-RS MANUAL OFFER-----" in offer.read_text(), 20), offer.read_text()
        with offer.open() as stdin, answer.open("w") as stdout:
            server = subprocess.Popen(cli_argv("asyncio", *server_manual_args(["127.0.0.0/8"])),
                                      stdin=stdin, stdout=stdout, stderr=subprocess.DEVNULL, text=True)
        try:
            assert _wait_for(lambda: "-----END TUNNEL-RS MANUAL ANSWER-----" in answer.read_text(), 20)
            assert client.stdin is not None
            client.stdin.write(answer.read_text())
            client.stdin.flush()
            assert _wait_for(lambda: "Listening on TCP" in client_err.read_text(), 20), client_err.read_text()
            with socket.create_connection(("127.0.0.1", listen), timeout=10) as conn:
                assert conn.recv(100) == b"hello from a file-driven tunnel"
            client.terminate()
            assert client.wait(10) == 0
            assert server.wait(10) == 0
        finally:
            server.kill()
    finally:
        client.kill()
        srv.close()
