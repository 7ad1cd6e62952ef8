"""Several forwards over one ice-nostr connection (issue 17), real processes: a TCP echo and a UDP echo through
one client, a third forward refused by the server's allowlist and named on both sides while the others work; a
client with only a SOCKS5 listener and reverse forwards (the manual mode's checks, tests/e2e/forward_checks.py);
a SOCKS5-only client against an older server stops with one clear error."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
from tests.e2e import forward_checks as checks
from tests.nostr.conftest import TEST_KIND, LocalRelay, free_port
from tests.nostr.procs import Proc

from tunnel_core.nostr.keys import SecretKey

SERVER = SecretKey.generate(os.urandom)
CLIENT = SecretKey.generate(os.urandom)


COMMON = ["--no-stun", "--host-candidate", "127.0.0.1", "--event-kind"]


def _echo_servers() -> tuple[socket.socket, socket.socket]:
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))

    def serve_tcp() -> None:
        conn, _ = tcp.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def serve_udp() -> None:
        while True:
            try:
                data, peer = udp.recvfrom(65536)
            except OSError:
                return
            udp.sendto(b"echo:" + data, peer)

    threading.Thread(target=serve_tcp, daemon=True).start()
    threading.Thread(target=serve_udp, daemon=True).start()
    return tcp, udp


@pytest.mark.timeout(60)
def test_tcp_and_udp_forwards_over_one_nostr_session(relay: LocalRelay) -> None:
    tcp, udp = _echo_servers()
    common = ["--relay", relay.url, "--no-stun", "--host-candidate", "127.0.0.1", "--event-kind", str(TEST_KIND)]
    server = Proc(["server", "nostr", "--nsec", SERVER.nsec, "--peer-npub", CLIENT.public_key.npub,
                   "--allowed-tcp", "127.0.0.0/8", "--allowed-udp", "127.0.0.0/8", *common])
    client = None
    try:
        server.wait_for("Waiting for tunnel requests")
        tport, uport = free_port(), free_port()
        client = Proc([
            "client", "nostr", "--nsec", CLIENT.nsec, "--peer-npub", SERVER.public_key.npub,
            "--source", f"tcp://127.0.0.1:{tcp.getsockname()[1]}", "--target", f"127.0.0.1:{tport}",
            "--forward", f"127.0.0.1:{uport}=udp://127.0.0.1:{udp.getsockname()[1]}",
            "--forward", f"127.0.0.1:{free_port()}=tcp://192.0.2.1:80",
            *common,
        ])
        client.wait_for("Listening on TCP")
        client.wait_for("Listening on UDP")
        assert "tcp://192.0.2.1:80 refused by the server" in client.wait_for("refused by the server")
        with socket.create_connection(("127.0.0.1", tport), timeout=5) as sock:
            sock.sendall(b"x")
            assert sock.recv(10) == b"x"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as usock:
            usock.settimeout(0.5)
            reply = b""
            deadline = time.monotonic() + 10
            while not reply and time.monotonic() < deadline:
                usock.sendto(b"ping", ("127.0.0.1", uport))
                try:
                    reply = usock.recv(100)
                except TimeoutError:
                    continue
            assert reply == b"echo:ping"
        server.wait_for("Serving 2 of 3 forwards in one session")
        assert sum("Client connected over QUIC." in line for line in server.lines) == 1, server.text
    finally:
        codes = [client.stop() if client else 0, server.stop()]
        tcp.close()
        udp.close()
    assert codes == [0, 0], server.text


@pytest.mark.timeout(90)
def test_socks5_and_reverse_forwards_over_one_nostr_session(relay: LocalRelay, tmp_path: Path) -> None:
    common = ["--relay", relay.url, *COMMON, str(TEST_KIND)]
    granted, busy, refused, holder = checks.reverse_ports()
    socks_port = free_port()
    client = server = None
    try:
        with checks.targets(tmp_path) as t:
            server = Proc(["server", "nostr", "--nsec", SERVER.nsec, "--peer-npub", CLIENT.public_key.npub,
                           "--allowed-tcp", "127.0.0.1/32", "--allow-listen", f"127.0.0.1:{granted}",
                           "--allow-listen", f"127.0.0.1:{busy}", *common], wrapper=checks.hosts_wrapper(tmp_path))
            server.wait_for("Waiting for tunnel requests")
            client = Proc(["client", "nostr", "--nsec", CLIENT.nsec, "--peer-npub", SERVER.public_key.npub,
                           "--socks5", f"127.0.0.1:{socks_port}",
                           *(arg for port in (granted, busy, refused)
                             for arg in ("--reverse", f"127.0.0.1:{port}=tcp://127.0.0.1:{t.client_http}")),
                           *common])
            client.wait_for("Listening on SOCKS5", 30)
            for line in checks.reverse_refusals(granted, busy, refused, t.client_http):
                client.wait_for(line)
            checks.check_socks(f"socks5h://127.0.0.1:{socks_port}", t, lambda: server.text if server else "")
            checks.check_reverse(granted, t)
            server.wait_for("Serving 2 of 4 forwards in one session")
            assert sum("Client connected over QUIC." in line for line in server.lines) == 1, server.text
    finally:
        codes = [client.stop() if client else 0, server.stop() if server else 0]
        holder.close()
    assert codes == [0, 0], server.text if server else ""


@pytest.mark.timeout(60)
def test_socks5_only_client_against_an_older_server_is_one_clear_error(relay: LocalRelay, tmp_path: Path) -> None:
    common = ["--relay", relay.url, *COMMON, str(TEST_KIND)]
    server = Proc(["server", "nostr", "--nsec", SERVER.nsec, "--peer-npub", CLIENT.public_key.npub,
                   "--allowed-tcp", "127.0.0.1/32", *common], env=checks.old_tunnel(tmp_path))
    try:
        server.wait_for("Waiting for tunnel requests")
        client = Proc(["client", "nostr", "--nsec", CLIENT.nsec, "--peer-npub", SERVER.public_key.npub,
                       "--socks5", f"127.0.0.1:{free_port()}", *common])
        code = client.wait(30)
    finally:
        server.stop()
    errors = [line for line in client.lines if line.startswith("Error:")]
    assert errors == ["Error: The server does not support dynamic forwarding (--socks5) (upstream tunnel-rs or an "
                      "older tunnel)"], client.text
    assert code == 1
