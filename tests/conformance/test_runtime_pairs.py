"""Every runtime adapter must carry the same traffic the same way, also against a different runtime on the other end.

The flows are written once (tunnel_core.dialogue), but each adapter carries out the forwarding session's events in its
own idiom: dials, write queues, half-close, pause/resume, UDP sockets. These scenarios run through real CLI processes
(``python -m tunnel_<runtime>.cli server|client manual ...``, OFFER/ANSWER piped between them, loopback only) for all
nine (server runtime, client runtime) pairs, so a difference between adapters shows up as a failing pair.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from e2e.harness import ManualTunnel
from e2e.programs import LOOPBACK, TcpEchoServer, UdpEchoServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

RUNTIMES = ("asyncio", "trio", "gevent")
PAIRS = [pytest.param(server, client, id=f"{server}-server-{client}-client") for server in RUNTIMES
         for client in RUNTIMES]

#: Bytes per connection: above the session's 1 MiB high-water mark, so PauseReading/ResumeReading and the
#: write-pending credit path are exercised, small enough to keep the nine pairs quick.
TCP_PAYLOAD = 3 << 20
TCP_CONNECTIONS = 3


def _echo_through(port: int, payload: bytes) -> bytes:
    """Send ``payload``, half-close, read the echo to EOF (the echo server half-closes after our EOF).

    Sending runs in its own thread: an echo cannot be read back only after everything was sent without the
    buffers of the tunnel filling up and both ends waiting on each other.
    """
    with socket.create_connection((LOOPBACK, port), timeout=20) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        errors: list[BaseException] = []

        def send() -> None:
            try:
                view = memoryview(payload)
                for offset in range(0, len(view), 256 << 10):
                    sock.sendall(view[offset : offset + (256 << 10)])
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


class GreetThenListenServer:
    """Speaks first and half-closes at once, then reads the client's upload to EOF and records what arrived.

    The client can only see the greeting's EOF while still sending if the tunnel turns the server's FIN into a
    ``shutdown(SHUT_WR)`` on the client's local socket (a close would be caught by the upload failing, a no-op by
    the EOF never arriving).
    """

    GREETING = b"hello, then half-close\n"

    def __init__(self) -> None:
        self.listener = socket.create_server((LOOPBACK, 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.received: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> GreetThenListenServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(20)
                try:
                    conn.sendall(self.GREETING)
                    conn.shutdown(socket.SHUT_WR)
                    digest, count = hashlib.sha256(), 0
                    while data := conn.recv(1 << 20):
                        digest.update(data)
                        count += len(data)
                except OSError:
                    continue
                self.received.append((count, digest.hexdigest()))


def _greeting_then_upload(port: int, payload: bytes) -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        chunks = []
        while data := sock.recv(65536):  # ends only if the server's half-close reached us
            chunks.append(data)
        sock.sendall(payload)  # our direction is still open
        sock.shutdown(socket.SHUT_WR)
        return b"".join(chunks)


@pytest.mark.parametrize(("server_rt", "client_rt"), PAIRS)
def test_server_half_closes_first(server_rt: str, client_rt: str) -> None:
    payload = os.urandom(256 << 10)
    with GreetThenListenServer() as server, ManualTunnel(
        f"tcp://{LOOPBACK}:{server.port}", server_runtime=server_rt, client_runtime=client_rt
    ) as t:
        assert _greeting_then_upload(t.local_port, payload) == GreetThenListenServer.GREETING, t.logs()
        deadline = time.monotonic() + 10
        while not server.received and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.received == [(len(payload), hashlib.sha256(payload).hexdigest())], t.logs()
        t.assert_alive()
        t.assert_clean_exit()


@pytest.mark.parametrize(("server_rt", "client_rt"), PAIRS)
def test_tcp_echo_with_half_close(server_rt: str, client_rt: str) -> None:
    payloads = [os.urandom(TCP_PAYLOAD) for _ in range(TCP_CONNECTIONS)]
    with TcpEchoServer() as echo, ManualTunnel(
        f"tcp://{LOOPBACK}:{echo.port}", server_runtime=server_rt, client_runtime=client_rt
    ) as t:
        assert t.client is not None and t.server is not None
        assert "Connected to server over QUIC." in t.client.stderr, t.logs()
        # A tiny exchange first: one byte each way, then the half-close round trip on a fresh connection.
        assert _echo_through(t.local_port, b"x") == b"x", t.logs()
        with ThreadPoolExecutor(TCP_CONNECTIONS) as pool:
            results = list(pool.map(lambda p: _echo_through(t.local_port, p), payloads))
        for sent, got in zip(payloads, results, strict=True):
            assert len(got) == len(sent), f"echoed {len(got)} of {len(sent)} bytes\n{t.logs()}"
            assert hashlib.sha256(got).digest() == hashlib.sha256(sent).digest(), t.logs()
        t.assert_alive()
        assert "Client connected over QUIC." in t.server.stderr, t.logs()
        t.assert_clean_exit()


@pytest.mark.parametrize(("server_rt", "client_rt"), PAIRS)
def test_udp_echo_two_local_peers(server_rt: str, client_rt: str) -> None:
    with UdpEchoServer(b"echo:") as echo, ManualTunnel(
        f"udp://{LOOPBACK}:{echo.port}", server_runtime=server_rt, client_runtime=client_rt
    ) as t:
        peers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        try:
            for sock in peers:
                sock.bind((LOOPBACK, 0))
                sock.settimeout(0.5)
            for round_no in range(5):
                for index, sock in enumerate(peers):
                    message = f"peer{index}-round{round_no}".encode()
                    assert _udp_exchange(sock, t.local_address, message) == b"echo:" + message, t.logs()
        finally:
            for sock in peers:
                sock.close()
        # Each local peer is its own flow, so the server side used one target socket per peer.
        assert len(echo.peers) == 2, f"echo server saw {sorted(echo.peers)}\n{t.logs()}"
        t.assert_alive()
        t.assert_clean_exit()


def _udp_exchange(sock: socket.socket, address: tuple[str, int], message: bytes, tries: int = 10) -> bytes:
    """One request/reply; UDP may drop, so the request is resent a bounded number of times."""
    for _ in range(tries):
        sock.sendto(message, address)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            try:
                data, _ = sock.recvfrom(65536)
            except TimeoutError:
                break
            if data.endswith(message):
                return data
    raise AssertionError(f"no reply to {message!r} after {tries} tries")
