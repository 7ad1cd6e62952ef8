"""A stand-in for the `tunnel ... manual` CLI that proves the e2e harness and tests themselves.

It speaks the same stdin/stdout/stderr contract (TRS1 OFFER/ANSWER blocks, banner lines, one-line errors, exit
codes) but forwards locally without ICE or QUIC: the client relays straight to the source, and a TCP control
connection on 127.0.0.1 stands in for the QUIC connection so the server exits when the client goes away.
Run the e2e suite against it with ``TUNNEL_E2E_RUNTIME=fake``; any failure then is the harness's, not the tunnel's.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import signal
import socket
import sys
import threading
import zlib
from collections.abc import Callable
from types import FrameType

LOOPBACK = "127.0.0.1"

#: Callbacks run on an orderly stop (SIGTERM/SIGINT), standing in for QUIC's close frame.
GOODBYES: list[Callable[[], None]] = []


def fail(message: str, code: int) -> None:
    print(f"Error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def encode_block(kind: str, message: dict) -> str:
    body = json.dumps(message, separators=(",", ":")).encode()
    payload = f"TRS1:{zlib.crc32(body):08x}:" + base64.urlsafe_b64encode(body).decode().rstrip("=")
    lines = [payload[i : i + 76] for i in range(0, len(payload), 76)]
    return "\n".join(
        ["", f"-----BEGIN TUNNEL-RS MANUAL {kind}-----", *lines, f"-----END TUNNEL-RS MANUAL {kind}-----", ""]
    )


def read_block(kind: str) -> dict:
    lines: list[str] = []
    inside = False
    for raw in sys.stdin:
        line = raw.strip()
        if line == f"-----BEGIN TUNNEL-RS MANUAL {kind}-----":
            inside = True
        elif line == f"-----END TUNNEL-RS MANUAL {kind}-----":
            break
        elif inside and line:
            lines.append(line)
    else:
        fail("END marker not found", 2)
    _, crc, b64 = "".join(lines).split(":", 2)
    body = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
    actual = f"{zlib.crc32(body):08x}"
    if actual != crc:
        fail(f"Manual payload checksum mismatch (expected {crc}, got {actual})", 2)
    return json.loads(body)


def split_host_port(text: str) -> tuple[str, int] | None:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        return None
    return host, int(port)


def pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def serve_tcp(listen: tuple[str, int], source: tuple[str, int]) -> None:
    listener = socket.create_server(listen, backlog=128)
    print(
        f"Listening on TCP {listen[0]}:{listen[1]} - configure your client to connect here",
        file=sys.stderr,
        flush=True,
    )
    while True:
        conn, _ = listener.accept()
        upstream = socket.create_connection(source)
        threading.Thread(target=pump, args=(conn, upstream), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, conn), daemon=True).start()


def serve_udp(listen: tuple[str, int], source: tuple[str, int]) -> None:
    local = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    local.bind(listen)
    print(f"Listening on UDP {listen[0]}:{listen[1]}", file=sys.stderr, flush=True)
    flows: dict[tuple[str, int], socket.socket] = {}

    def back(sock: socket.socket, peer: tuple[str, int]) -> None:
        while True:
            data = sock.recv(65535)
            local.sendto(data, peer)

    while True:
        data, peer = local.recvfrom(65535)
        if peer not in flows:
            flows[peer] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            flows[peer].bind((LOOPBACK, 0))
            threading.Thread(target=back, args=(flows[peer], peer), daemon=True).start()
        flows[peer].sendto(data, source)


def established(role: str) -> None:
    print(
        "ICE connection established!\n   Connection: Direct (Host)\n   Local: a -> Remote: b",
        file=sys.stderr,
        flush=True,
    )
    text = "Client connected over QUIC." if role == "server" else "Connected to server over QUIC."
    print(text, file=sys.stderr, flush=True)


def client(args: argparse.Namespace) -> None:
    scheme, sep, rest = args.source.partition("://")
    source = split_host_port(rest)
    if not sep or scheme not in ("tcp", "udp") or source is None:
        fail(f"Invalid source '{args.source}'. Expected format: tcp://host:port or udp://host:port", 2)
    target = split_host_port(args.target)
    if target is None:
        fail(
            f"Invalid target '{args.target}'. Expected format: host:port (e.g., localhost:2222 or 127.0.0.1:2222)",
            2,
        )
    print(encode_block("OFFER", {"version": 1, "source": args.source}), flush=True)
    print("Paste server answer (include BEGIN/END markers), then press Enter:", file=sys.stderr, flush=True)
    answer = read_block("ANSWER")
    control = socket.create_connection((LOOPBACK, answer["control_port"]))
    GOODBYES.append(lambda: control.sendall(b"q"))
    established("client")

    def watch() -> None:
        control.recv(1)
        print("Error: Connection lost", file=sys.stderr, flush=True)
        import os

        os._exit(11)

    threading.Thread(target=watch, daemon=True).start()
    (serve_tcp if scheme == "tcp" else serve_udp)(target, source)


def server(args: argparse.Namespace) -> None:
    nets = []
    for flag, cidrs in (("--allowed-tcp", args.allowed_tcp), ("--allowed-udp", args.allowed_udp)):
        for cidr in cidrs:
            try:
                nets.append((flag, ipaddress.ip_network(cidr, strict=False)))
            except ValueError:
                fail(f"Invalid CIDR '{cidr}' in {flag}. Expected format: 192.168.0.0/16 or ::1/128", 2)
    if not nets:
        fail("At least one of --allowed-tcp or --allowed-udp is required for custom-manual server", 2)
    print("Paste client offer (include BEGIN/END markers), then press Enter:", file=sys.stderr, flush=True)
    offer = read_block("OFFER")
    src = offer["source"]
    scheme, _, rest = src.partition("://")
    host, _ = split_host_port(rest) or ("", 0)
    allowed = args.allowed_tcp if scheme == "tcp" else args.allowed_udp
    if allowed and not any(
        ipaddress.ip_address(host) in ipaddress.ip_network(c, strict=False) for c in allowed
    ):
        fail(f"Source '{src}' (resolved to {host}) not in allowed networks {json.dumps(list(allowed))}", 3)
    listener = socket.create_server((LOOPBACK, 0))
    print(encode_block("ANSWER", {"version": 1, "control_port": listener.getsockname()[1]}), flush=True)
    conn, _ = listener.accept()
    established("server")
    if conn.recv(1) != b"q":  # the client says goodbye on an orderly stop; EOF alone means it died
        fail("Connection lost", 11)
    print("Connection closed.", file=sys.stderr, flush=True)


def main() -> None:
    def on_term(signum: int, frame: FrameType | None) -> None:
        for goodbye in GOODBYES:
            goodbye()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    parser = argparse.ArgumentParser(prog="fake-tunnel")
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("mode", choices=["manual"])
    parser.add_argument("--source")
    parser.add_argument("--target")
    parser.add_argument("--allowed-tcp", action="append", default=[])
    parser.add_argument("--allowed-udp", action="append", default=[])
    parser.add_argument("--no-stun", action="store_true")
    parser.add_argument("--host-candidate", action="append", default=[])
    parser.add_argument("--packet-size", type=int)
    args = parser.parse_args()
    try:
        (server if args.role == "server" else client)(args)
    except KeyboardInterrupt:
        for goodbye in GOODBYES:
            goodbye()
        raise SystemExit(0) from None


if __name__ == "__main__":
    main()
