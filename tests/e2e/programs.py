"""Real programs (sshd, iperf3, dnsmasq, socat, ssh -L) and small Python servers for end-to-end tests.

Everything binds to 127.0.0.1 only: tests may not send a single packet off the machine. Every wait is bounded
and every started process is stopped (SIGTERM, then SIGKILL) by the context manager that started it, so a
failing test never leaves a daemon holding a port for the next one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

import attrs

LOOPBACK = "127.0.0.1"


class ProgramError(RuntimeError):
    """A helper program did not start or did not answer in time; the message carries its output."""


# --------------------------------------------------------------------------------------------- ports


def free_port(*, tcp: bool = True, udp: bool = False) -> int:
    """A port on 127.0.0.1 that is free for the requested protocols right now.

    Picked below the kernel's ephemeral range: a port the kernel hands out for ``bind(0)`` can also be handed to
    any process's next outgoing connection (a tunnel's relay WebSocket, say) before the test's process binds it,
    which made listeners fail with "address already in use" once in a while. Asking for both TCP and UDP matters
    when one local port must carry both (iperf3 UDP uses a TCP control connection on the same port number).
    """
    low, high = _port_pool()
    for _ in range(200):
        port = _PORTS.randrange(low, high)
        if tcp and not _port_free(port, socket.SOCK_STREAM):
            continue
        if udp and not _port_free(port, socket.SOCK_DGRAM):
            continue
        return port
    raise ProgramError("no free port found on 127.0.0.1")


_PORTS = random.Random()


def _port_pool() -> tuple[int, int]:
    """[low, high) of ports the kernel never picks by itself: the span below ip_local_port_range."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    if ephemeral_low > 12000:
        return max(10000, ephemeral_low - 12000), ephemeral_low
    return 61000, 65535  # an unusual configuration: the range above the common ephemeral span


def _port_free(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def wait_tcp_listening(port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll until something accepts on 127.0.0.1:port; a probe connection is closed at once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ProgramError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            try:
                sock.connect((LOOPBACK, port))
                return
            except OSError:
                pass
        time.sleep(0.05)
    raise ProgramError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


# ------------------------------------------------------------------------------------------ processes


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
    """SIGTERM, wait, then SIGKILL; returns the exit status (negative = signal)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=timeout)
    return proc.returncode


class _Background:
    """A long-running program whose output is collected in files (so pipes never fill up and block it)."""

    name = "program"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_path = workdir / f"{self.name}-{id(self)}.log"

    def _spawn(self, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self._log_path, "wb") as log:
            self.proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        return self.proc

    def _listening(self, port: int) -> None:
        """Wait until the spawned program accepts on ``port``; stopped and ProgramError (with its output) if not."""
        try:
            wait_tcp_listening(port, proc=self.proc)
        except ProgramError as exc:
            self.stop()
            raise ProgramError(f"{self.name} did not start: {exc}\n{self.output()}") from exc

    def output(self) -> str:
        try:
            return self._log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        return stop_process(self.proc)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# ----------------------------------------------------------------------------------------------- sshd


class Sshd(_Background):
    """An sshd on 127.0.0.1 accepting root by one generated key only, with every file in ``workdir``."""

    name = "sshd"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        super().__init__(workdir)
        self.port = port or free_port()
        self.host_key = workdir / "ssh_host_ed25519_key"
        self.user_key = workdir / "id_ed25519"
        self.config = workdir / "sshd_config"

    def __enter__(self) -> Sshd:
        self._spawn(self.prepare())
        self._listening(self.port)
        return self

    def prepare(self) -> list[str]:
        """Keys and config in ``workdir``; the sshd command line (also for running it in a namespace)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation directory
        for key in (self.host_key, self.user_key):
            if not key.exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                    check=True,
                    timeout=30,
                    stdin=subprocess.DEVNULL,
                )
        authorized = self.workdir / "authorized_keys"
        authorized.write_text(Path(f"{self.user_key}.pub").read_text())
        self.config.write_text(
            "\n".join(
                [
                    f"ListenAddress {LOOPBACK}",
                    f"HostKey {self.host_key}",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    f"AuthorizedKeysFile {authorized}",
                    "StrictModes no",
                    "UsePAM no",
                    f"PidFile {self.workdir / 'sshd.pid'}",
                    "AllowTcpForwarding yes",
                    "X11Forwarding no",
                    "PrintMotd no",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        return ["/usr/sbin/sshd", "-D", "-e", "-f", str(self.config), "-p", str(self.port)]

    def ssh_base(self, port: int) -> list[str]:
        """ssh options for a non-interactive key login to root@127.0.0.1:port (no known_hosts, no agent)."""
        return [
            "ssh",
            "-p",
            str(port),
            "-i",
            str(self.user_key),
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
        ]

    def run(self, port: int, *command: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``command`` over ssh to 127.0.0.1:port (the sshd itself, or a tunnel in front of it)."""
        return subprocess.run(
            [*self.ssh_base(port), f"root@{LOOPBACK}", *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def forward(self, local_port: int, target_port: int) -> SshForward:
        """An ``ssh -L local_port:127.0.0.1:target_port`` through this sshd (the benchmark's baseline)."""
        return SshForward(self, local_port, target_port)


class SshForward(_Background):
    """``ssh -N -L`` to the local sshd: the classic way to forward a port, used as a baseline."""

    name = "ssh-L"

    def __init__(self, sshd: Sshd, local_port: int, target_port: int) -> None:
        super().__init__(sshd.workdir)
        self.sshd = sshd
        self.local_port = local_port
        self.target_port = target_port

    def __enter__(self) -> SshForward:
        argv = [
            *self.sshd.ssh_base(self.sshd.port),
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            f"{LOOPBACK}:{self.local_port}:{LOOPBACK}:{self.target_port}",
            f"root@{LOOPBACK}",
        ]
        self._spawn(argv)
        self._listening(self.local_port)
        return self


# ---------------------------------------------------------------------------------------------- socat


class SocatRelay(_Background):
    """A plain TCP relay (socat, one fork per connection): the cost of a user-space hop without crypto."""

    name = "socat"

    def __init__(self, workdir: Path, local_port: int, target_port: int) -> None:
        super().__init__(workdir)
        self.local_port = local_port
        self.target_port = target_port

    def __enter__(self) -> SocatRelay:
        self._spawn(
            [
                "socat",
                f"TCP-LISTEN:{self.local_port},bind={LOOPBACK},reuseaddr,fork",
                f"TCP:{LOOPBACK}:{self.target_port},nodelay",
            ]
        )
        self._listening(self.local_port)
        return self


# --------------------------------------------------------------------------------------------- iperf3


class Iperf3Server(_Background):
    """``iperf3 -s``; with ``one_off`` (-1) it serves exactly one test and then exits by itself."""

    name = "iperf3-server"

    def __init__(self, workdir: Path, port: int | None = None, *, one_off: bool = True) -> None:
        super().__init__(workdir)
        self.port = port or free_port(tcp=True, udp=True)
        self.one_off = one_off

    def __enter__(self) -> Iperf3Server:
        argv = ["iperf3", "-s", "-B", LOOPBACK, "-p", str(self.port), "--forceflush"]
        proc = self._spawn([*argv, "-1"] if self.one_off else argv)
        # Not a TCP probe: with -1 a probe connection could count as the one test iperf3 serves.
        deadline = time.monotonic() + 10.0
        while "Server listening" not in self.output():
            if proc.poll() is not None or time.monotonic() > deadline:
                out = self.output()
                self.stop()
                raise ProgramError(f"iperf3 server did not start:\n{out}")
            time.sleep(0.05)
        return self


@attrs.frozen
class Iperf3Result:
    """The numbers a test or the benchmark needs from iperf3's JSON report."""

    bits_per_second: float  # as seen by the receiver
    bytes: int
    lost_percent: float  # UDP only; 0.0 for TCP
    raw: dict  # the whole report, for failure messages

    @property
    def mib_per_second(self) -> float:
        return self.bits_per_second / 8 / (1024 * 1024)


def run_iperf3_client(
    port: int,
    *,
    seconds: float = 3,
    udp: bool = False,
    bitrate: str = "50M",
    reverse: bool = False,
    length: int | None = None,
    timeout: float | None = None,
) -> Iperf3Result:
    """Run one iperf3 test against 127.0.0.1:port and parse its JSON report."""
    argv = ["iperf3", "-c", LOOPBACK, "-p", str(port), "-t", str(seconds), "-J", "--connect-timeout", "5000"]
    if udp:
        argv += ["-u", "-b", bitrate]
    if reverse:
        argv.append("-R")
    if length is not None:
        argv += ["-l", str(length)]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout or seconds + 30, stdin=subprocess.DEVNULL
    )
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        raise ProgramError(
            f"iperf3 gave no JSON (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
        ) from exc
    if "error" in report:
        raise ProgramError(f"iperf3 failed: {report['error']}")
    end = report["end"]
    if udp:
        summary = end["sum"]
        return Iperf3Result(
            bits_per_second=float(summary["bits_per_second"]),
            bytes=int(summary["bytes"]),
            lost_percent=float(summary.get("lost_percent", 0.0)),
            raw=report,
        )
    summary = end["sum_received"]
    return Iperf3Result(
        bits_per_second=float(summary["bits_per_second"]),
        bytes=int(summary["bytes"]),
        lost_percent=0.0,
        raw=report,
    )


# -------------------------------------------------------------------------------------------- dnsmasq


class Dnsmasq(_Background):
    """A DNS server answering ``tunnel.test`` with a fixed address and nothing else (no upstream resolvers)."""

    name = "dnsmasq"

    def __init__(
        self, workdir: Path, port: int | None = None, name: str = "tunnel.test", address: str = "10.9.8.7"
    ) -> None:
        super().__init__(workdir)
        self.port = port or free_port(tcp=True, udp=True)
        self.record_name = name
        self.record_address = address

    def __enter__(self) -> Dnsmasq:
        proc = self._spawn(
            [
                shutil.which("dnsmasq") or "/usr/sbin/dnsmasq",
                "--no-resolv",
                "--no-hosts",
                "--keep-in-foreground",
                f"--address=/{self.record_name}/{self.record_address}",
                "--port",
                str(self.port),
                "--listen-address",
                LOOPBACK,
                "--bind-interfaces",
                "--pid-file",
                "--user=root",
                "--conf-file=/dev/null",
                "--log-facility=-",
            ]
        )
        deadline = time.monotonic() + 10.0
        while True:
            if proc.poll() is not None:
                raise ProgramError(f"dnsmasq exited with {proc.returncode}:\n{self.output()}")
            try:
                if dig(self.port, self.record_name, timeout=1.0) == self.record_address:
                    return self
            except (ProgramError, subprocess.TimeoutExpired):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ProgramError(f"dnsmasq did not answer:\n{self.output()}")
            time.sleep(0.1)


def dig(port: int, name: str, *, timeout: float = 2.0, tries: int = 1) -> str:
    """``dig @127.0.0.1 -p port name +short`` (UDP); returns the stripped answer text."""
    done = subprocess.run(
        [
            "dig",
            f"@{LOOPBACK}",
            "-p",
            str(port),
            name,
            "+short",
            f"+time={max(1, int(timeout))}",
            f"+tries={tries}",
            "+notcp",
        ],
        capture_output=True,
        text=True,
        timeout=timeout * tries + 10,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise ProgramError(f"dig failed ({done.returncode}): {done.stdout}{done.stderr}")
    return done.stdout.strip()


# ------------------------------------------------------------------------------------ Python servers


class _ThreadedServer:
    """Base for small servers whose handlers run in daemon threads; closing the listener stops accepting."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self.port = 0

    def _start(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        self._closed.set()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _TcpServer(_ThreadedServer):
    def __enter__(self) -> _TcpServer:
        self._listener = socket.create_server((LOOPBACK, 0), backlog=128)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._start(self._accept_loop)
        return self

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(60.0)
            self._start(lambda conn=conn: self._serve_guarded(conn))
        self._listener.close()

    def _serve_guarded(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self.serve(conn)

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError


class TcpEchoServer(_TcpServer):
    """Echoes every byte back; half-closes after the peer's EOF."""

    def __enter__(self) -> TcpEchoServer:
        super().__enter__()
        return self

    def serve(self, conn: socket.socket) -> None:
        while data := conn.recv(65536):
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)


class TcpSinkServer(_TcpServer):
    """Reads until EOF, then answers ``<byte count> <sha256 hex>\\n`` and closes.

    The answer can only arrive if the tunnel carries a half-close (EOF) from client to server and still lets
    the reply through: exactly what a file upload over the tunnel needs.
    """

    def __enter__(self) -> TcpSinkServer:
        super().__enter__()
        return self

    def serve(self, conn: socket.socket) -> None:
        digest = hashlib.sha256()
        count = 0
        while data := conn.recv(262144):
            digest.update(data)
            count += len(data)
        conn.sendall(f"{count} {digest.hexdigest()}\n".encode())
        conn.shutdown(socket.SHUT_WR)


class TcpSourceServer(_TcpServer):
    """Sends ``payload`` to every connection, then closes (the download direction)."""

    def __init__(self, payload: bytes) -> None:
        super().__init__()
        self.payload = payload

    def __enter__(self) -> TcpSourceServer:
        super().__enter__()
        return self

    def serve(self, conn: socket.socket) -> None:
        view = memoryview(self.payload)
        for offset in range(0, len(view), 1 << 20):
            conn.sendall(view[offset : offset + (1 << 20)])
        conn.shutdown(socket.SHUT_WR)
        # Wait for the peer to close so our FIN is not turned into a reset by unread data.
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass


class UdpEchoServer(_ThreadedServer):
    """Answers each datagram with ``prefix + data`` to its sender (one socket, any number of peers)."""

    def __init__(self, prefix: bytes = b"") -> None:
        super().__init__()
        self.prefix = prefix
        self.peers: set[tuple[str, int]] = set()

    def __enter__(self) -> UdpEchoServer:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((LOOPBACK, 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._start(self._loop)
        return self

    def _loop(self) -> None:
        with self._sock:
            while not self._closed.is_set():
                try:
                    data, peer = self._sock.recvfrom(65535)
                except TimeoutError:
                    continue
                except OSError:
                    return
                self.peers.add(peer)
                with contextlib.suppress(OSError):
                    self._sock.sendto(self.prefix + data, peer)


# --------------------------------------------------------------------------------------- client sides


def tcp_transfer_upload(port: int, payload: bytes, timeout: float = 120.0) -> tuple[int, str]:
    """Send ``payload`` to a TcpSinkServer (through whatever listens on port); returns its (count, sha256)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        view = memoryview(payload)
        for offset in range(0, len(view), 1 << 20):
            sock.sendall(view[offset : offset + (1 << 20)])
        sock.shutdown(socket.SHUT_WR)
        answer = recv_all(sock)
    count, digest = answer.decode().split()
    return int(count), digest


def recv_all(sock: socket.socket, limit: int = 1 << 31) -> bytes:
    """Read until EOF (bounded by the socket timeout and ``limit``)."""
    chunks = []
    total = 0
    while total < limit:
        data = sock.recv(1 << 20)
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


def tcp_download_digest(port: int, timeout: float = 120.0) -> tuple[int, str]:
    """Read everything a TcpSourceServer sends; returns (count, sha256) without keeping the bytes."""
    digest = hashlib.sha256()
    count = 0
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        while data := sock.recv(1 << 20):
            digest.update(data)
            count += len(data)
    return count, digest.hexdigest()


def tcp_ping_pong(port: int, rounds: int, *, timeout: float = 10.0) -> list[float]:
    """1-byte request/response round trips on one connection to an echo server; returns each RTT in seconds."""
    rtts: list[float] = []
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Warm-up: the first exchange through a tunnel opens its stream; it is not a latency sample.
        sock.sendall(b"w")
        if sock.recv(1) != b"w":
            raise ProgramError("echo warm-up failed")
        for _ in range(rounds):
            start = time.perf_counter()
            sock.sendall(b"x")
            if sock.recv(1) != b"x":
                raise ProgramError("echo returned wrong byte or EOF")
            rtts.append(time.perf_counter() - start)
    return rtts


def udp_exchange(
    sock: socket.socket,
    address: tuple[str, int],
    data: bytes,
    *,
    timeout: float = 10.0,
    resend_every: float = 0.5,
) -> bytes:
    """Send ``data`` and return the first reply, resending (bounded) while none comes.

    Resending covers the first datagram racing the tunnel's flow setup; callers still check what came back.
    """
    deadline = time.monotonic() + timeout
    sock.settimeout(resend_every)
    while time.monotonic() < deadline:
        sock.sendto(data, address)
        try:
            reply, _ = sock.recvfrom(65535)
            return reply
        except TimeoutError:
            continue
    raise ProgramError(f"no UDP reply from {address} within {timeout} s")


@contextlib.contextmanager
def udp_socket() -> Iterator[socket.socket]:
    """A UDP socket bound to an ephemeral 127.0.0.1 port (so it can only ever talk to loopback)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((LOOPBACK, 0))
        yield sock
    finally:
        sock.close()


def deterministic_bytes(size: int, seed: int = 1) -> bytes:
    """Incompressible but reproducible test data (so a failure can be replayed)."""
    import random

    return random.Random(seed).randbytes(size)
