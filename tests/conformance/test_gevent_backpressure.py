"""PauseReading must take effect on gevent even when the local socket never runs dry (tunnel_io's forwarder on the
gevent reactor, with the flush in another greenlet as the worst case).

gevent's ``recv`` returns at once, without a switch to the hub, while the socket holds data. A reader greenlet that
did not yield after each chunk therefore ran for as long as a fast local sender kept the socket non-empty: the
coalesced flush that carries PauseReading to it (and sends QUIC) never ran, the QUIC send buffer grew by hundreds of
MiB and iperf3 through a gevent tunnel collapsed to 0-0.3 MiB/s in about one run in four. Here the local socket is
filled before the forwarder reads it, which is exactly that condition, deterministically and in a fraction of a
second. Loopback only.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from e2e.programs import LOOPBACK
from tunnel_core.forwarding import events as fe

pytestmark = [pytest.mark.timeout(30)]

FLOW_ID = 0
#: Bytes read before the stand-in session asks for a pause (the real session's high-water mark, scaled down).
HIGH_WATER = 64 << 10
WAIT = 10.0


class StandInSession:
    """The forwarding session's adapter-facing half: records what was read and pauses above ``HIGH_WATER``."""

    def __init__(self) -> None:
        self.read = 0
        self.read_when_paused: int | None = None
        self.eof = False
        self.events: list[Any] = []

    def open_tcp(self, now: float) -> int:
        return FLOW_ID

    def flow_data(self, flow_id: int, data: bytes) -> None:
        self.read += len(data)
        if self.read_when_paused is None and self.read > HIGH_WATER:
            self.read_when_paused = self.read
            self.events.append(fe.PauseReading(flow_id))

    def flow_eof(self, flow_id: int) -> None:
        self.eof = True

    def flow_write_pending(self, flow_id: int, pending: int) -> None:
        pass

    def flow_reset(self, flow_id: int) -> None:
        raise AssertionError("the local connection must not fail")


def _prefill(sock: socket.socket) -> int:
    """Queue as much as the kernel takes without anyone reading (several MiB on loopback)."""
    sock.setblocking(False)
    chunk = b"\xa5" * (64 << 10)
    total = 0
    while True:
        try:
            total += sock.send(chunk)
        except BlockingIOError:
            return total


def test_pause_reading_holds_while_the_local_socket_stays_readable() -> None:
    import gevent
    import gevent.event

    from tunnel_gevent.reactor import GeventReactor
    from tunnel_io.local import READ_SIZE, LocalForwarder

    session = StandInSession()
    kicked = gevent.event.Event()

    def flush_loop() -> None:
        """The driver's coalesced flush, reduced to what matters here: hand queued events to the forwarder."""
        while True:
            kicked.wait()
            kicked.clear()
            while session.events:
                fwd.handle(session.events.pop(0))

    fwd = LocalForwarder(GeventReactor(), lambda: session, kicked.set, time.monotonic)
    flusher = gevent.spawn(flush_loop)
    sender = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sender.connect(fwd.listen_tcp(LOOPBACK, 0))
        queued = _prefill(sender)
        assert queued >= HIGH_WATER + 4 * READ_SIZE, f"the kernel took only {queued} bytes; the test needs more"

        with gevent.Timeout(WAIT, AssertionError("PauseReading was never requested")):
            while session.read_when_paused is None:
                gevent.sleep(0.01)
        gevent.sleep(0.2)  # ample time for a reader that ignores the pause to read on
        assert session.read_when_paused is not None
        # A prompt pause allows at most the chunk a reader was already waiting for.
        assert session.read <= session.read_when_paused + READ_SIZE, (
            f"read {session.read} of {queued} queued bytes although the pause came after {session.read_when_paused}"
        )
        assert session.read < queued

        session.events.append(fe.ResumeReading(FLOW_ID))
        kicked.set()
        sender.shutdown(socket.SHUT_WR)
        with gevent.Timeout(WAIT, AssertionError(f"after ResumeReading only {session.read} of {queued} bytes")):
            while not session.eof:
                gevent.sleep(0.01)
        assert session.read == queued
    finally:
        sender.close()
        fwd.close()
        flusher.kill(block=False)
