"""Offline e2e of ``--protocol e4`` (ALPN mf/4, Ed25519 challenge-response) through the real CLI and iroh.

Everything stays on 127.0.0.1 (``--no-relay --dns-server none``, clients dial ``--server-addr``).
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest
from tests.e2e.programs import TcpEchoServer, UdpEchoServer, udp_exchange, udp_socket
from tests.iroh_mode.tunnels import OFFLINE, IrohServerProc, Proc, echo_through, make_key

from tunnel_core.iroh_session.auth import public_key_from_seed
from tunnel_core.iroh_session.authkeys import format_private_key, format_public_key

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

GOOD_SEED = bytes([0x2A] * 32)
BAD_SEED = bytes([0x07] * 32)


def e4_client(server: IrohServerProc, key: Path, source: str, *extra: str) -> Proc:
    return Proc("client", "iroh", "--protocol", "e4", "-n", server.node_id, "-s", source, "-t", "127.0.0.1:0",
                "--server-addr", server.addr, "--private-key-file", str(key), *OFFLINE, *extra)


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    server_key, _ = make_key(tmp_path, "server.key", 1)
    good, bad = tmp_path / "good.key", tmp_path / "bad.key"
    good.write_text(format_private_key(GOOD_SEED, "good"))
    bad.write_text(format_private_key(BAD_SEED, "bad"))
    good.chmod(0o600)
    bad.chmod(0o600)
    keys = tmp_path / "authorized_keys"
    keys.write_text(f"# who may connect\n{format_public_key(public_key_from_seed(GOOD_SEED), 'e2e client')}\n")
    return {"server": server_key, "good": good, "bad": bad, "keys": keys}


def test_authorised_key_forwards_tcp_and_udp(setup: dict[str, Path]) -> None:
    payload = bytes(range(256)) * 4096
    with TcpEchoServer() as echo, UdpEchoServer(prefix=b"echo:") as uecho, \
            IrohServerProc(setup["server"], "--protocol", "e4", "--authorized-keys-file", str(setup["keys"]),
                           "--allowed-tcp", "127.0.0.0/8", "--allowed-udp", "127.0.0.0/8") as server:
        server.wait_for(r"Protocol e4 \(ALPN mf/4")
        with e4_client(server, setup["good"], f"tcp://127.0.0.1:{echo.port}") as client:
            port = int(client.wait_for(r"Listening on TCP 127\.0\.0\.1:(\d+)").group(1))
            assert "Authenticated with server successfully" in client.stderr
            assert echo_through(port, payload) == payload
            server.wait_for(r"Client [0-9a-f]{64} authenticated successfully as e2e client")
        with e4_client(server, setup["good"], f"udp://127.0.0.1:{uecho.port}") as uclient, udp_socket() as sock:
            port = int(uclient.wait_for(r"Listening on UDP 127\.0\.0\.1:(\d+)").group(1))
            assert udp_exchange(sock, ("127.0.0.1", port), b"hello") == b"echo:hello"


def test_unauthorised_key_exits_3_with_the_reason(setup: dict[str, Path]) -> None:
    with TcpEchoServer() as echo, \
            IrohServerProc(setup["server"], "--protocol", "e4", "--authorized-keys-file", str(setup["keys"]),
                           "--allowed-tcp", "127.0.0.0/8") as server:
        with e4_client(server, setup["bad"], f"tcp://127.0.0.1:{echo.port}") as client:
            assert client.wait_exit(30) == 3
            assert "Error: Authentication rejected: Invalid authentication proof" in client.stderr
            assert "Listening on TCP" not in client.stderr
        server.wait_for(r"authentication failed: Invalid authentication proof \(unknown public key\)")
        # An E2 client speaks another ALPN: the handshake itself fails, nothing is forwarded.
        with Proc("client", "iroh", "-n", server.node_id, "-s", f"tcp://127.0.0.1:{echo.port}", "-t",
                  "127.0.0.1:0", "--server-addr", server.addr, *OFFLINE) as e2:
            assert e2.wait_exit(30) not in (0, None)
            assert "Listening on TCP" not in e2.stderr


def test_socks5_under_e4_is_a_durable_stream_and_keeps_its_refusals(setup: dict[str, Path], tmp_path: Path) -> None:
    """Under e4 each SOCKS5 CONNECT travels as a durable stream (docs/durable.md): the server still checks every
    target (reply 2 for what its allowlist forbids, nothing dialled), a name only the server resolves is reached,
    and an echo carries bytes the application sent right behind its CONNECT."""
    from tests.e2e import forward_checks as checks
    from tests.e2e.programs import free_port
    from tests.nat.probe import socks5_connect

    socks_port = free_port()
    payload = bytes(range(256)) * 2048
    with checks.targets(tmp_path) as t, TcpEchoServer() as echo, \
            IrohServerProc(setup["server"], "--protocol", "e4", "--authorized-keys-file", str(setup["keys"]),
                           "--allowed-tcp", "127.0.0.1/32", wrapper=checks.hosts_wrapper(tmp_path)) as server:
        server.wait_for(r"Protocol e4 \(ALPN mf/4")
        with e4_client(server, setup["good"], f"tcp://127.0.0.1:{echo.port}", "--socks5",
                       f"127.0.0.1:{socks_port}") as client:
            client.wait_for("Listening on SOCKS5", 30)
            def server_log() -> str:  # the server logs a refusal right after sending it: wait for the last one
                server.wait_for(re.escape(f"rejected tcp://{checks.BOTH}"), 10)
                return server.stderr

            checks.check_socks(f"socks5h://127.0.0.1:{socks_port}", t, server_log)
            with socket.create_connection(("127.0.0.1", socks_port), timeout=20) as sock:
                socks5_connect(sock, echo.port)
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                got = bytearray()
                while chunk := sock.recv(65536):
                    got += chunk
            assert bytes(got) == payload
            assert "reset" not in client.stderr, client.stderr


def test_reverse_forward_under_e4_carries_durable_streams_and_a_failed_dial_is_let_go(
        setup: dict[str, Path]) -> None:
    """Under e4 a reverse forward's connections are durable streams the server names (docs/durable.md): an echo
    through the server's listener works, and a connection whose client-side dial fails is closed at once by the
    server (not held for a resume that will never come)."""
    from tests.e2e.programs import free_port

    listen, dead_listen, dead_port = free_port(), free_port(), free_port()
    payload = bytes(range(256)) * 2048
    with TcpEchoServer() as echo, \
            IrohServerProc(setup["server"], "--protocol", "e4", "--authorized-keys-file", str(setup["keys"]),
                           "--allowed-tcp", "127.0.0.1/32", "--allow-listen", f"127.0.0.1:{listen}",
                           "--allow-listen", f"127.0.0.1:{dead_listen}") as server:
        server.wait_for(r"Protocol e4 \(ALPN mf/4")
        with e4_client(server, setup["good"], f"tcp://127.0.0.1:{echo.port}",
                       "--reverse", f"127.0.0.1:{listen}=tcp://127.0.0.1:{echo.port}",
                       "--reverse", f"127.0.0.1:{dead_listen}=tcp://127.0.0.1:{dead_port}") as client:
            client.wait_for(f"The server listens on 127.0.0.1:{dead_listen}", 30)
            assert echo_through(listen, payload) == payload
            with socket.create_connection(("127.0.0.1", dead_listen), timeout=20) as sock:
                started = time.monotonic()
                try:
                    data = sock.recv(10)
                except ConnectionResetError:
                    data = b""
                assert data == b"" and time.monotonic() - started < 15
            client.wait_for("Reverse connection not carried", 10)
            assert "reset" not in client.stderr, client.stderr
