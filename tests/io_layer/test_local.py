"""tunnel_io.local's TCP flow, tested once on the reference reactor with real loopback sockets and a stand-in for
the forwarding session (what the session decides is tested in test_forwarding_session.py)."""

from __future__ import annotations

import socket
import time

from tunnel_core.forwarding import events as fe
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


