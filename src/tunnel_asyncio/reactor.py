"""tunnel_io's reactor on asyncio (and uvloop): ``add_reader``/``add_writer`` callbacks and the loop's own timers.

Why ``add_reader`` and not transports or ``await`` on readiness: the neutral layer drains sockets itself, and a
callback per readiness is the cheapest shape asyncio has (18.8 µs per ping-pong against 88 µs for an awaited
wait, adapters-study.md). uvloop has the same methods. (A Proactor loop on Windows has no ``add_reader``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any


class AsyncioWatch:
    __slots__ = ("_fd", "_loop", "_on_readable", "_on_writable", "_reading", "_sock", "_writing")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: Any, on_readable: Callable[[], None],
                 on_writable: Callable[[], None]) -> None:
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._on_readable = on_readable
        self._on_writable = on_writable
        self._reading = False
        self._writing = False

    def want(self, *, read: bool, write: bool) -> None:
        if self._fd < 0:
            return
        if read != self._reading:
            self._reading = read
            if read:
                self._loop.add_reader(self._fd, self._on_readable)
            else:
                self._loop.remove_reader(self._fd)
        if write != self._writing:
            self._writing = write
            if write:
                self._loop.add_writer(self._fd, self._on_writable)
            else:
                self._loop.remove_writer(self._fd)

    def close(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(ValueError, OSError, RuntimeError):  # RuntimeError: the loop is already closed
            self.want(read=False, write=False)
        self._fd = -1
        self._sock.close()


class AsyncioReactor:
    """The running loop as a tunnel_io reactor (build it inside the loop, or pass the loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.time = self.loop.time
        self.call_at = self.loop.call_at

    def call_soon(self, fn: Callable[[], None]) -> None:
        self.loop.call_soon(fn)

    defer = call_soon

    def run_blocking(self, fn: Callable[[], Any], done: Callable[[bool, Any], None], *, subject: Any = None) -> None:
        """A daemon thread, not the default executor: asyncio.run() joins the executor's threads at exit, and a
        thread parked in stdin's readline() would keep a Ctrl-C'd process alive until the user pressed Enter."""
        loop = self.loop

        def work() -> None:
            try:
                ok, value = True, fn()
            except Exception as exc:
                ok, value = False, exc
            with contextlib.suppress(RuntimeError):  # the loop is gone: the program is exiting
                loop.call_soon_threadsafe(done, ok, value)

        threading.Thread(target=work, name="tunnel-blocking", daemon=True).start()

    def watch(self, sock: Any, on_readable: Callable[[], None], on_writable: Callable[[], None]) -> AsyncioWatch:
        return AsyncioWatch(self.loop, sock, on_readable, on_writable)
