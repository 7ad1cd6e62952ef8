"""Issue 17 in iroh mode, real processes offline on 127.0.0.1: one client (a mode-less iroh config file with a UDP
``[[forward]]``, ``socks5`` and three ``[[reverse]]`` tables, the mode's flags after ``-c`` without the mode word)
over one iroh connection: curl --socks5-hostname reaches a name only the server resolves, refused targets get
SOCKS reply 2 with nothing dialled, a reverse forward serves the client's HTTP server on the server's side, one
it cannot bind and one --allow-listen does not name are each told to the client in one line, and the UDP forward
echoes. Against an older server, a reverse-only client stops with one clear error."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from tests.e2e import forward_checks as checks
from tests.e2e.programs import UdpEchoServer, free_port

from .tunnels import OFFLINE, IrohServerProc, Proc, make_key

pytestmark = pytest.mark.timeout(90)


def _udp_echo(port: int) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            sock.sendto(b"ping", ("127.0.0.1", port))
            try:
                return sock.recv(100)
            except TimeoutError:
                continue
    return b""


def test_socks5_reverse_and_udp_forwards_over_one_iroh_connection(tmp_path: Path) -> None:
    server_key, _ = make_key(tmp_path, "server.key", 1)
    client_key, client_id = make_key(tmp_path, "client.key", 2)
    granted, busy, refused, holder = checks.reverse_ports()
    socks_port, udp_port = free_port(), free_port()
    with checks.targets(tmp_path) as t, UdpEchoServer() as echo, \
            IrohServerProc(server_key, "--allowed-tcp", "127.0.0.1/32", "--allowed-udp", "127.0.0.1/32",
                           "--allowed-clients", client_id, "--allow-listen", f"127.0.0.1:{granted}",
                           "--allow-listen", f"127.0.0.1:{busy}", wrapper=checks.hosts_wrapper(tmp_path)) as server:
        reverse = "".join(f'[[reverse]]\nlisten = "127.0.0.1:{port}"\nsource = "tcp://127.0.0.1:{t.client_http}"\n'
                          for port in (granted, busy, refused))
        config = tmp_path / "client.toml"
        config.write_text(
            f'role = "client"\nsocks5 = "127.0.0.1:{socks_port}"\n'
            f'[[forward]]\nlisten = "127.0.0.1:{udp_port}"\nsource = "udp://127.0.0.1:{echo.port}"\n{reverse}'
            f'[iroh]\nprotocol = "e2"\nserver_node_id = "{server.node_id}"\nserver_addrs = ["{server.addr}"]\n'
            f'secret_file = "{client_key}"\n'
        )
        # No mode word: the file says iroh (it has no 'mode', as upstream v0.6's), and its flags still parse.
        with Proc("client", "-c", str(config), *OFFLINE, "--reconnect-timeout", "5m") as client:
            client.wait_for("Listening on SOCKS5", 30)
            client.wait_for(f"Listening on UDP 127.0.0.1:{udp_port}")
            for line in checks.reverse_refusals(granted, busy, refused, t.client_http):
                assert line in client.stderr, client.stderr
            checks.check_socks(f"socks5h://127.0.0.1:{socks_port}", t, lambda: server.stderr)
            checks.check_reverse(granted, t)
            assert _udp_echo(udp_port) == b"ping"
            assert server.stderr.count(f"Client {client_id} connected") == 1, server.stderr
    holder.close()


def test_reverse_only_client_against_an_older_server_is_one_clear_error(tmp_path: Path) -> None:
    server_key, _ = make_key(tmp_path, "server.key", 1)
    client_key, client_id = make_key(tmp_path, "client.key", 2)
    old = checks.old_tunnel(tmp_path)
    with IrohServerProc(server_key, "--allowed-tcp", "127.0.0.1/32", "--allowed-clients", client_id,
                        env=old) as server:
        client = Proc("client", "iroh", "-n", server.node_id, "--server-addr", server.addr, "--secret-file",
                      str(client_key), *OFFLINE, "--reverse", f"127.0.0.1:{free_port()}=tcp://127.0.0.1:80")
        with client:
            code = client.wait_exit(30)
            errors = [line for line in client.stderr.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: The server does not support reverse forwards (--reverse) (upstream tunnel-rs or an "
                      "older tunnel)"], client.stderr
    assert code == 1
