"""The one adapter shape, on gevent: wait readable, drain, feed the core, flush once, re-arm one timer.

Why a greenlet per socket that drains and then flushes once: aioquic wants to be told about a whole batch of
datagrams before it is asked what to send (python-stack.md 1.2). Why ONE timer greenlet woken only when the deadline
moves earlier: the machine has exactly one next deadline (``get_timer()``); a timer that fires early is harmless
(nothing is due, it re-arms), so later deadlines need no wake-up at all.

Why our own read watcher instead of ``gevent.socket.wait_read(fd)``: wait_read makes a fresh watcher per call, so
nothing can wake a greenlet parked in it when the socket is closed (after nomination, or at the end). ``Hub.wait``
on a watcher we keep is the same primitive, and ``cancel_waits_close_and_then`` closes the fd only after the
waiter was woken - exactly what gevent's own socket.close does. No monkey-patching: gevent.socket objects only.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
from gevent import socket

from tunnel_core.types import Address
from tunnel_io import TIMER_SLACK

log = logging.getLogger("tunnel")

#: Datagrams read per wake-up before flushing, so one busy socket cannot starve the timer and the others.
DRAIN_LIMIT = 256
_TRANSIENT_SEND_ERRORS = {
    errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ECONNREFUSED, errno.EADDRNOTAVAIL,
    errno.EINVAL, errno.EPERM, errno.EAFNOSUPPORT,
}


def now() -> float:
    return time.monotonic()


class SocketClosed(OSError):
    """Thrown into a greenlet waiting on a socket that another greenlet closed."""


class Watched:
    """A non-blocking gevent socket plus the read watcher one greenlet waits on; ``close`` wakes that greenlet."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.hub = gevent.get_hub()
        self.watcher = self.hub.loop.io(sock.fileno(), 1)
        self.closed = False

    def wait_readable(self) -> bool:
        """Park until readable; False once the socket was closed."""
        if self.closed:
            return False
        try:
            self.hub.wait(self.watcher)
        except SocketClosed:
            return False
        return not self.closed

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.hub.cancel_waits_close_and_then([self.watcher], SocketClosed, self.sock.close)


class MachineDriver:
    """Drives one sans-IO machine (a Peer) over a set of UDP sockets keyed by their local address."""

    def __init__(self, machine: Any, sockets: dict[Address, socket.socket], on_event: Callable[[Any], None]) -> None:
        self.machine = machine
        self.sockets = {addr: Watched(sock) for addr, sock in sockets.items()}
        self.on_event = on_event
        self._deadline: float | None = None
        #: Never hand the machine a time before a timer we fired early (see _timer_loop).
        self._floor = 0.0
        self._timer_wake = gevent.event.Event()
        self._flush_wanted = gevent.event.Event()
        self._flushing = False
        self._closed = False
        self._greenlets: list[gevent.Greenlet] = []

    def now(self) -> float:
        """The monotonic clock, but never behind a timer fired early: machines need monotonic time."""
        t = now()
        return t if t > self._floor else self._floor

    def start(self) -> None:
        for addr, watched in self.sockets.items():
            self._greenlets.append(gevent.spawn(self._reader, addr, watched))
        self._greenlets.append(gevent.spawn(self._timer_loop))
        self._greenlets.append(gevent.spawn(self._flush_loop))

    # ---------------------------------------------------------------------------------------- the shape

    def _reader(self, addr: Address, watched: Watched) -> None:
        receive = self.machine.receive_datagram
        sock = watched.sock
        while not self._closed and watched.wait_readable():
            t = self.now()
            for _ in range(DRAIN_LIMIT):
                try:
                    data, remote = sock.recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    if watched.closed:
                        return
                    continue  # ICMP errors surface here on Linux (ECONNREFUSED); they say nothing the core needs
                receive(data, addr, (remote[0], remote[1]), t)
            self.flush()
            gevent.idle()  # let other greenlets run even when this socket never runs dry

    def kick_now(self) -> None:
        """Flush in the reading greenlet itself (see tunnel_trio's driver for why): waking the flush greenlet would
        cost a loop turn per interactive byte. A running flush absorbs the kick."""
        if not self._closed and not self._flushing:
            self.flush()

    def schedule_flush(self) -> None:
        """Coalesce many inputs (local socket greenlets) into one flush on the next turn of the loop; a kick from an
        event handler inside a flush is absorbed by that flush's own loop."""
        if not self._closed and not self._flushing:
            self._flush_wanted.set()

    def _flush_loop(self) -> None:
        while not self._closed:
            self._flush_wanted.wait()
            self._flush_wanted.clear()
            self.flush()

    def flush(self) -> None:
        """Hand every pending event to the adapter, then send everything the machine has, once.

        Event handlers may feed the machine (local data, credit), so the pair repeats only while handlers ran:
        in the common case datagrams_to_send is called exactly once per flush.
        """
        if self._closed:
            return
        self._flushing = True
        try:
            handled = self._drain_events()
            for _ in range(16):
                self._send(self.machine.datagrams_to_send(self.now()))
                handled = self._drain_events()
                if not handled:
                    break
        finally:
            self._flushing = False
        if handled:
            self.schedule_flush()  # the bound was reached: carry on on the next turn
        self._rearm()

    def _drain_events(self) -> int:
        handled = 0
        while not self._closed:
            ev = self.machine.next_event()
            if ev is None:
                break
            self.on_event(ev)
            handled += 1
        return handled

    def _send(self, transmits: list[Any]) -> int:
        n = 0
        for t in transmits:
            watched = self.sockets.get(t.local)
            if watched is None or watched.closed:
                continue
            try:
                watched.sock.sendto(t.data, t.remote)
                n += 1
            except (BlockingIOError, InterruptedError):
                pass  # QUIC and STUN both retransmit
            except OSError as exc:
                if exc.errno not in _TRANSIENT_SEND_ERRORS:
                    log.debug("send from %s to %s failed: %s", t.local, t.remote, exc)
        return n

    def _rearm(self) -> None:
        when = self.machine.get_timer()
        previous = self._deadline
        self._deadline = when
        if when is not None and (previous is None or when < previous):
            self._timer_wake.set()

    def _timer_loop(self) -> None:
        while not self._closed:
            when = self._deadline
            timeout = None if when is None else when - self.now()
            if timeout is None or timeout >= TIMER_SLACK:
                if self._timer_wake.wait(timeout):
                    self._timer_wake.clear()
                    continue  # re-armed earlier: recompute
                if self._closed:
                    return
                if self._deadline is None or self._deadline - self.now() >= TIMER_SLACK:
                    continue  # cleared or moved later while we slept
            self._timer_wake.clear()
            when, self._deadline = self._deadline, None
            if when is not None and when > self._floor:
                # A timer less than TIMER_SLACK away fires now, as if its moment had come: sleeping for it would
                # cost a hub wake-up, and handing the machine a time before it would leave it not due, the timer
                # re-armed at once - a spin.
                self._floor = when
            self.machine.handle_timer(self.now())
            self.flush()  # re-arms self._deadline
            gevent.idle()

    # ---------------------------------------------------------------------------------------- lifetime

    def keep_only(self, keep: Address) -> None:
        """After nomination only the selected socket matters; the others are closed (upstream does the same)."""
        for addr in list(self.sockets):
            if addr != keep:
                self.sockets.pop(addr).close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for watched in self.sockets.values():
            watched.close()
        self.sockets.clear()
        current = gevent.getcurrent()
        self._timer_wake.set()
        self._flush_wanted.set()
        gevent.killall([g for g in self._greenlets if g is not current], block=False)
