"""How each tunnel mode's two sides are started inside a lab, in one place.

A mode is a class with ``name``, ``turn_variants`` (with / without TURN for the ICE modes; iroh has no TURN) and
``start(lab, ...) -> RunningPair``; the suite is parametrised over ``MODES``. Manual mode pastes the offer and
answer across; nostr mode runs a Nostr relay (nostr_relay.py) in the lab's public-side namespace; iroh mode runs
the project's own ``tunnel relay`` there, with ``--dns-server none`` so nothing looks for n0's infrastructure.
The client always runs behind router A (namespace pA), the server behind router B (pB); the service being
forwarded is an echo server on pB's loopback and the client's local end listens on pA's loopback, so the test
reaches both only through probes run inside those namespaces.

The process plumbing is a trimmed copy of tests/e2e/harness.py's idea (stdout lines to a queue, stderr collected
by threads, the OFFER/ANSWER blocks piped across): copied rather than imported so the two suites can evolve apart.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import attrs

from .lab import NAT_TYPES, SRV_IP, TURN_PASSWORD, TURN_USER, Lab

PROBE = str(Path(__file__).with_name("probe.py"))
NOSTR_RELAY = str(Path(__file__).with_name("nostr_relay.py"))
#: nostr-sdk's LocalRelay refuses kind 24242 (Blossom authorization), so both sides agree on another ephemeral kind.
NOSTR_KIND = "24243"
ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((a, b) for a in NAT_TYPES for b in NAT_TYPES)
#: (client NAT, server NAT) pairs in which every NAT type is once the client's and once the server's, one of them
#: unpunchable (prc / sym). Manual mode runs ALL_PAIRS; nostr mode has the same ICE agent and TURN client (only its
#: signaling differs) and iroh mode connects through the lab's relay whatever the NATs, so by default they run
#: these (iroh also sym / sym, the hardest pair), which keeps the suite's wall time down. TUNNEL_NAT_ALL_PAIRS=1
#: (and TUNNEL_NAT_WRITE_DOCS=1, which writes docs/nat.md's tables) runs all 16 pairs in every mode.
COVERING_PAIRS: tuple[tuple[str, str], ...] = (("fullcone", "rcone"), ("rcone", "prc"), ("prc", "sym"),
                                               ("sym", "fullcone"))
EVERY_PAIR_IN_EVERY_MODE = "1" in (os.environ.get("TUNNEL_NAT_ALL_PAIRS", ""),
                                   os.environ.get("TUNNEL_NAT_WRITE_DOCS", ""))
ECHO_PORT = 7000
LISTEN_PORT = 7100
#: ICE gives up after 30 s; the failure line must come within that plus start-up and QUIC slack.
CONNECT_DEADLINE = 50.0
PYTHON = sys.executable
CLI = [PYTHON, "-m", "tunnel_asyncio.cli"]


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
        self.stderr_times: list[float] = []  # monotonic time each stderr line was read (connect times)
        self.started_at = time.monotonic()
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
                    self.stderr_times.append(time.monotonic())
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

    def line_time(self, pattern: str) -> float | None:
        """When the first stderr line matching ``pattern`` was read (monotonic), None if there is none yet."""
        regex = re.compile(pattern)
        with self._changed:
            for line, when in zip(self.stderr_lines, self.stderr_times, strict=True):
                if regex.search(line):
                    return when
        return None

    def wait_ready(self, what: str, timeout: float = 20.0) -> None:
        """A helper program's "ready" line on stdout (echo server, Nostr relay)."""
        try:
            line = self.stdout.get(timeout=timeout)
        except queue.Empty:
            line = ""
        if line != "ready\n":
            self.stop()
            raise RunError(f"{what} did not start\n{self.stderr}")

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
    seconds: float  # the mode's start mark (manual: answer pasted) -> client listening


@attrs.frozen
class PathChange:
    """A path the client reported after connecting (iroh: relayed first, maybe direct later)."""

    path: str
    seconds: float  # since the client's listening line


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
    #: Programs on the public side this pair needs (the Nostr relay, the iroh relay); stopped with the pair.
    helpers: list[Proc] = attrs.Factory(list)
    listening: str = r"^Listening on "
    path_pattern: str = r"Connection: (.+)$"
    #: A client stderr line the connect time is measured from; None: from ``answered_at``.
    start_pattern: str | None = None

    def _start(self) -> float:
        if self.start_pattern is not None:
            mark = self.client.line_time(self.start_pattern)
            if mark is not None:
                return mark
        return self.answered_at

    def wait_connected(self, timeout: float = CONNECT_DEADLINE) -> Connected | Failed:
        listening = self.client.wait_line(self.listening, timeout)
        if listening is None:
            seconds = time.monotonic() - self._start()
            code = self._exit_code(5.0)
            last = self.client.stderr_lines[-1] if self.client.stderr_lines else ""
            return Failed(exit_code=code, message=last, seconds=round(seconds, 2))
        listened_at = self.client.line_time(self.listening) or time.monotonic()
        connection = self.client.wait_line(self.path_pattern, 1.0)
        return Connected(path=connection.group(1).strip() if connection else "?",
                         seconds=round(listened_at - self._start(), 2))

    def wait_path(self, pattern: str, timeout: float) -> PathChange | None:
        """A later path line (e.g. iroh's ``Connection: Direct ...``) within ``timeout``; None if none came."""
        found = self.client.wait_line(pattern, timeout)
        if found is None:
            return None
        at = self.client.line_time(pattern) or time.monotonic()
        listened = self.client.line_time(self.listening) or at
        return PathChange(found.group(1).strip(), round(max(0.0, at - listened), 2))

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
        for proc in (self.client, self.server, self.echo, *self.helpers):
            proc.stop()


def start_echo(lab: Lab, echo_port: int) -> Proc:
    echo = Proc("echo", lab.in_ns("pB", [PYTHON, PROBE, "echo", str(echo_port)]))
    echo.wait_ready("echo server", 10)
    return echo


def ice_args(lab: Lab, side: str, turn: bool) -> list[str]:
    """The ICE flags every ICE mode shares: the peer's LAN address, the lab's STUN server, TURN when asked."""
    args = ["--host-candidate", lab.lan_ip(side), "--stun-server", lab.stun_server]
    if turn:
        password_file = lab.workdir / "turn-password"
        password_file.write_text(TURN_PASSWORD + "\n")
        args += ["--turn-server", lab.turn_url, "--turn-user", TURN_USER, "--turn-password-file", str(password_file)]
    return args


def _abort(pair: RunningPair, exc: BaseException) -> RunError:
    """Stop a half-started pair and say why, with both sides' stderr."""
    pair.client.settle(0.5)
    pair.server.settle(2.0)
    report = pair.describe()
    pair.close()
    return RunError(f"{exc}\n{report}")


class ManualMode:
    """``tunnel server|client manual``: the offer and answer are pasted across by the test, as a person would."""

    name = "manual"
    turn_variants: tuple[bool, ...] = (True, False)
    pairs = ALL_PAIRS
    #: What "connect" is measured from, for the docs.
    connect_from = "answer pasted into the client"

    def start(self, lab: Lab, *, turn: bool, listen_port: int = LISTEN_PORT, echo_port: int = ECHO_PORT,
              extra: Sequence[str] = ()) -> RunningPair:
        echo = start_echo(lab, echo_port)
        server = Proc("server", lab.in_ns("pB", [*CLI, "server", "manual", "--allowed-tcp", "127.0.0.0/8",
                                                 *ice_args(lab, "B", turn), *extra]))
        client = Proc("client", lab.in_ns("pA", [*CLI, "client", "manual", "--source",
                                                 f"tcp://127.0.0.1:{echo_port}", "--target",
                                                 f"127.0.0.1:{listen_port}", *ice_args(lab, "A", turn),
                                                 *extra]))
        pair = RunningPair(lab=lab, client=client, server=server, echo=echo, listen_port=listen_port)
        try:
            offer = client.read_block("OFFER", 20)
            server.paste(offer)
            answer = server.read_block("ANSWER", 20)
            client.paste(answer)
            pair.answered_at = time.monotonic()
        except BaseException as exc:
            raise _abort(pair, exc) from None
        return pair


class NostrMode:
    """``tunnel server|client nostr``: signaling through a Nostr relay on the lab's public side.

    The server is started first and must be subscribed ("Waiting for tunnel requests") before the client
    publishes: the signaling events are ephemeral, a relay does not keep them for late subscribers."""

    name = "nostr"
    turn_variants: tuple[bool, ...] = (True, False)
    pairs = ALL_PAIRS if EVERY_PAIR_IN_EVERY_MODE else COVERING_PAIRS
    connect_from = "client's request published (`Session ...: requesting`)"

    def start(self, lab: Lab, *, turn: bool, listen_port: int = LISTEN_PORT, echo_port: int = ECHO_PORT,
              extra: Sequence[str] = (), client_extra: Sequence[str] = (),
              server_extra: Sequence[str] = ()) -> RunningPair:
        from tunnel_core.nostr.keys import SecretKey

        relay_port = listen_port + 1000
        keys = {side: SecretKey.generate(os.urandom) for side in "AB"}
        files = {}
        for side, key in keys.items():
            files[side] = lab.workdir / f"nostr-{side}-{listen_port}.nsec"
            files[side].write_text(key.nsec)
            files[side].chmod(0o600)
        signaling = ["--relay", f"ws://{SRV_IP}:{relay_port}", "--event-kind", NOSTR_KIND]
        echo = start_echo(lab, echo_port)
        relay = Proc("nostr-relay", lab.in_ns("srv", [PYTHON, NOSTR_RELAY, SRV_IP, str(relay_port)]))
        try:
            relay.wait_ready("Nostr relay", 20)
        except BaseException:
            echo.stop()
            raise
        server = Proc("server", lab.in_ns("pB", [*CLI, "server", "nostr", "--nsec-file", str(files["B"]),
                                                 "--peer-npub", keys["A"].public_key.npub, "--allowed-tcp",
                                                 "127.0.0.0/8", *signaling, *ice_args(lab, "B", turn), *extra,
                                                 *server_extra]))
        pair = RunningPair(lab=lab, client=server, server=server, echo=echo, listen_port=listen_port,
                           helpers=[relay], start_pattern=r"Session \S+: requesting")
        try:
            if server.wait_line(r"Waiting for tunnel requests", 20) is None:
                raise RunError("nostr server did not subscribe")
            pair.client = Proc("client", lab.in_ns("pA", [
                *CLI, "client", "nostr", "--nsec-file", str(files["A"]), "--peer-npub", keys["B"].public_key.npub,
                "--source", f"tcp://127.0.0.1:{echo_port}", "--target", f"127.0.0.1:{listen_port}", *signaling,
                *ice_args(lab, "A", turn), *extra, *client_extra]))
            pair.answered_at = time.monotonic()
        except BaseException as exc:
            raise _abort(pair, exc) from None
        return pair


class IrohMode:
    """``tunnel server|client iroh`` with the project's relay (``tunnel relay``) on the lab's public side.

    ``--dns-server none``: no discovery at all, the client finds the server only through the relay URL (the
    server's home relay). Our relay has no QUIC address discovery, so the endpoints never learn their public
    addresses; whether they still move to a direct path is what the suite records (``Connection:`` lines)."""

    name = "iroh"
    turn_variants: tuple[bool, ...] = (False,)
    pairs = ALL_PAIRS if EVERY_PAIR_IN_EVERY_MODE else (*COVERING_PAIRS, ("sym", "sym"))
    connect_from = "client process started"
    #: How long after connecting the suite waits for iroh to report a direct path.
    direct_wait = 8.0
    direct_pattern = r"Connection: (Direct \S+) \(rtt"

    def start(self, lab: Lab, *, turn: bool, listen_port: int = LISTEN_PORT, echo_port: int = ECHO_PORT,
              extra: Sequence[str] = (), client_extra: Sequence[str] = ()) -> RunningPair:
        from tunnel_core.keys import endpoint_id_from_secret, format_endpoint_id, format_secret_key

        relay_port = listen_port + 1000
        relay_url = f"http://{SRV_IP}:{relay_port}"
        ids: dict[str, str] = {}
        files: dict[str, Path] = {}
        for side in "AB":
            secret = os.urandom(32)
            files[side] = lab.workdir / f"iroh-{side}-{listen_port}.key"
            files[side].write_text(format_secret_key(secret))
            files[side].chmod(0o600)
            ids[side] = format_endpoint_id(endpoint_id_from_secret(secret))
        network = ["--relay-url", relay_url, "--dns-server", "none"]
        echo = start_echo(lab, echo_port)
        relay = Proc("iroh-relay", lab.in_ns("srv", [*CLI, "relay", "--bind", f"{SRV_IP}:{relay_port}"]))
        server = Proc("server", lab.in_ns("pB", [*CLI, "server", "iroh", "--secret-file", str(files["B"]),
                                                 "--allowed-tcp", "127.0.0.0/8", "--allowed-clients", ids["A"],
                                                 *network, *extra]))
        pair = RunningPair(lab=lab, client=server, server=server, echo=echo, listen_port=listen_port,
                           helpers=[relay], listening=r"Listening on TCP ",
                           path_pattern=r"Connection: ((?:Relay|Direct) \S+?)/? \(rtt")
        try:
            if relay.wait_line(r"(?i)relay listening on", 20) is None:
                raise RunError(f"tunnel relay did not start\n{relay.stderr}")
            if server.wait_line(r"Listening on", 30) is None:
                raise RunError("iroh server did not start")
            pair.client = Proc("client", lab.in_ns("pA", [
                *CLI, "client", "iroh", "--secret-file", str(files["A"]), "-n", ids["B"], "-s",
                f"tcp://127.0.0.1:{echo_port}", "-t", f"127.0.0.1:{listen_port}", *network, *extra,
                *client_extra]))
            pair.answered_at = pair.client.started_at
        except BaseException as exc:
            raise _abort(pair, exc) from None
        return pair


Mode = ManualMode | NostrMode | IrohMode

#: Every mode the suite runs.
MODES: dict[str, Mode] = {"manual": ManualMode(), "nostr": NostrMode(), "iroh": IrohMode()}
