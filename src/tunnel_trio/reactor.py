"""tunnel_io's reactor on trio: a task per armed readiness direction, one alarm task, one "soon" task.

trio has no readiness callbacks, only ``wait_readable``/``wait_writable`` in a task, so an armed direction is a task
that waits and calls back, and disarming cancels it (trio unregisters the wait synchronously on cancel, so the same
socket can be watched anew at once). Timers are ``tunnel_io.reactor.AlarmTimers`` over ONE task whose cancel-scope
deadline is moved - trio's cheap re-arm. ``call_soon`` queues into a task woken by an Event rather than using
``run_sync_soon``, so an exception in a callback fails the runner's nursery like any task (not trio itself).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from tunnel_io.reactor import AlarmTimers


class TrioWatch:
    def __init__(self, reactor: TrioReactor, sock: Any, on_readable: Callable[[], None],
                 on_writable: Callable[[], None]) -> None:
        self._reactor = reactor
        self._sock = sock
        self._on_readable = on_readable
        self._on_writable = on_writable
        self._read: trio.CancelScope | None = None
        self._write: trio.CancelScope | None = None
        self._closed = False

    def want(self, *, read: bool, write: bool) -> None:
        if self._closed:
            return
        if read != (self._read is not None):
            self._read = self._arm(trio.lowlevel.wait_readable, self._on_readable) if read else _cancel(self._read)
        if write != (self._write is not None):
            self._write = self._arm(trio.lowlevel.wait_writable, self._on_writable) if write else _cancel(self._write)

    def _arm(self, wait: Callable[[Any], Awaitable[None]], callback: Callable[[], None]) -> trio.CancelScope:
        scope = trio.CancelScope()
        sock = self._sock

        async def waiter() -> None:
            with scope:
                while not self._closed and not scope.cancel_called:  # disarmed before it ran: never register
                    try:
                        await wait(sock)
                    except (trio.ClosedResourceError, OSError, ValueError):  # ValueError: fd -1, closed meanwhile
                        return
                    callback()

        self._reactor.nursery.start_soon(waiter)
        return scope

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._read = _cancel(self._read)
        self._write = _cancel(self._write)
        if self._sock.fileno() != -1:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()


def _cancel(scope: trio.CancelScope | None) -> None:
    if scope is not None:
        scope.cancel()


class TrioReactor:
    """Lives in ``nursery`` (the runner's); ``start()`` spawns the alarm and soon tasks."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.time = trio.current_time
        self._timers = AlarmTimers(self._set_alarm)
        self.call_at = self._timers.call_at
        self._deadline = math.inf
        self._alarm_scope: trio.CancelScope | None = None
        self._soon: list[Callable[[], None]] = []
        self._soon_wake = trio.Event()

    def start(self) -> None:
        self.nursery.start_soon(self._alarm_task)
        self.nursery.start_soon(self._soon_task)

    def _set_alarm(self, when: float | None) -> None:
        self._deadline = math.inf if when is None else when
        if self._alarm_scope is not None:
            self._alarm_scope.deadline = self._deadline

    async def _alarm_task(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._deadline) as scope:
                self._alarm_scope = scope
                await trio.sleep_forever()
            self._alarm_scope = None
            self._timers.fire(trio.current_time())

    def call_soon(self, fn: Callable[[], None]) -> None:
        self._soon.append(fn)
        self._soon_wake.set()

    async def _soon_task(self) -> None:
        while True:
            await self._soon_wake.wait()
            self._soon_wake = trio.Event()
            batch, self._soon = self._soon, []
            for fn in batch:
                fn()

    defer = call_soon

    def run_blocking(self, fn: Callable[[], Any], done: Callable[[bool, Any], None], *, subject: Any = None) -> None:
        async def work() -> None:
            try:
                ok, value = True, await trio.to_thread.run_sync(fn, abandon_on_cancel=True)
            except Exception as exc:
                ok, value = False, exc
            done(ok, value)

        self.nursery.start_soon(work)

    def watch(self, sock: Any, on_readable: Callable[[], None], on_writable: Callable[[], None]) -> TrioWatch:
        return TrioWatch(self, sock, on_readable, on_writable)
