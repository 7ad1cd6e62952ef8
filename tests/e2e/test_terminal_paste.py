"""Manual mode pasted in a real terminal: the server's stdin and stdout are a pseudo-terminal.

A person pastes the OFFER into a terminal (line discipline turns CR into NL, echoes, may indent), and copies the
ANSWER off the screen (NL comes back as CRLF). This proves the tool works there and not only through pipes.
"""

from __future__ import annotations

import os
import pty
import re
import select
import socket
import subprocess
import threading
import time

import pytest

from .harness import TunnelProcess, cli_argv, client_manual_args, server_manual_args
from .programs import free_port

pytestmark = pytest.mark.e2e


def _echo_server() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return srv, int(srv.getsockname()[1])


def _read_until(fd: int, pattern: str, timeout: float) -> str:
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            if re.search(pattern, buf.decode(errors="replace")):
                return buf.decode(errors="replace")
    raise AssertionError(f"terminal never showed {pattern!r}; screen so far:\n{buf.decode(errors='replace')}")


def test_offer_pasted_into_a_terminal_and_answer_copied_off_it() -> None:
    srv, port = _echo_server()
    target = f"127.0.0.1:{free_port()}"
    client = TunnelProcess("client", cli_argv("asyncio", *client_manual_args(f"tcp://127.0.0.1:{port}", target)))
    master, slave = pty.openpty()
    server = subprocess.Popen(cli_argv("asyncio", *server_manual_args(["127.0.0.0/8"])),
                              stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    try:
        offer = client.read_block("OFFER")
        _read_until(master, r"Paste client offer", 20)
        # Pasted the way a terminal delivers it: CR line ends and some indentation from a chat window.
        pasted = "".join(f"   {line.rstrip()}\r" for line in offer)
        os.write(master, pasted.encode())
        screen = _read_until(master, r"-----END TUNNEL-RS MANUAL ANSWER-----", 20)
        assert "\r\n" in screen  # it really went through a terminal's output processing
        start = screen.index("-----BEGIN TUNNEL-RS MANUAL ANSWER-----")
        answer = screen[start:].replace("\r\n", "\n")
        client.write(answer + "\n")
        client.wait_stderr(r"Listening on TCP", 20)
        with socket.create_connection(("127.0.0.1", int(target.rsplit(":", 1)[1])), timeout=10) as conn:
            conn.sendall(b"typed by a person")
            assert conn.recv(100) == b"typed by a person"
    finally:
        client.stop()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        os.close(master)
        srv.close()
