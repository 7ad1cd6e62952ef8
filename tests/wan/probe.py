"""Small programs the WAN lab runs *inside* its namespaces (services, and measuring clients that print one JSON line).

    python probe.py tcp-echo HOST PORT              threaded TCP echo; prints "ready"; runs until killed (a
                                                    connection that starts with SINK\n is read and discarded)
    python probe.py udp-echo HOST PORT              UDP echo; prints "ready"; runs until killed
    python probe.py rr HOST PORT --rate R --seconds S [--size 64]
        one TCP connection; a request of SIZE bytes every 1/R s (never two outstanding), the response read back in
        full; prints {"n", "p50_ms", "p99_ms", "error"}
    python probe.py udp-rr HOST PORT --rate R --seconds S [--size 64]
        a datagram every 1/R s, each with its sequence number and a pattern derived from it; replies checked
        byte for byte; prints {"sent", "received", "corrupt", "p50_ms", "p99_ms"}
    python probe.py first-byte HOST PORT --timeout T
        connect + 1 byte + its echo, retried every 20 ms until it works; prints {"ok", "t0", "at"}: wall clock times
        of the first attempt and of the echo, so the caller can subtract when it started a forwarder elsewhere
    python probe.py tcp-hash HOST PORT              TCP service: reads to EOF, answers the SHA-256 hex of what came
    python probe.py send HOST PORT --count BYTES [--timeout S]
        streams BYTES of seeded data, half-closes, reads the service's SHA-256; prints {"ok", "sha256", "seconds"}
    python probe.py bulk HOST PORT --seconds S      SINK\n + data as fast as the path takes it for S s (the
                                                    load of the "under bulk" round trips); prints {"mbit"}
    python probe.py udp-blast HOST PORT --count N --size S --rate R   send N datagrams (for the link's own tests)
    python probe.py udp-sink HOST PORT --seconds S     count datagrams for S s after the first; prints JSON

Every wait is bounded (rates, counts and ``--seconds``/``--timeout``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import socket
import struct
import sys
import threading
import time

HEADER = struct.Struct("!Id")  # sequence number, send time
SINK = b"SINK\n"


def pattern(seq: int, size: int) -> bytes:
    """Payload of datagram ``seq``: header-sized prefix left to the caller, the rest a function of seq."""
    unit = bytes((seq * 7 + i) & 0xFF for i in range(251))
    body = unit * (size // len(unit) + 1)
    return body[: max(0, size - HEADER.size)]


def percentile(samples: list[float], fraction: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def tcp_echo(host: str, port: int) -> int:
    server = socket.create_server((host, port))
    print("ready", flush=True)

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            first = True
            while True:
                try:
                    data = conn.recv(65536)
                    if not data:
                        return
                    if first and data.startswith(SINK):
                        while conn.recv(1 << 20):
                            pass
                        return
                    first = False
                    conn.sendall(data)
                except OSError:
                    return

    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def tcp_hash(host: str, port: int) -> int:
    server = socket.create_server((host, port))
    print("ready", flush=True)

    def serve(conn: socket.socket) -> None:
        digest = hashlib.sha256()
        with conn:
            try:
                while data := conn.recv(65536):
                    digest.update(data)
                conn.sendall(digest.hexdigest().encode())
            except OSError:
                return

    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def send(host: str, port: int, total: int, timeout: float) -> dict[str, object]:
    """Seeded data out, the far end's digest back: intact means the two SHA-256 agree."""
    rng = random.Random(11)
    digest = hashlib.sha256()
    start = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            left = total
            while left:
                chunk = rng.randbytes(min(65536, left))
                digest.update(chunk)
                sock.sendall(chunk)
                left -= len(chunk)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(64):
                answer += chunk
    except OSError as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "seconds": time.monotonic() - start}
    return {"ok": answer.decode() == digest.hexdigest(), "sha256": digest.hexdigest(), "far": answer.decode(),
            "seconds": round(time.monotonic() - start, 3)}


def bulk(host: str, port: int, seconds: float) -> dict[str, object]:
    """Load for the "under bulk" measurement: it crosses the same forwarder as the round trips it disturbs."""
    block = random.Random(5).randbytes(1 << 16)
    sent = 0
    start = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=15) as sock:
            sock.settimeout(15)
            sock.sendall(SINK)
            while time.monotonic() - start < seconds:
                sock.sendall(block)
                sent += len(block)
    except OSError as exc:
        return {"mbit": None, "error": f"{type(exc).__name__}: {exc}"}
    return {"mbit": round(sent * 8 / 1e6 / max(1e-3, time.monotonic() - start), 1)}


def udp_echo(host: str, port: int) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    print("ready", flush=True)
    while True:
        data, peer = sock.recvfrom(65536)
        sock.sendto(data, peer)


def rr(host: str, port: int, rate: float, seconds: float, size: int) -> dict[str, object]:
    rtts: list[float] = []
    error = ""
    period = 1.0 / rate
    deadline = time.monotonic() + seconds
    try:
        sock = socket.create_connection((host, port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(30)  # a bloated queue on a 600 ms path can hold a response back for seconds
        request = b"r" * size
        next_send = time.monotonic()
        while next_send < deadline:
            time.sleep(max(0.0, next_send - time.monotonic()))
            start = time.monotonic()
            sock.sendall(request)
            got = 0
            while got < size:
                chunk = sock.recv(size - got)
                if not chunk:
                    raise ConnectionError("closed by the far end")
                got += len(chunk)
            rtts.append((time.monotonic() - start) * 1e3)
            next_send = max(next_send + period, time.monotonic())
        sock.close()
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    return {"n": len(rtts), "p50_ms": percentile(rtts, 0.5), "p99_ms": percentile(rtts, 0.99), "error": error}


def udp_rr(host: str, port: int, rate: float, seconds: float, size: int) -> dict[str, object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, port))
    sent: dict[int, float] = {}
    rtts: list[float] = []
    counts = {"received": 0, "corrupt": 0, "duplicate": 0}
    done = threading.Event()

    def receive() -> None:
        sock.settimeout(0.2)
        seen: set[int] = set()
        while not done.is_set():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                continue  # ICMP port unreachable while the forwarder starts: keep listening
            now = time.monotonic()
            if len(data) != size or len(data) < HEADER.size:
                counts["corrupt"] += 1
                continue
            seq, _ = HEADER.unpack_from(data)
            if seq not in sent or data[HEADER.size:] != pattern(seq, size):
                counts["corrupt"] += 1
            elif seq in seen:
                counts["duplicate"] += 1
            else:
                seen.add(seq)
                counts["received"] += 1
                rtts.append((now - sent[seq]) * 1e3)

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    period = 1.0 / rate
    start = time.monotonic()
    n = int(seconds * rate)
    for seq in range(n):
        time.sleep(max(0.0, start + seq * period - time.monotonic()))
        sent[seq] = time.monotonic()
        try:
            sock.send(HEADER.pack(seq, sent[seq]) + pattern(seq, size))
        except OSError:
            pass
    time.sleep(2.0)  # stragglers: well above any profile's round trip
    done.set()
    thread.join(1.0)
    return {"sent": n, **counts, "p50_ms": percentile(rtts, 0.5), "p99_ms": percentile(rtts, 0.99)}


def first_byte(host: str, port: int, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    t0 = time.time()  # the first attempt: the earliest moment this probe could have seen the path work
    error = ""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic())) as sock:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                sock.sendall(b"x")
                if sock.recv(1) == b"x":
                    return {"ok": True, "t0": t0, "at": time.time()}
                error = "connection closed before the echo"
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.02)
    return {"ok": False, "t0": t0, "at": time.time(), "error": error}


def udp_blast(host: str, port: int, count: int, size: int, rate: float) -> dict[str, object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    start = time.monotonic()
    for seq in range(count):
        time.sleep(max(0.0, start + seq / rate - time.monotonic()))
        sock.sendto(HEADER.pack(seq, time.time()) + pattern(seq, size), (host, port))
    return {"sent": count, "seconds": round(time.monotonic() - start, 3)}


def udp_sink(host: str, port: int, seconds: float) -> dict[str, object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((host, port))
    print("ready", flush=True)
    received = nbytes = corrupt = 0
    first = last = 0.0
    sock.settimeout(seconds + 5)
    end = None
    while end is None or time.monotonic() < end:
        if end is not None:
            sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        now = time.monotonic()
        if end is None:
            first, end = now, now + seconds
        last = now
        seq, _ = HEADER.unpack_from(data)
        if data[HEADER.size:] != pattern(seq, len(data)):
            corrupt += 1
        received += 1
        nbytes += len(data)
    return {"received": received, "bytes": nbytes, "corrupt": corrupt, "span_s": round(last - first, 3)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("what")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=30.0)
    a = parser.parse_args()
    if a.what == "tcp-echo":
        return tcp_echo(a.host, a.port)
    if a.what == "udp-echo":
        return udp_echo(a.host, a.port)
    if a.what == "tcp-hash":
        return tcp_hash(a.host, a.port)
    runners = {
        "rr": lambda: rr(a.host, a.port, a.rate, a.seconds, a.size),
        "udp-rr": lambda: udp_rr(a.host, a.port, a.rate, a.seconds, a.size),
        "first-byte": lambda: first_byte(a.host, a.port, a.timeout),
        "send": lambda: send(a.host, a.port, a.count, a.timeout),
        "bulk": lambda: bulk(a.host, a.port, a.seconds),
        "udp-blast": lambda: udp_blast(a.host, a.port, a.count, a.size, a.rate),
        "udp-sink": lambda: udp_sink(a.host, a.port, a.seconds),
    }
    if a.what not in runners:
        parser.error(f"unknown probe {a.what!r}")
    print(json.dumps(runners[a.what]()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
