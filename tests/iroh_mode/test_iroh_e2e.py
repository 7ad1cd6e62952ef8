"""Offline end-to-end iroh-mode tunnels through the real CLI and the real iroh binding (issue 5, "Must show").

All traffic stays on 127.0.0.1: servers bind there, clients dial the logged address (--server-addr), relays
and discovery are off.
"""

from __future__ import annotations

import hashlib
import re
import socket
import time
from pathlib import Path

import pytest
from tests.e2e.programs import (
    Sshd,
    TcpEchoServer,
    TcpSinkServer,
    TcpSourceServer,
    UdpEchoServer,
    deterministic_bytes,
    tcp_transfer_upload,
    udp_exchange,
    udp_socket,
)
from tests.iroh_mode.tunnels import IrohClientProc, IrohServerProc, echo_through, make_key

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    return {name: make_key(tmp_path, f"{name}.key", seed) for seed, name in enumerate(("server", "a", "b", "c", "x"))}


def test_ssh_and_100mb_upload_download_through_one_server(tmp_path: Path, keys: dict[str, tuple[Path, str]]) -> None:
    payload = deterministic_bytes(100 * 1024 * 1024, seed=5)
    expected = hashlib.sha256(payload).hexdigest()
    with Sshd(tmp_path / "sshd") as sshd, TcpSinkServer() as sink, TcpSourceServer(payload[: 20 << 20]) as src, \
            IrohServerProc(keys["server"][0], "--allowed-tcp", "127.0.0.0/8",
                           "--allowed-clients", keys["a"][1]) as server:
        with IrohClientProc(server, keys["a"][0], f"tcp://127.0.0.1:{sshd.port}") as ssh_client:
            result = sshd.run(ssh_client.port, "echo", "through-iroh")
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip() == "through-iroh"
            ssh_client.wait_for(r"Connection: Direct 127\.0\.0\.1:\d+ \(rtt")
        with IrohClientProc(server, keys["a"][0], f"tcp://127.0.0.1:{sink.port}") as upload:
            assert tcp_transfer_upload(upload.port, payload) == (len(payload), expected)
        with IrohClientProc(server, keys["a"][0], f"tcp://127.0.0.1:{src.port}") as download:
            with socket.create_connection(("127.0.0.1", download.port), timeout=30) as sock:
                digest, count = hashlib.sha256(), 0
                while data := sock.recv(1 << 20):
                    digest.update(data)
                    count += len(data)
            assert (count, digest.hexdigest()) == (20 << 20, hashlib.sha256(payload[: 20 << 20]).hexdigest())
        server.wait_for(r"Client [0-9a-f]{10}: Connection: Direct 127\.0\.0\.1:\d+")


def test_udp_tunnel_carries_datagrams_both_ways(keys: dict[str, tuple[Path, str]]) -> None:
    with UdpEchoServer(prefix=b"echo:") as echo, \
            IrohServerProc(keys["server"][0], "--allowed-udp", "127.0.0.0/8",
                           "--allowed-clients", keys["b"][1]) as server, \
            IrohClientProc(server, keys["b"][0], f"udp://127.0.0.1:{echo.port}") as client, udp_socket() as sock:
        assert udp_exchange(sock, ("127.0.0.1", client.port), b"hello") == b"echo:hello"
        big = bytes(range(256)) * 32  # 8 KiB: larger than any QUIC packet, so framing must reassemble it
        assert udp_exchange(sock, ("127.0.0.1", client.port), big) == b"echo:" + big
        sock.settimeout(5)
        for i in range(200):
            sock.sendto(b"n%d" % i, ("127.0.0.1", client.port))
        replies = set()
        try:
            while len(replies) < 200:
                replies.add(sock.recvfrom(65535)[0])
        except TimeoutError:
            pass
        assert len(replies) >= 190  # loopback UDP may drop a few under a burst, the tunnel must not lose many


def test_three_clients_with_own_keys_choose_own_sources_and_strangers_are_refused(
    tmp_path: Path, keys: dict[str, tuple[Path, str]]
) -> None:
    allowed = tmp_path / "allowed.txt"
    allowed.write_text(f"# team\n{keys['a'][1]}  # alice\n\n{keys['b'][1]}\n{keys['c'][1]} # carol\n")
    with TcpEchoServer() as e1, TcpEchoServer() as e2, UdpEchoServer(prefix=b"u:") as u3, \
            IrohServerProc(keys["server"][0], "--allowed-tcp", "127.0.0.0/8", "--allowed-udp", "127.0.0.0/8",
                           "--allowed-clients-file", str(allowed)) as server:
        with IrohClientProc(server, keys["a"][0], f"tcp://127.0.0.1:{e1.port}") as ca, \
                IrohClientProc(server, keys["b"][0], f"tcp://127.0.0.1:{e2.port}") as cb, \
                IrohClientProc(server, keys["c"][0], f"udp://127.0.0.1:{u3.port}") as cc:
            assert echo_through(ca.port, b"from alice") == b"from alice"
            assert echo_through(cb.port, b"from bob") == b"from bob"
            with udp_socket() as sock:
                assert udp_exchange(sock, ("127.0.0.1", cc.port), b"carol") == b"u:carol"
            for client_id in (keys["a"][1], keys["b"][1], keys["c"][1]):
                server.wait_for(f"Client {client_id} connected")
        # A client whose key is not listed: refused at connect, nothing forwarded, exit code 3.
        stranger = IrohClientProc(server, keys["x"][0], f"tcp://127.0.0.1:{e1.port}", wait=False)
        with stranger:
            assert stranger.wait_exit(15) == 3
            assert "unauthorized" in stranger.stderr
            assert keys["x"][1] in stranger.stderr
            server.wait_for(f"Rejected unauthorized client: {keys['x'][1]}")
        assert f"Client {keys['x'][1]} connected" not in server.stderr
        assert "forwarding" not in server.stderr.split(f"Rejected unauthorized client: {keys['x'][1]}")[1]


def test_source_outside_allowlist_is_rejected_with_reason_and_session_limit_holds(
    keys: dict[str, tuple[Path, str]]
) -> None:
    with TcpEchoServer() as echo, \
            IrohServerProc(keys["server"][0], "--allowed-tcp", "127.0.0.1/32", "--max-sessions", "1",
                           "--allowed-clients", keys["a"][1]) as server:
        with IrohClientProc(server, keys["a"][0], "tcp://127.0.0.2:22") as outside:
            with socket.create_connection(("127.0.0.1", outside.port), timeout=10) as sock:
                assert sock.recv(10) == b""  # dropped without a byte
            outside.wait_for(r"Source request rejected: Source 'tcp://127\.0\.0\.2:22' \(resolved to 127\.0\.0\.2\) "
                             r"not in allowed networks \[\"127\.0\.0\.1/32\"\]")
        # UDP has one stream opened at start: the refusal ends the client with the reason and exit code 3.
        with IrohClientProc(server, keys["a"][0], "udp://127.0.0.1:9", wait=False) as udp_client:
            assert udp_client.wait_exit(15) == 3
            assert "Error: Source request rejected: Source 'udp://127.0.0.1:9': udp forwarding is not allowed" \
                in udp_client.stderr
        with IrohClientProc(server, keys["a"][0], f"tcp://127.0.0.1:{echo.port}") as client:
            with socket.create_connection(("127.0.0.1", client.port), timeout=10) as first:
                first.sendall(b"one")
                assert first.recv(3) == b"one"  # holds the only session
                with socket.create_connection(("127.0.0.1", client.port), timeout=10) as second:
                    assert second.recv(10) == b""
                client.wait_for("Source request rejected: Session limit reached")
            # the permit comes back once the first stream ends
            for _ in range(50):
                try:
                    assert echo_through(client.port, b"again") == b"again"
                    break
                except (AssertionError, OSError):
                    time.sleep(0.1)
            else:
                raise AssertionError("session permit never came back")


def test_client_reaches_server_through_the_projects_relay_then_goes_direct(
    keys: dict[str, tuple[Path, str]]
) -> None:
    from tests.e2e.programs import free_port, wait_tcp_listening
    from tests.iroh_mode.tunnels import Proc

    port = free_port()
    relay_url = f"http://127.0.0.1:{port}"
    with Proc("relay", "--dev", "--bind", f"127.0.0.1:{port}") as relay, TcpEchoServer() as echo:
        wait_tcp_listening(port, proc=relay.proc)
        via_relay = ("--relay-url", relay_url, "--dns-server", "none", "--bind-addr", "127.0.0.1:0")
        server = Proc("server", "iroh", "--secret-file", str(keys["server"][0]), "--allowed-tcp", "127.0.0.0/8",
                      "--allowed-clients", keys["a"][1], *via_relay)
        with server:
            node_id = server.wait_for(r"Server EndpointId: ([0-9a-f]{64})").group(1)
            server.wait_for(r"Listening on")
            # No --server-addr: the relay URL is the client's only way to the server.
            with Proc("client", "iroh", "-n", node_id, "-s", f"tcp://127.0.0.1:{echo.port}", "-t", "127.0.0.1:0",
                      "--secret-file", str(keys["a"][0]), *via_relay) as client:
                local = int(client.wait_for(r"Listening on TCP 127\.0\.0\.1:(\d+)").group(1))
                client.wait_for(rf"Connection: Relay {relay_url}/? \(rtt")
                assert echo_through(local, b"via relay") == b"via relay"
                client.wait_for(r"Connection: Direct 127\.0\.0\.1:\d+ \(rtt")


def test_udp_travels_as_quic_datagrams_with_fragments_and_stream_fallback(keys: dict[str, tuple[Path, str]]) -> None:
    """docs/datagrams.md: our client offers QUIC datagrams in its SourceRequest, our server takes the offer; 1452 and
    8192-byte datagrams go as fragments, 30000 bytes on the stream, each both ways."""
    with UdpEchoServer(prefix=b"echo:") as echo, \
            IrohServerProc(keys["server"][0], "--allowed-udp", "127.0.0.0/8",
                           "--allowed-clients", keys["b"][1]) as server:
        with IrohClientProc(server, keys["b"][0], f"udp://127.0.0.1:{echo.port}") as client, udp_socket() as sock:
            for size in (100, 1452, 8192, 30000, 1452):
                data = bytes(range(256)) * (size // 256) + bytes(size % 256)
                assert udp_exchange(sock, ("127.0.0.1", client.port), data) == b"echo:" + data
            client.stop()
            summary = re.search(r"UDP over QUIC datagrams: (.*)", client.stderr)
            assert summary, client.stderr
            stats = dict(item.rsplit(" ", 1) for item in summary.group(1).split(", "))
            assert int(stats["fragmented"]) >= 3 and int(stats["stream fallback"]) == 1, stats
            assert int(stats["received"]) >= 4, stats  # the echoes came back as datagrams too
        server.wait_for(r"UDP over QUIC datagrams: datagrams \d+, fragmented [1-9]")


def test_udp_with_datagrams_gives_each_local_peer_its_own_flow(keys: dict[str, tuple[Path, str]]) -> None:
    """With our server, every local UDP peer gets its own flow (stream, server socket): replies reach only their
    own peer even when peers interleave (upstream's one stream would send both replies to the last sender)."""
    with UdpEchoServer(prefix=b"echo:") as echo, \
            IrohServerProc(keys["server"][0], "--allowed-udp", "127.0.0.0/8",
                           "--allowed-clients", keys["b"][1]) as server, \
            IrohClientProc(server, keys["b"][0], f"udp://127.0.0.1:{echo.port}") as client, \
            udp_socket() as a, udp_socket() as b:
        target = ("127.0.0.1", client.port)
        assert udp_exchange(a, target, b"warm-up") == b"echo:warm-up"
        for round_ in range(3):
            a.sendto(b"a%d" % round_, target)
            b.sendto(b"b%d" % round_, target)
            a.settimeout(5)
            b.settimeout(5)
            assert a.recvfrom(65535)[0] == b"echo:a%d" % round_
            assert b.recvfrom(65535)[0] == b"echo:b%d" % round_


def test_several_tcp_forwards_over_one_iroh_connection_and_a_refused_one_named(
    keys: dict[str, tuple[Path, str]]
) -> None:
    """--forward in iroh mode (issue 17): each stream's SourceRequest names its own source on one connection."""
    from tests.e2e.programs import free_port

    second, refused = free_port(), free_port()
    with TcpEchoServer() as e1, TcpEchoServer() as e2, \
            IrohServerProc(keys["server"][0], "--allowed-tcp", "127.0.0.1/32",
                           "--allowed-clients", keys["a"][1]) as server:
        client = IrohClientProc(server, keys["a"][0], f"tcp://127.0.0.1:{e1.port}", wait=False,
                                extra=("--forward", f"127.0.0.1:{second}=tcp://127.0.0.1:{e2.port}",
                                       "--forward", f"127.0.0.1:{refused}=tcp://127.0.0.2:22"))
        with client:
            first = int(client.wait_for(rf"Listening on TCP 127\.0\.0\.1:(\d+), forwarding to tcp://127\.0\.0\.1:"
                                        rf"{e1.port}").group(1))
            client.wait_for(rf"Listening on TCP 127\.0\.0\.1:{second}, forwarding to tcp://127\.0\.0\.1:{e2.port}")
            assert echo_through(first, b"one") == b"one"
            assert echo_through(second, b"two") == b"two"
            with socket.create_connection(("127.0.0.1", refused), timeout=10) as sock:
                assert sock.recv(10) == b""  # refused by the server's allowlist, nothing forwarded
            client.wait_for(r"Source request rejected: Source 'tcp://127\.0\.0\.2:22'")
            assert echo_through(second, b"still") == b"still"
            assert server.stderr.count(f"Client {keys['a'][1]} connected") == 1
