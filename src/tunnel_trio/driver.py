"""The one adapter shape, on trio: wait readable, drain, feed the core, flush once, re-arm one timer.

Why a task per socket that drains and then flushes once: aioquic wants to be told about a whole batch of
datagrams before it is asked what to send, which halves the send calls compared to flushing per datagram
(python-stack.md 1.2). Why ONE timer task with a movable deadline instead of a task per timer: the machine only
ever has one next deadline (``get_timer()``), and moving a cancel scope's deadline is trio's cheap "re-arm".
Why a flush task woken by an Event: local socket tasks report many small things in one scheduling batch; one flush
afterwards sends them together (the trio equivalent of asyncio's ``call_soon`` coalescing).
"""

from __future__ import annotations

import errno
import logging
import math
import socket
from collections.abc import Callable
from typing import Any

import trio

from tunnel_core.types import Address
from tunnel_io import TIMER_SLACK

log = logging.getLogger("tunnel")

#: Datagrams read per wake-up before flushing, so one busy socket cannot starve the timer and the others.
DRAIN_LIMIT = 256
#: Errors that mean "this path does not work right now" rather than "the program is broken" (upstream ignores them).
_TRANSIENT_SEND_ERRORS = {
    errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ECONNREFUSED, errno.EADDRNOTAVAIL,
    errno.EINVAL, errno.EPERM, errno.EAFNOSUPPORT,
}


def close_socket(sock: socket.socket) -> None:
    """Trio must be told before an fd it may be waiting on disappears; otherwise the waiter hangs or misfires."""
    if sock.fileno() == -1:
        return
    trio.lowlevel.notify_closing(sock)
    sock.close()


class MachineDriver:
    """Drives one sans-IO machine (a Peer) over a set of UDP sockets keyed by their local address.

    ``start(nursery)`` spawns the socket tasks, the timer task and the flush task; ``close()`` stops them.
    Everything else is synchronous, so event handlers may call ``flush``/``schedule_flush`` from any task.
    """

    def __init__(self, machine: Any, sockets: dict[Address, socket.socket], on_event: Callable[[Any], None]) -> None:
        self.machine = machine
        self.sockets = dict(sockets)
        self.on_event = on_event
        self._scope = trio.CancelScope()
        self._timer_scope: trio.CancelScope | None = None
        self._deadline = math.inf
        #: The machine's timer the timer task will fire (``_deadline`` may say "at once" instead).
        self._timer_at: float | None = None
        #: Never hand the machine a time before a timer we fired early (see _timer_task).
        self._floor = -math.inf
        self._flush_wanted = trio.Event()
        self._flushing = False
        self._closed = False

    def now(self) -> float:
        """trio's clock, but never behind a timer fired early: machines need monotonic time."""
        t = trio.current_time()
        return t if t > self._floor else self._floor

    def start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._run)

    async def _run(self) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                for addr, sock in self.sockets.items():
                    nursery.start_soon(self._reader, addr, sock)
                nursery.start_soon(self._timer_task)
                nursery.start_soon(self._flush_task)

    # ---------------------------------------------------------------------------------------- the shape

    async def _reader(self, addr: Address, sock: socket.socket) -> None:
        receive = self.machine.receive_datagram
        while not self._closed and sock.fileno() != -1:
            try:
                await trio.lowlevel.wait_readable(sock)
            except (trio.ClosedResourceError, OSError):
                return  # keep_only/close closed this socket under us
            now = self.now()
            for _ in range(DRAIN_LIMIT):
                try:
                    data, remote = sock.recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    if sock.fileno() == -1:
                        return
                    continue  # ICMP errors surface here on Linux (ECONNREFUSED); they say nothing the core needs
                receive(data, addr, (remote[0], remote[1]), now)
            self.flush()
            # Let other tasks run even when this socket never runs dry.
            await trio.lowlevel.checkpoint()

    def kick_now(self) -> None:
        """Flush at once for input from a local socket, unless a flush is running (it absorbs the kick).

        Why not schedule_flush: waking the flush task costs one more scheduling round between a local read and the
        datagram that carries it, added round-trip latency for every interactive byte (benchmarks/README.md).
        Bulk reads are large, so flushing per read does not shrink packets.
        """
        if not self._closed and not self._flushing:
            self.flush()

    def schedule_flush(self) -> None:
        """Coalesce many inputs (local socket tasks) into one flush after the current scheduling batch; a kick from
        an event handler inside a flush is absorbed by that flush's own loop."""
        if not self._closed and not self._flushing:
            self._flush_wanted.set()

    async def _flush_task(self) -> None:
        while not self._closed:
            await self._flush_wanted.wait()
            self._flush_wanted = trio.Event()
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
            self.schedule_flush()  # the bound was reached: carry on after this batch
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
            sock = self.sockets.get(t.local)
            if sock is None or sock.fileno() == -1:
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
        self._timer_at = when
        if when is None:
            deadline = math.inf
        elif when - self.now() < TIMER_SLACK:
            deadline = -math.inf  # due now: the timer task fires at its next checkpoint
        else:
            deadline = when
        self._deadline = deadline
        if self._timer_scope is not None:
            self._timer_scope.deadline = deadline

    async def _timer_task(self) -> None:
        while not self._closed:
            with trio.CancelScope(deadline=self._deadline) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            if self._closed:
                return
            when = self._timer_at
            if when is None or when - self.now() >= TIMER_SLACK:
                # Re-armed later (or cleared) between the deadline passing and this task running: not due. Only a
                # due timer may move the floor, or the machine would see time jump ahead (spurious losses).
                continue
            self._timer_at = None
            self._deadline = math.inf
            if when > self._floor:
                # A timer less than TIMER_SLACK away fires now, as if its moment had come: waiting for it would
                # cost a scheduler wake-up and handing the machine a time before it would leave it not due, the
                # timer re-armed at once - a spin.
                self._floor = when
            self.machine.handle_timer(self.now())
            self.flush()  # re-arms self._deadline

    # ---------------------------------------------------------------------------------------- lifetime

    def keep_only(self, keep: Address) -> None:
        """After nomination only the selected socket matters; the others are closed (upstream does the same)."""
        for addr in list(self.sockets):
            if addr != keep:
                close_socket(self.sockets.pop(addr))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._scope.cancel()
        for sock in self.sockets.values():
            close_socket(sock)
        self.sockets.clear()
