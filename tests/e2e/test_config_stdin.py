"""``--config-stdin`` in manual mode, as tunnel-rs-ice 0.2.4 allowed it: one JSON config line first, then the pasted
OFFER or ANSWER on the same stdin. Real processes on loopback; data must go through the tunnel."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

from . import programs
from .harness import TunnelProcess, cli_argv, supervised
from .programs import LOOPBACK

ICE = {"stun_servers": [], "host_candidates": [LOOPBACK]}


@pytest.mark.e2e
@pytest.mark.timeout(120)
@pytest.mark.parametrize("program", ["tunnel", "tunnel-rs-ice"])
def test_json_config_then_pasted_block_on_one_stdin(program: str) -> None:
    with programs.TcpEchoServer() as echo:
        target_port = programs.free_port()
        client_config = {"role": "client", "mode": "manual", "manual": {
            **ICE, "request_source": f"tcp://{LOOPBACK}:{echo.port}", "target": f"{LOOPBACK}:{target_port}"}}
        server_config = {"role": "server", "mode": "manual", "manual": {
            **ICE, "allowed_sources": {"tcp": ["127.0.0.0/8"]}}}
        def argv(role: str) -> list[str]:
            if program == "tunnel":
                return cli_argv("asyncio", role, "--config-stdin")
            return [str(Path(sys.executable).parent / "tunnel-rs-ice"), role, "--config-stdin"]

        client = TunnelProcess("client", argv("client"))
        server = TunnelProcess("server", argv("server"))
        with supervised(client, server):
            client.write(json.dumps(client_config) + "\n")
            server.write(json.dumps(server_config) + "\n")
            offer = client.read_block("OFFER")
            server.write("\n".join(offer) + "\n")
            answer = server.read_block("ANSWER")
            client.write("\n".join(answer) + "\n")
            client.wait_stderr(r"Listening on")
            with socket.create_connection((LOOPBACK, target_port), timeout=10) as sock:
                sock.sendall(b"through the tunnel")
                sock.shutdown(socket.SHUT_WR)
                assert b"".join(iter(lambda: sock.recv(65536), b"")) == b"through the tunnel"
