"""Starting ``tunnel server|client iroh`` processes for the e2e tests, offline on 127.0.0.1 only.

Every process gets ``--no-relay --dns-server none --bind-addr 127.0.0.1:0``: nothing may leave the machine, so
iroh must not contact n0's relays or discovery, and clients dial the server's logged address directly.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from tunnel_core.keys import endpoint_id_from_secret, format_endpoint_id, format_secret_key

OFFLINE = ("--no-relay", "--dns-server", "none", "--bind-addr", "127.0.0.1:0")


def echo_through(port: int, payload: bytes) -> bytes:
    """Send ``payload`` to a tunnel's local port, half-close, and return everything that came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def make_key(directory: Path, name: str, seed: int) -> tuple[Path, str]:
    """A key file with a reproducible secret, and its EndpointId in hex."""
    secret = bytes((seed * 37 + i) % 256 for i in range(32))
    path = directory / name
    path.write_text(format_secret_key(secret))
    path.chmod(0o600)  # a secret file, as the key tools write it
    return path, format_endpoint_id(endpoint_id_from_secret(secret))


class Proc:
    """A CLI process whose stderr is collected on a thread, so tests can wait for log lines."""

    def __init__(self, *args: str, wrapper: Sequence[str] = (), env: Mapping[str, str] | None = None) -> None:
        """``wrapper``: an argv prefix (e.g. a private /etc/hosts); ``env``: extra environment variables."""
        env = {**os.environ, "TUNNEL_LOG": "info", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "tunnel_asyncio.cli", *args], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._lock:
                self._lines.append(raw.decode(errors="replace"))

    @property
    def stderr(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def wait_for(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.stderr)
            if match:
                return match
            if self.proc.poll() is not None:
                time.sleep(0.1)
                match = re.search(pattern, self.stderr)
                if match:
                    return match
                raise AssertionError(f"exited {self.proc.returncode} before {pattern!r}:\n{self.stderr}")
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {pattern!r}:\n{self.stderr}")

    def wait_exit(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._thread.join(2)
        return self.proc.returncode

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class IrohServerProc(Proc):
    def __init__(
        self, key: Path, *args: str, wrapper: Sequence[str] = (), env: Mapping[str, str] | None = None
    ) -> None:
        super().__init__("server", "iroh", "--secret-file", str(key), *OFFLINE, *args, wrapper=wrapper, env=env)
        self.addr = self.wait_for(r"Listening on (127\.0\.0\.1:\d+)").group(1)
        self.node_id = self.wait_for(r"Server EndpointId: ([0-9a-f]{64})").group(1)


class IrohClientProc(Proc):
    def __init__(self, server: IrohServerProc, key: Path | None, source: str, target: str = "127.0.0.1:0",
                 *, wait: bool = True, extra: tuple[str, ...] = ()) -> None:
        identity = ("--secret-file", str(key)) if key is not None else ()
        super().__init__("client", "iroh", "-n", server.node_id, "-s", source, "-t", target,
                         "--server-addr", server.addr, *identity, *OFFLINE, *extra)
        self.port = 0
        if wait:
            self.port = int(self.wait_for(r"Listening on (?:TCP|UDP) 127\.0\.0\.1:(\d+)").group(1))
