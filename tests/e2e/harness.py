"""Drive the real `tunnel ... manual` CLI pair the way a user does: copy the OFFER, paste it, copy the ANSWER back.

The harness starts the server and the client as separate processes (``python -m <runtime>.cli``, so no PATH
dependence), pipes the client's OFFER block into the server's stdin and the server's ANSWER block into the
client's stdin, and waits for the client's ``Listening on`` line. Every wait is bounded; every failure message
carries both processes' stderr, because an e2e failure is useless without the tunnel's own account of it.
Both processes are always stopped (SIGTERM, then SIGKILL) when the context exits.
"""

from __future__ import annotations

import contextlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

import attrs

from .programs import LOOPBACK, free_port

#: CLI entry module per runtime; every one accepts the same flags, so mixed pairs are one parameter.
RUNTIME_MODULES: dict[str, str] = {
    "asyncio": "tunnel_asyncio.cli",
    "trio": "tunnel_trio.cli",
    "gevent": "tunnel_gevent.cli",
}

#: A stand-in CLI (tests/e2e/fake_cli.py) that keeps the same contract without ICE/QUIC: it proves the harness.
FAKE_RUNTIME = "fake"

#: Every CLI run in a test keeps to loopback: no STUN servers, host candidates on 127.0.0.1 only.
LOOPBACK_ICE_ARGS: tuple[str, ...] = ("--no-stun", "--host-candidate", LOOPBACK)

DEFAULT_TIMEOUT = 20.0


class HarnessError(AssertionError):
    """The tunnel did not do what the harness waited for; the message includes both processes' stderr."""


def cli_argv(runtime: str, *args: str) -> list[str]:
    """The command line that runs the CLI of ``runtime`` with ``args``."""
    if runtime == FAKE_RUNTIME:
        return [sys.executable, str(Path(__file__).with_name("fake_cli.py")), *args]
    try:
        module = RUNTIME_MODULES[runtime]
    except KeyError:
        raise ValueError(f"unknown runtime {runtime!r}; known: {sorted(RUNTIME_MODULES)}") from None
    return [sys.executable, "-m", module, *args]


def server_manual_args(
    allowed_tcp: Sequence[str] = (), allowed_udp: Sequence[str] = (), *, packet_size: int | None = None
) -> list[str]:
    """``server manual`` flags for a loopback-only run."""
    args = ["server", "manual"]
    for cidr in allowed_tcp:
        args += ["--allowed-tcp", cidr]
    for cidr in allowed_udp:
        args += ["--allowed-udp", cidr]
    args += LOOPBACK_ICE_ARGS
    if packet_size is not None:
        args += ["--packet-size", str(packet_size)]
    return args


def client_manual_args(source: str, target: str, *, packet_size: int | None = None) -> list[str]:
    """``client manual`` flags for a loopback-only run."""
    args = ["client", "manual", "--source", source, "--target", target, *LOOPBACK_ICE_ARGS]
    if packet_size is not None:
        args += ["--packet-size", str(packet_size)]
    return args


def block_markers(kind: str) -> tuple[str, str]:
    """BEGIN/END marker lines of an OFFER or ANSWER block."""
    return f"-----BEGIN TUNNEL-RS MANUAL {kind}-----", f"-----END TUNNEL-RS MANUAL {kind}-----"


class TunnelProcess:
    """One CLI process: stdout lines arrive in a queue, stderr is collected, stdin stays open for pasting.

    Readers are threads so that neither pipe can fill up and stall the tunnel while a test is busy elsewhere.
    """

    def __init__(self, role: str, argv: Sequence[str]) -> None:
        self.role = role
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            errors="replace",
        )
        self._stdout: queue.Queue[str | None] = queue.Queue()
        self._stdout_seen: list[str] = []
        self._stderr: list[str] = []
        self._stderr_changed = threading.Condition()
        self._threads = [
            threading.Thread(target=self._pump_stdout, daemon=True),
            threading.Thread(target=self._pump_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # ----------------------------------------------------------------------------------- readers

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        with contextlib.suppress(ValueError, OSError):
            for line in self.proc.stdout:
                self._stdout_seen.append(line)
                self._stdout.put(line)
        self._stdout.put(None)

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        with contextlib.suppress(ValueError, OSError):
            for line in self.proc.stderr:
                with self._stderr_changed:
                    self._stderr.append(line)
                    self._stderr_changed.notify_all()
        with self._stderr_changed:
            self._stderr_changed.notify_all()

    @property
    def stderr(self) -> str:
        with self._stderr_changed:
            return "".join(self._stderr)

    @property
    def stdout(self) -> str:
        return "".join(self._stdout_seen)

    def describe(self) -> str:
        """Everything known about this process, for an assertion message."""
        status = self.proc.poll()
        state = "running" if status is None else f"exit code {status}"
        return (
            f"--- {self.role} ({state}): {' '.join(self.argv)}\n"
            f"--- {self.role} stderr:\n{self.stderr}"
            f"--- {self.role} stdout:\n{self.stdout}"
        )

    # ------------------------------------------------------------------------------------- waits

    def read_block(self, kind: str, timeout: float = DEFAULT_TIMEOUT) -> list[str]:
        """The BEGIN..END lines of the next ``kind`` block on stdout (markers included, stripped)."""
        begin, end = block_markers(kind)
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HarnessError(f"no complete {kind} block from {self.role} within {timeout} s")
            try:
                line = self._stdout.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self._wait_quietly(1.0)
                raise HarnessError(f"{self.role} closed stdout before a complete {kind} block")
            text = line.strip()
            if not lines:
                if text == begin:
                    lines.append(text)
                continue
            if text:
                lines.append(text)
            if text == end:
                return lines

    def wait_stderr(self, pattern: str, timeout: float = DEFAULT_TIMEOUT) -> re.Match[str]:
        """Wait until a stderr line matches the regular expression ``pattern``; fail early if the process dies."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        checked = 0
        with self._stderr_changed:
            while True:
                for line in self._stderr[checked:]:
                    match = compiled.search(line)
                    if match:
                        return match
                checked = len(self._stderr)
                if self.proc.poll() is not None and not any(t.is_alive() for t in self._threads[1:]):
                    raise HarnessError(
                        f"{self.role} exited with {self.proc.returncode} before printing /{pattern}/"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise HarnessError(f"{self.role} did not print /{pattern}/ within {timeout} s")
                self._stderr_changed.wait(min(remaining, 0.2))

    def write(self, text: str) -> None:
        """Paste ``text`` into the process's stdin (kept open afterwards, like a terminal)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(text)
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError) as exc:
            self._wait_quietly(1.0)
            raise HarnessError(f"could not write to {self.role}'s stdin: {exc!r}") from exc

    def close_stdin(self) -> None:
        with contextlib.suppress(BrokenPipeError, ValueError, OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()

    def wait_exit(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """The exit code once the process ends by itself; HarnessError if it is still running at the deadline."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"{self.role} still running after {timeout} s") from None
        self._join_readers()
        return code

    def _wait_quietly(self, timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        self._join_readers()

    def _join_readers(self) -> None:
        if self.proc.poll() is not None:
            for thread in self._threads:
                thread.join(timeout=2.0)

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        """Send ``sig`` (SIGTERM by default), then SIGKILL after ``timeout``; returns the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(timeout=timeout)
        self.close_stdin()
        self._join_readers()
        for pipe in (self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError, ValueError):
                if pipe is not None:
                    pipe.close()
        return self.proc.returncode


@attrs.frozen
class ExitReport:
    """How a tunnel pair ended: the client was stopped by the harness, the server is expected to follow alone."""

    client: int
    server: int
    #: True if the server ended by itself after the client went away (manual mode serves one session).
    server_exited_by_itself: bool


def run_cli(
    runtime: str, args: Sequence[str], *, stdin: str = "", timeout: float = DEFAULT_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run the CLI once to completion (usage errors, help); stdin is given and then closed."""
    return subprocess.run(
        cli_argv(runtime, *args), input=stdin, capture_output=True, text=True, timeout=timeout
    )


@contextlib.contextmanager
def supervised(*procs: TunnelProcess) -> Iterator[None]:
    """Always stop ``procs`` at the end; re-raise a HarnessError with their stderr so the failure explains itself."""
    try:
        yield
    except HarnessError as exc:
        for proc in procs:
            proc.stop()
        logs = "\n".join(p.describe() for p in procs)
        raise HarnessError(f"{exc}\n{logs}") from None
    finally:
        for proc in procs:
            proc.stop()


def error_lines(stderr: str) -> list[str]:
    """The ``Error: ...`` lines of a stderr text (the user-facing one-line error contract)."""
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


class ManualTunnel:
    """A running manual-mode tunnel: client-first signaling between two CLI processes over pipes.

    ``source`` is what the server connects to (``tcp://127.0.0.1:P`` or ``udp://...``); the client listens on
    ``127.0.0.1:local_port``. ``runtime`` picks both sides' CLI module; ``server_runtime``/``client_runtime``
    override one side for mixed pairs. ``offer_filter`` may rewrite the OFFER lines in transit (tamper tests).
    """

    def __init__(
        self,
        source: str,
        *,
        allowed_tcp: Sequence[str] | None = None,
        allowed_udp: Sequence[str] | None = None,
        local_port: int | None = None,
        runtime: str = "asyncio",
        server_runtime: str | None = None,
        client_runtime: str | None = None,
        packet_size: int | None = None,
        server_extra_args: Sequence[str] = (),
        client_extra_args: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
        offer_filter: Callable[[list[str]], list[str]] | None = None,
    ) -> None:
        self.source = source
        self.protocol = source.split("://", 1)[0]
        if allowed_tcp is None:
            allowed_tcp = ("127.0.0.0/8",) if self.protocol == "tcp" else ()
        if allowed_udp is None:
            allowed_udp = ("127.0.0.0/8",) if self.protocol == "udp" else ()
        self.allowed_tcp = tuple(allowed_tcp)
        self.allowed_udp = tuple(allowed_udp)
        self.local_port = local_port or free_port(tcp=self.protocol != "udp", udp=self.protocol == "udp")
        self.server_runtime = server_runtime or runtime
        self.client_runtime = client_runtime or runtime
        self.packet_size = packet_size
        self.server_extra_args = tuple(server_extra_args)
        self.client_extra_args = tuple(client_extra_args)
        self.timeout = timeout
        self.offer_filter = offer_filter
        self.server: TunnelProcess | None = None
        self.client: TunnelProcess | None = None
        self.offer: list[str] = []
        self.answer: list[str] = []
        self.exit_report: ExitReport | None = None
        self.setup_seconds: float | None = None

    @property
    def local_address(self) -> tuple[str, int]:
        return (LOOPBACK, self.local_port)

    @property
    def target(self) -> str:
        return f"{LOOPBACK}:{self.local_port}"

    # --------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> ManualTunnel:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start both sides, exchange the blocks, wait for the client to listen. Raises HarnessError + logs."""
        started = time.monotonic()
        # Both start at once: the server gathers its candidates while the client prints its offer.
        self.client = TunnelProcess(
            "client",
            cli_argv(
                self.client_runtime,
                *client_manual_args(self.source, self.target, packet_size=self.packet_size),
                *self.client_extra_args,
            ),
        )
        self.server = TunnelProcess(
            "server",
            cli_argv(
                self.server_runtime,
                *server_manual_args(self.allowed_tcp, self.allowed_udp, packet_size=self.packet_size),
                *self.server_extra_args,
            ),
        )
        try:
            self.offer = self.client.read_block("OFFER", self.timeout)
            pasted = self.offer_filter(list(self.offer)) if self.offer_filter else self.offer
            self.server.write("\n".join(pasted) + "\n")
            self.answer = self.server.read_block("ANSWER", self.timeout)
            self.client.write("\n".join(self.answer) + "\n")
            remaining = max(1.0, self.timeout - (time.monotonic() - started))
            self.client.wait_stderr(r"Listening on", remaining)
        except HarnessError as exc:
            raise HarnessError(f"tunnel did not come up: {exc}\n{self.logs()}") from None
        self.setup_seconds = time.monotonic() - started

    def stop(self, timeout: float = 5.0, sig: int = signal.SIGTERM) -> ExitReport:
        """Stop the client (``sig``) first, give the server ``timeout`` to end by itself, then stop it too."""
        if self.exit_report is not None:
            return self.exit_report
        client_code = self.client.stop(sig, timeout=timeout) if self.client else 0
        by_itself = False
        server_code = 0
        if self.server is not None:
            try:
                server_code = self.server.wait_exit(timeout)
                by_itself = True
            except HarnessError:
                server_code = self.server.stop(timeout=timeout)
        self.exit_report = ExitReport(
            client=client_code, server=server_code, server_exited_by_itself=by_itself
        )
        return self.exit_report

    # ----------------------------------------------------------------------------------- reports

    def logs(self) -> str:
        """Both processes' stderr (and stdout), for assertion messages."""
        parts = [proc.describe() for proc in (self.server, self.client) if proc is not None]
        return "\n".join(parts)

    def assert_alive(self) -> None:
        """Both sides still running (a test calls this after its traffic, before stopping them)."""
        dead = [p.role for p in (self.server, self.client) if p is not None and not p.running()]
        if dead:
            raise HarnessError(f"{', '.join(dead)} exited during the test\n{self.logs()}")

    def assert_clean_exit(self, sig: int = signal.SIGTERM) -> None:
        """Client exits 0 on ``sig`` (SIGTERM or SIGINT); the server then ends its session and exits 0 by itself."""
        report = self.stop(sig=sig)
        problems = []
        if report.client != 0:
            problems.append(f"client exit code {report.client} after {signal.Signals(sig).name} (want 0)")
        if not report.server_exited_by_itself:
            problems.append("server did not exit by itself after the client left")
        elif report.server != 0:
            problems.append(f"server exit code {report.server} (want 0)")
        if problems:
            raise HarnessError("; ".join(problems) + "\n" + self.logs())
