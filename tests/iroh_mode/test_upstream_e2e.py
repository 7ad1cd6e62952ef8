"""Upstream's own end-to-end script, test-scripts/run_e2e.sh (tunnel-rs v0.6.1), replayed against our ``tunnel-rs``.

Same commands, same files, same awaited log lines, in the script's order: ``generate-server-key --json`` for the
server identity; ``generate-auth-key "e2e client" > client.key`` and ``show-auth-key --private-key-file client.key
> authorized_keys`` for the client key (upstream uses the flexaccess-keys CLI; ours has the same two commands);
a server fed a JSON config on stdin (``--config-stdin``, inline ``secret`` and ``authorized_keys``); an unlisted key
refused with exit 3; a TCP client with ``private_key_file`` and a UDP client with the key inline; echo round trips.
The script's optional ``--relay-url URL --relay-only`` run is the one used here, against our own relay on 127.0.0.1
with a bearer token (TUNNEL_RS_RELAY_AUTH_TOKEN), so nothing leaves the machine and no n0 service is involved.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tests.e2e.programs import TcpEchoServer, UdpEchoServer, free_port

BIN = str(Path(sys.executable).parent / "tunnel-rs")
RELAY_TOKEN = "e2e-relay-token-0123456789"


class Logged:
    """A process writing stdout+stderr to one log file, as run_e2e.sh's ``start_tunnel`` does."""

    def __init__(self, argv: list[str], log: Path, *, stdin_text: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.log = log
        self.handle = log.open("wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
                                     stdout=self.handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        if stdin_text is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(stdin_text.encode() + b"\n")
            self.proc.stdin.close()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 60.0, count: int = 1) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.findall(pattern, self.text())
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no {count} x /{pattern}/ in {self.log}:\n{self.text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.handle.close()


def run(*args: str, env: dict[str, str], stdout: Path | None = None) -> subprocess.CompletedProcess[str]:
    if stdout is None:
        return subprocess.run([BIN, *args], capture_output=True, text=True, env=env, timeout=60,
                              stdin=subprocess.DEVNULL, check=True)
    with stdout.open("w") as out:
        return subprocess.run([BIN, *args], stdout=out, stderr=subprocess.PIPE, text=True, env=env, timeout=60,
                              stdin=subprocess.DEVNULL, check=True)


def udp_round_trip(port: int, message: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        for _ in range(10):  # UDP: the first datagram may race the tunnel's stream set-up; resend like a client would
            sock.sendto(message, ("127.0.0.1", port))
            try:
                return sock.recv(65536)
            except TimeoutError:
                continue
    raise AssertionError("no UDP echo through the tunnel")


def tcp_round_trip(port: int, message: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(message)
        sock.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: sock.recv(65536), b""))


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_run_e2e_sh_replayed_against_ours(tmp_path: Path) -> None:
    work = tmp_path
    env = dict(os.environ, RUST_LOG="info", TUNNEL_LOG="info", PYTHONUNBUFFERED="1",
               TUNNEL_RS_RELAY_AUTH_TOKEN=RELAY_TOKEN)
    procs: list[Logged] = []
    try:
        relay_port = free_port()
        relay = Logged([sys.executable, "-m", "tunnel_asyncio.cli", "relay", "--dev", "--bind",
                        f"127.0.0.1:{relay_port}", "--token", RELAY_TOKEN], work / "relay.log", env=env)
        procs.append(relay)
        relay.wait_for_log(rf"127\.0\.0\.1:{relay_port}", 30)
        relay_config = {"relay_urls": [f"http://127.0.0.1:{relay_port}"]}

        # Server identity + client authentication key
        generated = json.loads(run("generate-server-key", "--json", env=env).stdout)
        endpoint_id, secret = generated["public_key"], generated["private_key"]
        run("generate-auth-key", "e2e client", env=env, stdout=work / "client.key")
        run("show-auth-key", "--private-key-file", str(work / "client.key"), env=env, stdout=work / "authorized_keys")
        run("generate-auth-key", "unauthorized e2e client", env=env, stdout=work / "unauthorized.key")
        authorized_entry = (work / "authorized_keys").read_text().rstrip("\n")
        assert re.fullmatch(r"ed25519-pub:[A-Za-z0-9_-]{43} e2e client", authorized_entry)

        with TcpEchoServer() as tcp_echo, UdpEchoServer() as udp_echo:
            server_config = {"role": "server", "iroh": {
                "secret": secret, "authorized_keys": [authorized_entry],
                "allowed_sources": {"tcp": ["127.0.0.0/8"], "udp": ["127.0.0.0/8"]}, **relay_config}}
            server = Logged([BIN, "server", "--config-stdin", "--relay-only"], work / "server.log",
                            stdin_text=json.dumps(server_config), env=env)
            procs.append(server)
            server.wait_for_log("Waiting for clients to connect")

            def client_config(protocol: str, backend_port: int, target_port: int, key: Path,
                              key_mode: str = "file") -> str:
                iroh: dict[str, object] = {"server_node_id": endpoint_id,
                                           "request_source": f"{protocol}://127.0.0.1:{backend_port}",
                                           "target": f"127.0.0.1:{target_port}"}
                if key_mode == "inline":
                    iroh["private_key"] = key.read_text()
                else:
                    iroh["private_key_file"] = str(key)
                iroh.update(relay_config)
                return json.dumps({"role": "client", "iroh": iroh})

            tcp_target, udp_target = free_port(), free_port(tcp=False, udp=True)
            unauthorized = Logged([BIN, "client", "--config-stdin", "--relay-only"], work / "client_unauthorized.log",
                                  stdin_text=client_config("tcp", tcp_echo.port, tcp_target,
                                                           work / "unauthorized.key"), env=env)
            procs.append(unauthorized)
            # The relay checks the bearer token: a client presenting another one never gets online (exit 10).
            # Started beside the unauthorized one (both only wait to be refused; neither depends on the other).
            wrong = Logged([BIN, "client", "--config-stdin", "--relay-only"], work / "client_wrong_token.log",
                           stdin_text=client_config("tcp", tcp_echo.port, tcp_target, work / "client.key"),
                           env=env | {"TUNNEL_RS_RELAY_AUTH_TOKEN": "not-the-relay-token"})
            procs.append(wrong)
            assert unauthorized.proc.wait(90) == 3
            assert "Authentication rejected: Invalid authentication proof" in unauthorized.text()
            server.wait_for_log("Invalid public-key authentication proof", 10)
            assert "Listening on TCP" not in unauthorized.text()

            assert wrong.proc.wait(60) == 10, wrong.text()
            assert "Listening on TCP" not in wrong.text()

            tcp_client = Logged([BIN, "client", "--config-stdin", "--relay-only"], work / "client_tcp.log",
                                stdin_text=client_config("tcp", tcp_echo.port, tcp_target, work / "client.key"),
                                env=env)
            udp_client = Logged([BIN, "client", "--config-stdin", "--relay-only"], work / "client_udp.log",
                                stdin_text=client_config("udp", udp_echo.port, udp_target, work / "client.key",
                                                         "inline"), env=env)
            procs += [tcp_client, udp_client]
            tcp_client.wait_for_log("Listening on TCP")
            udp_client.wait_for_log("Listening on UDP")
            ids = server.wait_for_log(r"Client ([0-9a-f]+) authenticated successfully as e2e client", count=2)
            assert len(set(ids)) >= 2  # one shared auth key, distinct ephemeral iroh identities

            message = f"hello-tcp-{int(time.time())}".encode()
            assert tcp_round_trip(tcp_target, message) == message
            message = f"hello-udp-{int(time.time())}".encode()
            assert udp_round_trip(udp_target, message) == message
            assert "Relay-only mode: all traffic will go through the relay server" in server.text()
        logs = "".join(p.text() for p in procs)
        assert secret not in logs and RELAY_TOKEN not in logs
    finally:
        threads = [threading.Thread(target=p.stop) for p in procs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
