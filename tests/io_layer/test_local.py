"""tunnel_io.local's TCP flow, tested once on the reference reactor with real loopback sockets and a stand-in for
the forwarding session (what the session decides is tested in test_forwarding_session.py)."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from tunnel_core.forwarding import events as fe
from tunnel_core.forwarding.durable import DurableStream
from tunnel_io.local import LocalForwarder
from tunnel_io.testing import SelectReactor


class Session:
    """The session's adapter-facing half, recording reports."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False
        self.pending: list[int] = []
        self.reset = False

    def open_tcp(self, now: float) -> int:
        return 4

    def flow_data(self, flow_id: int, data: bytes) -> None:
        self.data += data

    def flow_eof(self, flow_id: int) -> None:
        self.eof = True

    def flow_write_pending(self, flow_id: int, pending: int) -> None:
        self.pending.append(pending)

    def flow_reset(self, flow_id: int) -> None:
        self.reset = True


def _setup() -> tuple[SelectReactor, Session, LocalForwarder, socket.socket]:
    reactor = SelectReactor()
    session = Session()
    fwd = LocalForwarder(reactor, lambda: session, lambda: None, time.monotonic)
    host, port = fwd.listen_tcp("127.0.0.1", 0)
    user = socket.create_connection((host, port), timeout=5)
    assert reactor.run_until(lambda: 4 in fwd.tcp, 5)
    return reactor, session, fwd, user


def test_half_close_each_way_keeps_the_other_direction() -> None:
    reactor, session, fwd, user = _setup()
    user.sendall(b"hello")
    user.shutdown(socket.SHUT_WR)
    assert reactor.run_until(lambda: session.eof, 5)
    assert bytes(session.data) == b"hello"
    fwd.handle(fe.SendTcp(4, b"still flowing back"))
    fwd.handle(fe.ShutdownTcpWrite(4))  # after exactly the queued bytes
    assert fwd.unwritten and not session.pending  # a batch's writes wait for the end of the batch...
    fwd.flush_writes()  # ...which the driver announces (PeerDriver.on_events_done)
    received = b""
    user.settimeout(5)
    while chunk := user.recv(100):
        received += chunk
    assert received == b"still flowing back"
    assert session.pending[-1] == 0 and not session.reset
    user.close()
    fwd.close()
    reactor.close()


def test_pause_stops_reading_until_resume() -> None:
    reactor, session, fwd, user = _setup()
    fwd.handle(fe.PauseReading(4))
    user.sendall(b"x" * 1000)
    reactor.run_until(lambda: False, 0.2)
    assert session.data == b""  # readable, but paused: nothing read
    fwd.handle(fe.ResumeReading(4))
    assert reactor.run_until(lambda: len(session.data) == 1000, 5)
    user.close()
    fwd.close()
    reactor.close()


def test_unwritten_bytes_are_reported_as_pending_and_drained() -> None:
    reactor, session, fwd, user = _setup()
    big = b"y" * (64 << 20)
    fwd.handle(fe.SendTcp(4, big))
    fwd.flush_writes()
    assert session.pending and session.pending[0] > 0  # the kernel could not take 64 MiB at once
    got = [0]
    finished: list[bool] = []

    def read_all() -> None:
        user.settimeout(20)
        while got[0] < len(big) and (chunk := user.recv(1 << 20)):
            got[0] += len(chunk)

    # The reader runs in the reactor's blocking-work thread, whose end wakes the loop: a plain thread's reads are
    # invisible to the loop, which then slept in select() until run_until's deadline after its last write.
    reactor.run_blocking(read_all, lambda ok, value: finished.append(ok))
    assert reactor.run_until(lambda: bool(finished), 30), got[0]
    assert finished == [True] and got[0] == len(big), got[0]
    assert session.pending[-1] == 0  # all written: the credit came back
    user.close()
    fwd.close()
    reactor.close()


def test_abort_resets_the_local_connection() -> None:
    reactor, _session, fwd, user = _setup()
    fwd.handle(fe.AbortTcp(4))
    user.settimeout(5)
    try:
        data = user.recv(10)
    except ConnectionResetError:
        data = None
    assert data is None  # RST (SO_LINGER 0), not an orderly EOF
    assert 4 not in fwd.tcp
    user.close()
    fwd.close()
    reactor.close()




class DynamicSession(Session):
    """A session with a dynamic forward and durable streams: each CONNECT gets a stream that is not resumable
    until the test gives it a key (the server's acceptance, in the real session)."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: dict[int, DurableStream] = {}

    def open_dynamic(self, now: float, forward: int, source: str) -> int:
        flow_id = 4 * (len(self.streams) + 1)
        self.streams[flow_id] = DurableStream(None)
        return flow_id

    def durable_stream(self, flow_id: int) -> DurableStream | None:
        return self.streams.get(flow_id)


def _socks_connect(port: int) -> socket.socket:
    """Greeting and CONNECT 127.0.0.1:80 at once (the reactor runs only when the test lets it)."""
    user = socket.create_connection(("127.0.0.1", port), timeout=5)
    user.sendall(b"\x05\x01\x00" b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50")
    return user


def test_a_socks_connection_is_held_across_a_reconnect_only_once_the_server_accepted_it(
        caplog: pytest.LogCaptureFixture) -> None:
    """Durable streams (docs/durable.md): at a reconnect (``detach``) a SOCKS5 connection whose target the server
    accepted waits for the next tunnel; one still waiting for the answer is reset with one line."""
    reactor = SelectReactor()
    session = DynamicSession()
    fwd = LocalForwarder(reactor, lambda: session, lambda: None, time.monotonic)
    _host, port = fwd.listen_socks("127.0.0.1", 0, 1, None)
    waiting = _socks_connect(port)
    assert reactor.run_until(lambda: 4 in fwd.tcp, 5)
    accepted = _socks_connect(port)
    assert reactor.run_until(lambda: 8 in fwd.tcp, 5)
    session.streams[8].key = 1  # the server accepted this one's target
    fwd.handle(fe.DynamicReply(8, 0))
    fwd.flush_writes()  # the end of the batch (PeerDriver.on_events_done)
    accepted.settimeout(5)
    assert _read(accepted, 12) == b"\x05\x00" b"\x05\x00\x00\x01" + bytes(6)  # no auth; CONNECT succeeded
    held = fwd.tcp[8]
    with caplog.at_level(logging.WARNING, "tunnel_io.local"):
        fwd.detach()
    lines = [r.getMessage() for r in caplog.records if "reset" in r.getMessage()]
    assert lines == [f"Connection from 127.0.0.1:{waiting.getsockname()[1]} reset: the tunnel was lost"]
    waiting.settimeout(5)
    assert waiting.recv(2) == b"\x05\x00"  # the method reply, then no CONNECT reply:
    try:
        data = waiting.recv(10)
    except ConnectionResetError:
        data = None
    assert data is None  # RST
    assert held.held and not held.finished  # the accepted one waits for the next tunnel
    held.release(abort=True)
    for sock in (waiting, accepted):
        sock.close()
    fwd.close()
    reactor.close()


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n and (chunk := sock.recv(n - len(data))):
        data += chunk
    return data
