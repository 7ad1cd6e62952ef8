"""How each tunnel mode's two sides are started inside a lab, in one place.

A mode is a class with ``name`` and ``start(lab, ...) -> RunningPair``; the suite is parametrised over ``MODES``,
so nostr and iroh join by adding a class here (nostr: a relay in the server namespace on the public side; iroh:
``tunnel relay`` there) without touching the tests. The client always runs behind router A (namespace pA), the
server behind router B (pB); the service being forwarded is an echo server on pB's loopback and the client's
local end listens on pA's loopback, so the test reaches both only through probes run inside those namespaces.

The process plumbing is a trimmed copy of tests/e2e/harness.py's idea (stdout lines to a queue, stderr collected
by threads, the OFFER/ANSWER blocks piped across): copied rather than imported so the two suites can evolve apart.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import attrs

from .lab import TURN_PASSWORD, TURN_USER, Lab

PROBE = str(Path(__file__).with_name("probe.py"))
ECHO_PORT = 7000
LISTEN_PORT = 7100
#: ICE gives up after 30 s; the failure line must come within that plus start-up and QUIC slack.
CONNECT_DEADLINE = 50.0
PYTHON = sys.executable


class RunError(AssertionError):
    """A pair did not do what the suite waited for; carries both sides' stderr."""


class Proc:
    """One process in a namespace: stdout lines in a queue, stderr collected, stdin kept open for pasting."""

    def __init__(self, name: str, argv: Sequence[str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1, errors="replace")
        self.stdout: queue.Queue[str | None] = queue.Queue()
        self.stderr_lines: list[str] = []
        self._changed = threading.Condition()
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for thread in self._threads:
            thread.start()

    def settle(self, timeout: float = 2.0) -> int | None:
        """Give an exiting process a moment to finish writing, so a report shows its last words."""
        try:
            code: int | None = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        for thread in self._threads:
            thread.join(timeout=timeout)
        return code

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        with contextlib.suppress(ValueError, OSError):
            for line in self.proc.stdout:
                self.stdout.put(line)
        self.stdout.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        with contextlib.suppress(ValueError, OSError):
            for line in self.proc.stderr:
                with self._changed:
                    self.stderr_lines.append(line.rstrip("\n"))
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def stderr(self) -> str:
        with self._changed:
            return "\n".join(self.stderr_lines)

    def read_block(self, kind: str, timeout: float) -> str:
        begin, end = f"-----BEGIN TUNNEL-RS MANUAL {kind}-----", f"-----END TUNNEL-RS MANUAL {kind}-----"
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RunError(f"{self.name}: no {kind} block within {timeout} s\n{self.stderr}")
            try:
                line = self.stdout.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RunError(f"{self.name} exited ({self.proc.poll()}) before its {kind} block\n{self.stderr}")
            if line.strip() == begin or lines:
                lines.append(line)
            if line.strip() == end and lines:
                return "".join(lines)

    def paste(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def wait_line(self, pattern: str, timeout: float) -> re.Match[str] | None:
        """The first stderr line matching ``pattern``; None if the process ended or the time ran out first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                found = self._scan(regex)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                if self.proc.poll() is None:
                    self._changed.wait(min(left, 0.2))
                    continue
            # The process ended: let the reader take its last words, then look one final time.
            self._threads[1].join(timeout=2.0)
            with self._changed:
                return self._scan(regex)

    def _scan(self, regex: re.Pattern[str]) -> re.Match[str] | None:
        for line in self.stderr_lines:
            if m := regex.search(line):
                return m
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=3)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError, ValueError):
                if stream is not None:
                    stream.close()


@attrs.frozen
class Connected:
    path: str  # the CLI's "Connection:" text, e.g. "Relay (TURN)"
    seconds: float  # answer pasted -> client listening


@attrs.frozen
class Failed:
    exit_code: int | None
    message: str  # the client's last stderr line
    seconds: float


@attrs.define
class RunningPair:
    """Both sides of one tunnel inside a lab, plus the echo service; ``close`` stops everything it started."""

    lab: Lab
    client: Proc
    server: Proc
    echo: Proc
    listen_port: int
    answered_at: float = 0.0

    def wait_connected(self, timeout: float = CONNECT_DEADLINE) -> Connected | Failed:
        listening = self.client.wait_line(r"^Listening on ", timeout)
        seconds = time.monotonic() - self.answered_at
        if listening is None:
            code = self._exit_code(5.0)
            last = self.client.stderr_lines[-1] if self.client.stderr_lines else ""
            return Failed(exit_code=code, message=last, seconds=round(seconds, 2))
        connection = self.client.wait_line(r"Connection: (.+)$", 1.0)
        return Connected(path=connection.group(1).strip() if connection else "?", seconds=round(seconds, 2))

    def _exit_code(self, timeout: float) -> int | None:
        try:
            return self.client.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def transfer(self, nbytes: int, timeout: float = 120.0) -> dict[str, object]:
        """Echo ``nbytes`` through the tunnel from inside the client namespace; the probe's JSON verdict."""
        argv = self.lab.in_ns("pA", [PYTHON, PROBE, "transfer", str(self.listen_port), str(nbytes),
                                     "--timeout", str(timeout)])
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 10, check=False)
        lines = result.stdout.strip().splitlines()
        if not lines:
            return {"ok": False, "error": f"probe printed nothing: {result.stderr.strip()[-300:]}"}
        return dict(json.loads(lines[-1]))

    def start_transfer(self, nbytes: int, timeout: float) -> Proc:
        return Proc("transfer", self.lab.in_ns("pA", [PYTHON, PROBE, "transfer", str(self.listen_port),
                                                      str(nbytes), "--timeout", str(timeout)]))

    def describe(self) -> str:
        return (f"--- client (exit {self.client.proc.poll()}) stderr ---\n{self.client.stderr}\n"
                f"--- server (exit {self.server.proc.poll()}) stderr ---\n{self.server.stderr}")

    def close(self) -> None:
        for proc in (self.client, self.server, self.echo):
            proc.stop()


class ManualMode:
    """``tunnel server|client manual``: the offer and answer are pasted across by the test, as a person would."""

    name = "manual"

    def ice_args(self, lab: Lab, side: str, turn: bool) -> list[str]:
        args = ["--host-candidate", lab.lan_ip(side), "--stun-server", lab.stun_server]
        if turn:
            password_file = lab.workdir / "turn-password"
            password_file.write_text(TURN_PASSWORD + "\n")
            args += ["--turn-server", lab.turn_url, "--turn-user", TURN_USER,
                     "--turn-password-file", str(password_file)]
        return args

    def start(self, lab: Lab, *, turn: bool, listen_port: int = LISTEN_PORT, echo_port: int = ECHO_PORT,
              extra: Sequence[str] = ()) -> RunningPair:
        echo = Proc("echo", lab.in_ns("pB", [PYTHON, PROBE, "echo", str(echo_port)]))
        try:
            if echo.stdout.get(timeout=10) != "ready\n":
                raise RunError(f"echo server did not start\n{echo.stderr}")
        except queue.Empty:
            echo.stop()
            raise RunError("echo server did not start") from None
        cli = [PYTHON, "-m", "tunnel_asyncio.cli"]
        server = Proc("server", lab.in_ns("pB", [*cli, "server", "manual", "--allowed-tcp", "127.0.0.0/8",
                                                 *self.ice_args(lab, "B", turn), *extra]))
        client = Proc("client", lab.in_ns("pA", [*cli, "client", "manual", "--source",
                                                 f"tcp://127.0.0.1:{echo_port}", "--target",
                                                 f"127.0.0.1:{listen_port}", *self.ice_args(lab, "A", turn),
                                                 *extra]))
        pair = RunningPair(lab=lab, client=client, server=server, echo=echo, listen_port=listen_port)
        try:
            offer = client.read_block("OFFER", 20)
            server.paste(offer)
            answer = server.read_block("ANSWER", 20)
            client.paste(answer)
            pair.answered_at = time.monotonic()
        except BaseException as exc:
            client.settle(0.5)
            server.settle(2.0)
            report = pair.describe()
            pair.close()
            raise RunError(f"{exc}\n{report}") from None
        return pair


#: Every mode the suite runs; nostr and iroh are added here when they exist.
MODES: dict[str, ManualMode] = {"manual": ManualMode()}
