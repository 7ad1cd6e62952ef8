"""`python -m tunnel_cli.demo`: a self-contained manual-mode tunnel on this machine, no internet needed.

It starts a local TCP service, a `tunnel server manual` and a `tunnel client manual` (both real processes, wired
together through pipes exactly as a person would copy and paste the blocks), pushes data through the tunnel, checks
it arrived intact and prints the connection type and the throughput. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO

CLI = [sys.executable, "-m", "tunnel_asyncio.cli"]
WAIT = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Service(threading.Thread):
    """The service behind the tunnel: for each connection, read until EOF, answer with the SHA-256 of what came."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = int(self.sock.getsockname()[1])

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                digest = hashlib.sha256()
                while chunk := conn.recv(1 << 20):
                    digest.update(chunk)
                conn.sendall(digest.hexdigest().encode())


class _Lines(threading.Thread):
    """Collect a process's stderr lines, echoing them with a prefix so the user sees both sides' logs."""

    def __init__(self, stream: IO[str], prefix: str) -> None:
        super().__init__(daemon=True)
        self.stream, self.prefix, self.lines = stream, prefix, []  # type: ignore[var-annotated]
        self.start()

    def run(self) -> None:
        for line in self.stream:
            self.lines.append(line.rstrip("\n"))
            print(f"  {self.prefix} | {line.rstrip()}", flush=True)

    def wait_for(self, pattern: str, deadline: float) -> re.Match[str] | None:
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = rx.search(line)
                if m:
                    return m
            time.sleep(0.05)
        return None


def _read_block(stream: IO[str], deadline: float) -> str:
    lines = []
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("-----END"):
            return "".join(lines)
    raise SystemExit("demo: no block arrived from the tunnel process")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tunnel_cli.demo", description=__doc__)
    ap.add_argument("--megabytes", type=int, default=64, help="how much data to push through (default 64)")
    args = ap.parse_args(argv)

    service = _Service()
    service.start()
    target = _free_port()
    common = ["--no-stun", "--host-candidate", "127.0.0.1"]
    print(f"demo: local service on 127.0.0.1:{service.port}; the tunnel will expose it on 127.0.0.1:{target}")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    server = subprocess.Popen([*CLI, "server", "manual", "--allowed-tcp", "127.0.0.0/8", *common],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env)
    client = subprocess.Popen([*CLI, "client", "manual", "--source", f"tcp://127.0.0.1:{service.port}",
                               "--target", f"127.0.0.1:{target}", *common],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env)
    _Lines(server.stderr, "server")  # type: ignore[arg-type]
    client_log = _Lines(client.stderr, "client")  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + WAIT
        offer = _read_block(client.stdout, deadline)  # type: ignore[arg-type]
        print("demo: client printed its OFFER; pasting it into the server")
        server.stdin.write(offer)  # type: ignore[union-attr]
        server.stdin.flush()  # type: ignore[union-attr]
        answer = _read_block(server.stdout, deadline)  # type: ignore[arg-type]
        print("demo: server printed its ANSWER; pasting it into the client")
        client.stdin.write(answer)  # type: ignore[union-attr]
        client.stdin.flush()  # type: ignore[union-attr]
        if client_log.wait_for(r"Listening on TCP", deadline) is None:
            print("demo: FAILED - the tunnel did not come up", file=sys.stderr)
            return 1
        kind = client_log.wait_for(r"Connection: (.*)", deadline)

        payload = os.urandom(1 << 20)
        total = args.megabytes << 20
        expected = hashlib.sha256()
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", target), timeout=60) as conn:
            sent = 0
            while sent < total:
                conn.sendall(payload)
                expected.update(payload)
                sent += len(payload)
            conn.shutdown(socket.SHUT_WR)  # half-close: the service answers after our EOF
            reply = b""
            while chunk := conn.recv(4096):
                reply += chunk
        elapsed = time.monotonic() - start
        ok = reply.decode() == expected.hexdigest()
        print()
        print(f"demo: connection type : {kind.group(1) if kind else 'unknown'}")
        print(f"demo: transferred     : {args.megabytes} MiB through the tunnel in {elapsed:.2f} s "
              f"= {args.megabytes / elapsed:.1f} MiB/s")
        print(f"demo: integrity       : sha256 {'matches' if ok else 'DOES NOT MATCH'}")
        return 0 if ok else 1
    finally:
        for proc in (client, server):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in (client, server):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        service.sock.close()


if __name__ == "__main__":
    sys.exit(main())
