"""Small programs the NAT suite runs *inside* lab namespaces (the test process itself stays in the host namespace).

    python probe.py echo PORT            TCP echo server on 127.0.0.1:PORT; prints "ready"; runs until killed
    python probe.py transfer PORT BYTES  connect to 127.0.0.1:PORT, stream BYTES of seeded data while reading the
                                         echo back; prints one JSON line {"ok", "bytes", "seconds", "error"};
                                         with ``--socks TARGET``, PORT is a SOCKS5 listener and the transfer goes
                                         through a CONNECT to 127.0.0.1:TARGET
    python probe.py bindable PORT        exit 0 when 127.0.0.1:PORT can be bound for TCP (the port is released)

Every wait is bounded (``--timeout``); transfer prints "started" once the first echoed bytes are back, so a test can
kill the far side mid-transfer; with ``--progress`` it also prints "progress BYTES MONOTONIC" each 256 KiB echoed
back (the outage tests time the resume after a cut from these).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import socket
import sys
import threading
import time

CHUNK = 64 * 1024
PROGRESS_STEP = 256 * 1024


def echo(port: int) -> int:
    server = socket.create_server(("127.0.0.1", port), reuse_port=False)
    print("ready", flush=True)

    def serve(conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(CHUNK)
                except OSError:
                    return
                if not data:
                    return
                try:
                    conn.sendall(data)
                except OSError:
                    return

    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def socks5_connect(sock: socket.socket, port: int) -> None:
    """RFC 1928, no authentication: CONNECT to 127.0.0.1:``port``; OSError unless the proxy answers success."""
    sock.sendall(b"\x05\x01\x00")
    if _read_exactly(sock, 2) != b"\x05\x00":
        raise ConnectionError("SOCKS5: no-authentication refused")
    sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + port.to_bytes(2, "big"))
    head = _read_exactly(sock, 4)
    if head[1] != 0:
        raise ConnectionError(f"SOCKS5: CONNECT failed with reply {head[1]}")
    size = {1: 4, 4: 16}.get(head[3]) or _read_exactly(sock, 1)[0]
    _read_exactly(sock, size + 2)


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("SOCKS5: the proxy closed the connection")
        data += chunk
    return data


def transfer(port: int, total: int, timeout: float, progress: bool = False, socks: int | None = None) -> int:
    start = time.monotonic()
    rng = random.Random(7)
    sent_hash = hashlib.sha256()
    recv_hash = hashlib.sha256()
    received = 0
    error = ""
    started = threading.Event()
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        sock.settimeout(timeout)
        if socks is not None:
            socks5_connect(sock, socks)

        def writer() -> None:
            left = total
            try:
                while left > 0:
                    n = min(CHUNK, left)
                    block = rng.randbytes(n)
                    sent_hash.update(block)
                    sock.sendall(block)
                    left -= n
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        while received < total:
            data = sock.recv(CHUNK)
            if not data:
                break
            if not started.is_set():
                started.set()
                print("started", flush=True)
            recv_hash.update(data)
            before, received = received, received + len(data)
            if progress and before // PROGRESS_STEP != received // PROGRESS_STEP:
                print(f"progress {received} {time.monotonic():.3f}", flush=True)
            if time.monotonic() - start > timeout:
                raise TimeoutError("transfer took too long")
        thread.join(timeout=5)
        sock.close()
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    ok = not error and received == total and recv_hash.digest() == sent_hash.digest()
    if not error and not ok:
        error = f"received {received} of {total} bytes" if received != total else "echoed data differs"
    print(json.dumps({"ok": ok, "bytes": received, "seconds": round(time.monotonic() - start, 3), "error": error}),
          flush=True)
    return 0 if ok else 1


def bindable(port: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return 1
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["echo", "transfer", "bindable"])
    parser.add_argument("port", type=int)
    parser.add_argument("bytes", type=int, nargs="?", default=0)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--socks", type=int, default=None, metavar="TARGET")
    args = parser.parse_args(argv)
    if args.command == "echo":
        return echo(args.port)
    if args.command == "transfer":
        return transfer(args.port, args.bytes, args.timeout, args.progress, args.socks)
    return bindable(args.port)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
