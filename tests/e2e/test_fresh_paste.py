"""Manual mode's fresh paste (issue 15 item 2, docs/reconnect.md): a client on a real terminal whose server was
restarted asks for a new exchange, and its local listener carries on over the new tunnel.

The client runs on a pseudo-terminal (stdin, stdout and stderr, as in a person's shell); the servers use pipes.
The first server is killed (SIGKILL: nothing tells the client), a second one is started (new certificate, new ICE
credentials, as after a restart). After consent is lost (30 s) and PASTE_AFTER more seconds of failed probes, the
client prints a new OFFER; a malformed paste gets one error line and the prompt again; the second server's ANSWER
pasted into the terminal brings up a new tunnel behind the same listener. A control client with piped stdin, whose
server is killed at the same moment, keeps today's behaviour: it holds, prints no second OFFER, and gives up with
exit 11 at its --reconnect-timeout.
"""

from __future__ import annotations

import contextlib
import os
import pty
import signal
import socket
import subprocess
import threading
import time

import pytest

from tunnel_core.repaste import PASTE_AFTER

from .harness import TunnelProcess, block_markers, cli_argv, client_manual_args, server_manual_args
from .programs import free_port
from .test_terminal_paste import _echo_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

RUNTIME = os.environ.get("TUNNEL_E2E_RUNTIME", "asyncio")

CONSENT_LIMIT = 30.0


class Terminal:
    """A process on a pseudo-terminal; everything it shows is collected (CRLF turned back into NL)."""

    def __init__(self, argv: list[str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                                     start_new_session=True)
        os.close(slave)
        self._screen = bytearray()
        self._changed = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                chunk = b""
            with self._changed:
                if not chunk:
                    self._changed.notify_all()
                    return
                self._screen += chunk
                self._changed.notify_all()

    @property
    def screen(self) -> str:
        with self._changed:
            return self._screen.decode(errors="replace").replace("\r\n", "\n")

    def wait_for(self, text: str, timeout: float, after: int = 0) -> int:
        """Wait until ``text`` shows at or after offset ``after``; returns the offset just past it."""
        deadline = time.monotonic() + timeout
        while True:
            exited = self.proc.poll() is not None
            screen = self.screen
            at = screen.find(text, after)
            if at >= 0:
                return at + len(text)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or exited:
                raise AssertionError(f"terminal never showed {text!r} (exit {self.proc.poll()}); screen:\n{screen}")
            with self._changed:
                self._changed.wait(min(remaining, 0.2))

    def block(self, kind: str, timeout: float, after: int = 0) -> tuple[str, int]:
        begin, end = block_markers(kind)
        start = self.wait_for(begin, timeout, after) - len(begin)
        stop = self.wait_for(end, timeout, start)
        return self.screen[start:stop] + "\n", stop

    def paste(self, text: str) -> None:
        os.write(self.master, text.replace("\n", "\r").encode())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        with contextlib.suppress(OSError):
            os.close(self.master)


def _exchange(offer: str, server: TunnelProcess) -> str:
    server.write(offer)
    return "\n".join(server.read_block("ANSWER")) + "\n"


def _echo(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(payload)
        conn.settimeout(10)
        return conn.recv(len(payload))


def test_restarted_server_fresh_paste_on_a_terminal_keeps_the_listener() -> None:
    srv, service = _echo_server()
    source = f"tcp://127.0.0.1:{service}"
    port, control_port = free_port(), free_port()
    server_argv = cli_argv(RUNTIME, *server_manual_args(["127.0.0.0/8"]))
    client = Terminal(cli_argv(RUNTIME, *client_manual_args(source, f"127.0.0.1:{port}")))
    control = TunnelProcess("control client", cli_argv(
        RUNTIME, *client_manual_args(source, f"127.0.0.1:{control_port}"), "--reconnect-timeout", "12s"))
    first = TunnelProcess("server 1", server_argv)
    control_server = TunnelProcess("control server", server_argv)
    second: TunnelProcess | None = None
    old = socket.socket()
    try:
        offer, seen = client.block("OFFER", 20)
        client.paste(_exchange(offer, first))
        seen = client.wait_for("Listening on TCP", 20, seen)
        control.write(_exchange("\n".join(control.read_block("OFFER")) + "\n", control_server))
        control.wait_stderr("Listening on TCP", 20)
        assert _echo(port, b"first tunnel") == b"first tunnel"
        old = socket.create_connection(("127.0.0.1", port), timeout=10)  # open when the server goes
        old.sendall(b"x")
        assert old.recv(1) == b"x"

        first.stop(signal.SIGKILL)  # a crash or a reboot: nothing tells the client
        control_server.stop(signal.SIGKILL)
        killed = time.monotonic()
        second = TunnelProcess("server 2", server_argv)  # new certificate, new ICE credentials
        second.wait_stderr("Paste client offer", 20)

        seen = client.wait_for("Tunnel lost", CONSENT_LIMIT + 20, seen)
        offer2, seen = client.block("OFFER", PASTE_AFTER + 20, seen)
        asked_after = time.monotonic() - killed
        assert "paste this new OFFER" in client.screen
        assert offer2 != offer  # new ICE credentials and candidates

        client.paste("this is not a block\n")  # a malformed paste: one error line, the prompt again, no exit
        seen = client.wait_for("Error: Unexpected text before BEGIN marker", 10, seen)
        seen = client.wait_for("Paste server answer", 10, seen)
        assert client.proc.poll() is None

        client.paste(_exchange(offer2, second))
        pasted = seen
        seen = client.wait_for("Tunnel back on a new session from the pasted ANSWER", 30, seen)
        client.wait_for(f"Connection from 127.0.0.1:{old.getsockname()[1]} reset: the tunnel was lost", 5, pasted)
        old.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            assert old.recv(10) == b""  # the connection open on the lost tunnel was reset
        assert _echo(port, b"new tunnel, same listener") == b"new tunnel, same listener"
        second.wait_stderr("Client connected over QUIC", 5)

        # The control client (piped stdin) held, printed no second OFFER, and gave up at its timeout.
        assert control.wait_exit(CONSENT_LIMIT + 40) == 11, control.describe()
        assert control.stdout.count("BEGIN TUNNEL-RS MANUAL OFFER") == 1, control.describe()
        assert "Paste server answer" not in control.stderr.split("Tunnel lost", 1)[1], control.describe()
        assert "Gave up reconnecting after 12s" in control.stderr, control.describe()
        print(f"fresh paste asked {asked_after:.1f} s after the server was killed")
    finally:
        old.close()
        client.stop()
        for proc in (control, first, control_server, second):
            if proc is not None:
                proc.stop()
        srv.close()
