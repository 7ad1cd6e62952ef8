"""ice-nostr mode across runtimes: one server per runtime, one client of every runtime at once, through a real relay.

The signaling (relay WebSockets, publish/subscribe, republish, sessions as child runners) is each adapter's own
code, so a difference between adapters shows up as a failing (server runtime, client runtime) pair. Per server
runtime this runs a server with ``--max-sessions 3`` and four clients: the asyncio, trio and gevent clients each
echo data through their own concurrent session (all nine pairs), and a fourth client is turned away with the
capacity reject. Real CLI processes (``python -m tunnel_<runtime>.cli server|client nostr ...``), nostr-sdk's
LocalRelay on 127.0.0.1 plus a dead relay in the list, loopback-only ICE.

``wss://`` takes each runtime's own TLS path (asyncio streams, trio.SSLStream, gevent.ssl), so it gets its own test:
socat terminates TLS in front of the same relay with a certificate from a throw-away CA that the processes trust
through ``SSL_CERT_FILE`` (the default verification stays on: hostname and chain are checked).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.nostr.conftest import TEST_KIND, LocalRelay

from e2e.harness import LOOPBACK_ICE_ARGS, HarnessError, TunnelProcess, cli_argv, supervised
from e2e.programs import LOOPBACK, TcpEchoServer, free_port, wait_tcp_listening
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


# ---------------------------------------------------------------------------------------------- wss://


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, issuer_key: Any, *,
                 ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _tls_files(workdir: Path) -> tuple[Path, Path]:
    """(CA bundle to trust, socat's cert+key PEM for 127.0.0.1)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tunnel test CA")])
    ca = _certificate("tunnel test CA", ca_key, ca_name, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = _certificate(LOOPBACK, key, ca_name, ca_key, ca=False)
    ca_file, server_file = workdir / "ca.pem", workdir / "relay.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_file.write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()))
    return ca_file, server_file


@pytest.fixture(scope="module")
def wss_relay(relay: LocalRelay, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``(wss URL, CA file)``: socat terminating TLS in front of the LocalRelay."""
    ca_file, server_file = _tls_files(tmp_path_factory.mktemp("wss"))
    port = free_port()
    proc = subprocess.Popen(
        ["socat", f"OPENSSL-LISTEN:{port},bind={LOOPBACK},reuseaddr,fork,cert={server_file},verify=0",
         f"TCP:{LOOPBACK}:{relay.port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_tcp_listening(port, proc=proc)  # type: ignore[arg-type]
        yield f"wss://{LOOPBACK}:{port}", ca_file
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.mark.parametrize(("server_rt", "client_rt"), [
    pytest.param(server, client, id=f"{server}-server-{client}-client")
    for server, client in (("asyncio", "trio"), ("trio", "gevent"), ("gevent", "asyncio"))
])
def test_tcp_echo_over_wss_relay(wss_relay: tuple[str, Path], server_rt: str, client_rt: str,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    url, ca_file = wss_relay
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # inherited by the CLI processes
    server_key, client_key = SecretKey.generate(os.urandom), SecretKey.generate(os.urandom)
    common = ["--relay", url, *LOOPBACK_ICE_ARGS, "--event-kind", str(TEST_KIND)]
    port = free_port()
    with TcpEchoServer() as echo:
        server = TunnelProcess(f"{server_rt} server", cli_argv(
            server_rt, "server", "nostr", "--nsec", server_key.nsec, "--peer-npub", client_key.public_key.npub,
            "--allowed-tcp", "127.0.0.0/8", *common))
        client = TunnelProcess(f"{client_rt} client", cli_argv(
            client_rt, "client", "nostr", "--nsec", client_key.nsec, "--peer-npub", server_key.public_key.npub,
            "--source", f"tcp://{LOOPBACK}:{echo.port}", "--target", f"{LOOPBACK}:{port}", *common))
        with supervised(server, client):
            server.wait_stderr(r"Connected to 1/1 relay\(s\)")
            client.wait_stderr(r"Connected to 1/1 relay\(s\)")
            client.wait_stderr(r"Listening on TCP")
            payload = os.urandom(64 << 10)
            if _echo(port, payload) != payload:
                raise HarnessError("echo through the wss-signaled tunnel differs")
            if client.stop(signal.SIGTERM, timeout=10) != 0:
                raise HarnessError("client did not exit cleanly")
            server.wait_stderr(r"ended \(0 active\)", timeout=10)
            if server.stop(signal.SIGTERM, timeout=10) != 0:
                raise HarnessError("server did not exit cleanly")
