"""A one-way transfer for the outage tests, run as a program in a lab namespace: ``serve PORT BYTES`` sends BYTES
of a deterministic stream to the first connection and closes it; ``fetch PORT BYTES`` reads them, printing
``progress N T`` lines (bytes so far, monotonic time) and then one JSON verdict (whether every byte arrived and
matched). Why not the echo probe: an echo keeps data flowing towards the server too, and what is tested here is a
connection whose data flows only towards the client."""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import time

CHUNK = 64 * 1024
PROGRESS_EVERY = 256 * 1024


def block(index: int) -> bytes:
    """The stream's ``index``-th 64 KiB: its content depends on its position, so a lost or repeated block shows."""
    seed = hashlib.sha256(index.to_bytes(8, "big")).digest()
    return (seed * (CHUNK // len(seed) + 1))[:CHUNK]


def expected(total: int) -> str:
    digest = hashlib.sha256()
    for index in range((total + CHUNK - 1) // CHUNK):
        digest.update(block(index)[: min(CHUNK, total - index * CHUNK)])
    return digest.hexdigest()


def serve(port: int, total: int) -> None:
    with socket.create_server(("127.0.0.1", port)) as server:
        print("ready", flush=True)
        conn, _ = server.accept()
        with conn:
            for index in range((total + CHUNK - 1) // CHUNK):
                conn.sendall(block(index)[: min(CHUNK, total - index * CHUNK)])
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)  # until the client closes


def fetch(port: int, total: int, timeout: float) -> None:
    started = time.monotonic()
    digest = hashlib.sha256()
    received = 0
    shown = 0
    error = ""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            while True:
                data = conn.recv(CHUNK)
                if not data:
                    break
                digest.update(data)
                received += len(data)
                if received - shown >= PROGRESS_EVERY:
                    shown = received
                    print(f"progress {received} {time.monotonic():.3f}", flush=True)
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    ok = received == total and digest.hexdigest() == expected(total)
    print(f"progress {received} {time.monotonic():.3f}", flush=True)
    print(json.dumps({"ok": ok, "bytes": received, "seconds": round(time.monotonic() - started, 3),
                      "error": error}), flush=True)


def main() -> None:
    command, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if command == "serve":
        serve(port, total)
    else:
        fetch(port, total, float(sys.argv[4]) if len(sys.argv) > 4 else 300.0)


if __name__ == "__main__":
    main()
