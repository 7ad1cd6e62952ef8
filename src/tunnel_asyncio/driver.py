"""The one adapter shape, on asyncio: wait readable, drain, feed the core, flush once, re-arm one timer.

Why not aioquic's own asyncio protocol: it transmits after every datagram; draining a socket and flushing once per
batch is about twice as fast (python-stack.md 1.2). Why raw non-blocking sockets with ``add_reader`` and not
DatagramProtocol: draining needs the socket itself. (A Proactor loop on Windows has no add_reader; that port would
feed datagrams from DatagramProtocol callbacks and schedule one flush per loop iteration - ``schedule_flush`` is
that seam.)
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

from tunnel_core.types import Address
from tunnel_io import TIMER_SLACK

log = logging.getLogger("tunnel")

#: Errors that mean "this path does not work right now" rather than "the program is broken" (upstream ignores them).
_TRANSIENT_SEND_ERRORS = {
    errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ECONNREFUSED, errno.EADDRNOTAVAIL,
    errno.EINVAL, errno.EPERM, errno.EAFNOSUPPORT,
}


class MachineDriver:
    """Drives one sans-IO machine (a Peer) over a set of UDP sockets keyed by their local address."""

    def __init__(
        self,
        machine: Any,
        sockets: dict[Address, socket.socket],
        on_event: Callable[[Any], None],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.machine = machine
        self.sockets = dict(sockets)
        self.on_event = on_event
        self.loop = loop or asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._flush_scheduled = False
        self._closed = False
        self._floor = 0.0
        for addr, sock in self.sockets.items():
            self.loop.add_reader(sock.fileno(), self._on_readable, addr, sock)

    def now(self) -> float:
        """Loop time, but never behind a timer we fired early (see _on_timer): machines need monotonic time."""
        t = self.loop.time()
        return t if t > self._floor else self._floor

    # ---------------------------------------------------------------------------------------- the shape

    def _on_readable(self, addr: Address, sock: socket.socket) -> None:
        now = self.now()
        receive = self.machine.receive_datagram
        for _ in range(256):  # bounded drain: other sockets and timers get their turn
            try:
                data, remote = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                # ICMP errors surface here on Linux (ECONNREFUSED); they say nothing the core needs.
                continue
            receive(data, addr, (remote[0], remote[1]), now)
        self.flush()

    def schedule_flush(self) -> None:
        """Coalesce many inputs (local socket callbacks) into one flush per loop iteration."""
        if not self._flush_scheduled and not self._closed:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def kick_now(self) -> None:
        """Flush at once for input from a local socket, unless a flush is running (it absorbs the kick) or queued.

        Why not schedule_flush: a call_soon costs one more loop iteration between a local read and the datagram
        that carries it, about 25 µs of added round-trip latency per tunnel process (benchmarks/README.md). Bulk
        reads are large, so flushing per read does not shrink packets.
        """
        if not self._flush_scheduled and not self._closed:
            self.flush()

    def flush(self) -> None:
        """Hand every pending event to the adapter, then send everything the machine has, once.

        Event handlers may feed the machine (local data, credit), so the pair repeats only while handlers ran:
        in the common case datagrams_to_send is called exactly once per flush. Kicks from those handlers are
        absorbed (the loop covers them) instead of costing another loop iteration and another flush.
        """
        if self._closed:
            self._flush_scheduled = False
            return
        self._flush_scheduled = True
        try:
            handled = self._drain_events()
            for _ in range(16):
                self._send(self.machine.datagrams_to_send(self.now()))
                handled = self._drain_events()
                if not handled:
                    break
        finally:
            self._flush_scheduled = False
        if handled:
            self.schedule_flush()  # the bound was reached: carry on in the next loop iteration
        self._rearm()

    def _drain_events(self) -> int:
        handled = 0
        while True:
            ev = self.machine.next_event()
            if ev is None:
                return handled
            self.on_event(ev)
            handled += 1

    def _send(self, transmits: list[Any]) -> int:
        n = 0
        for t in transmits:
            sock = self.sockets.get(t.local)
            if sock is None:
                continue
            try:
                sock.sendto(t.data, t.remote)
                n += 1
            except (BlockingIOError, InterruptedError):
                pass  # QUIC and STUN both retransmit
            except OSError as exc:
                if exc.errno not in _TRANSIENT_SEND_ERRORS:
                    log.debug("send from %s to %s failed: %s", t.local, t.remote, exc)
        return n

    def _rearm(self) -> None:
        when = self.machine.get_timer()
        if when == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is None:
            return
        if when - self.now() < TIMER_SLACK:
            self._timer = self.loop.call_soon(self._on_timer)
        else:
            self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        when = self._timer_at
        self._timer = None
        self._timer_at = None
        if self._closed:
            return
        if when is not None and when > self._floor:
            # A timer less than TIMER_SLACK away fires now, as if its moment had come: waiting for it would cost
            # a loop wake-up (asyncio's granularity) and spinning until it is due would burn the CPU.
            self._floor = when
        self.machine.handle_timer(self.now())
        self.flush()

    # ---------------------------------------------------------------------------------------- lifetime

    def keep_only(self, keep: Address) -> None:
        """After nomination only the selected socket matters; the others are closed (upstream does the same)."""
        for addr in list(self.sockets):
            if addr != keep:
                sock = self.sockets.pop(addr)
                self.loop.remove_reader(sock.fileno())
                sock.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for sock in self.sockets.values():
            try:
                self.loop.remove_reader(sock.fileno())
            except (ValueError, OSError):
                pass
            sock.close()
        self.sockets.clear()
