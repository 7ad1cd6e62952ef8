"""ice-nostr mode across runtimes: one server per runtime, one client of every runtime at once, through a real relay.

The signaling (relay WebSockets, publish/subscribe, republish, sessions as child runners) is each adapter's own
code, so a difference between adapters shows up as a failing (server runtime, client runtime) pair. Per server
runtime this runs a server with ``--max-sessions 3`` and four clients: the asyncio, trio and gevent clients each
echo data through their own concurrent session (all nine pairs), and a fourth client is turned away with the
capacity reject. Real CLI processes (``python -m tunnel_<runtime>.cli server|client nostr ...``), nostr-sdk's
LocalRelay on 127.0.0.1 plus a dead relay in the list, loopback-only ICE.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from tests.nostr.conftest import TEST_KIND, LocalRelay

from e2e.harness import LOOPBACK_ICE_ARGS, HarnessError, TunnelProcess, cli_argv, supervised
from e2e.programs import LOOPBACK, TcpEchoServer, free_port
from tunnel_core.nostr.keys import SecretKey

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

RUNTIMES = ("asyncio", "trio", "gevent")
PAYLOAD = 256 << 10
MAX_SESSIONS = 3


@pytest.fixture(scope="module")
def relay() -> Iterator[LocalRelay]:
    r = LocalRelay().start()
    yield r
    r.stop()


def _echo(port: int, payload: bytes) -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=20) as sock:
        errors: list[OSError] = []

        def send() -> None:
            try:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                errors.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        chunks = []
        while data := sock.recv(1 << 20):
            chunks.append(data)
        sender.join(timeout=20)
        assert not errors, f"sending failed: {errors[0]!r}"
        return b"".join(chunks)


@pytest.mark.parametrize("server_rt", RUNTIMES)
def test_tcp_echo_every_client_runtime(relay: LocalRelay, server_rt: str) -> None:
    server_key, client_key = SecretKey.generate(os.urandom), SecretKey.generate(os.urandom)
    relays = ["--relay", f"ws://{LOOPBACK}:{free_port()}", "--relay", relay.url]
    common = [*relays, *LOOPBACK_ICE_ARGS, "--event-kind", str(TEST_KIND)]
    with TcpEchoServer() as echo:
        server = TunnelProcess(f"{server_rt} server", cli_argv(
            server_rt, "server", "nostr", "--nsec", server_key.nsec, "--peer-npub", client_key.public_key.npub,
            "--allowed-tcp", "127.0.0.0/8", "--max-sessions", str(MAX_SESSIONS), *common))

        def client(rt: str, port: int) -> TunnelProcess:
            return TunnelProcess(f"{rt} client", cli_argv(
                rt, "client", "nostr", "--nsec", client_key.nsec, "--peer-npub", server_key.public_key.npub,
                "--source", f"tcp://{LOOPBACK}:{echo.port}", "--target", f"{LOOPBACK}:{port}", *common))

        ports = {rt: free_port() for rt in RUNTIMES}
        clients: dict[str, TunnelProcess] = {}
        with supervised(server):
            server.wait_stderr(r"Waiting for tunnel requests \(max sessions: 3\)")
            clients = {rt: client(rt, ports[rt]) for rt in RUNTIMES}
            with supervised(server, *clients.values()):
                for proc in clients.values():
                    proc.wait_stderr(r"Listening on TCP")
                server.wait_stderr(r"\(3 active\)")
                payloads = {rt: os.urandom(PAYLOAD) for rt in RUNTIMES}
                with ThreadPoolExecutor(len(RUNTIMES)) as pool:
                    echoed = dict(zip(RUNTIMES, pool.map(lambda rt: _echo(ports[rt], payloads[rt]), RUNTIMES),
                                      strict=True))
                for rt in RUNTIMES:
                    if hashlib.sha256(echoed[rt]).digest() != hashlib.sha256(payloads[rt]).digest():
                        raise HarnessError(f"{server_rt} server, {rt} client: echoed {len(echoed[rt])} of "
                                           f"{len(payloads[rt])} bytes, or different bytes")

                # A fourth concurrent session is over the limit: the server says so, the client gives up.
                extra = client(server_rt, free_port())
                with supervised(extra):
                    extra.wait_stderr(r"Session rejected by server: Server at capacity \(3/3 sessions\)")
                    code = extra.wait_exit(10)
                    if code != 3:
                        raise HarnessError(f"rejected client exited with {code}, expected 3")

                for rt, proc in clients.items():
                    code = proc.stop(signal.SIGTERM, timeout=10)
                    if code != 0:
                        raise HarnessError(f"{rt} client exited with {code} after SIGTERM")
                server.wait_stderr(r"ended \(0 active\)", timeout=10)
                if server.stderr.count("Connection closed.") != len(RUNTIMES):
                    raise HarnessError("the server did not see every session close cleanly")
            code = server.stop(signal.SIGINT, timeout=10)
            if code != 0:
                raise HarnessError(f"server exited with {code} after SIGINT")
