"""The reference reactor: the whole tunnel_io contract on ``selectors``, with no runtime at all.

Why it exists: the contract (tunnel_io.reactor) is defined by what this small loop does, the contract suite
(tests/io/test_reactor_contract.py) runs the same test bodies on it and on every runtime, and the neutral pieces
(driver, local forwarding, happy eyeballs, relays, the flow runner) are tested once on it.
"""

from __future__ import annotations

import collections
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from tunnel_io.reactor import AlarmTimers


class SelectWatch:
    def __init__(self, reactor: SelectReactor, sock: Any, on_readable: Callable[[], None],
                 on_writable: Callable[[], None]) -> None:
        self.reactor = reactor
        self.sock = sock
        self.on_readable = on_readable
        self.on_writable = on_writable
        self.mask = 0
        self.closed = False

    def want(self, *, read: bool, write: bool) -> None:
        if self.closed:
            return
        mask = (selectors.EVENT_READ if read else 0) | (selectors.EVENT_WRITE if write else 0)
        if mask == self.mask:
            return
        selector = self.reactor.selector
        if self.mask and mask:
            selector.modify(self.sock, mask, self)
        elif mask:
            selector.register(self.sock, mask, self)
        else:
            selector.unregister(self.sock)
        self.mask = mask

    def close(self) -> None:
        if self.closed:
            return
        self.want(read=False, write=False)
        self.closed = True
        self.sock.close()


class SelectReactor:
    """A single-threaded loop; ``run_until(predicate, timeout)`` turns it until the predicate holds."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.time = time.monotonic
        self._timers = AlarmTimers(lambda _when: None)
        self.call_at = self._timers.call_at
        self._soon: collections.deque[Callable[[], None]] = collections.deque()
        self._from_threads: collections.deque[Callable[[], None]] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self.thread = threading.get_ident()

    def call_soon(self, fn: Callable[[], None]) -> None:
        self._soon.append(fn)

    defer = call_soon

    def watch(self, sock: Any, on_readable: Callable[[], None], on_writable: Callable[[], None]) -> SelectWatch:
        return SelectWatch(self, sock, on_readable, on_writable)

    def run_blocking(self, fn: Callable[[], Any], done: Callable[[bool, Any], None], *, subject: Any = None) -> None:
        def work() -> None:
            try:
                ok, value = True, fn()
            except Exception as exc:
                ok, value = False, exc
            self._from_threads.append(lambda: done(ok, value))
            try:
                self._wake_w.send(b"x")
            except OSError:  # the reactor was closed meanwhile
                pass

        threading.Thread(target=work, name="tunnel-blocking", daemon=True).start()

    def run_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Turn the loop until ``predicate()`` holds (True) or ``timeout`` passed (False)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            now = time.monotonic()
            if now >= deadline:
                return False
            self._turn(deadline)
        return True

    def _turn(self, deadline: float) -> None:
        # A callback from a thread may be what run_until's predicate waits for: after one, poll without blocking,
        # so the predicate is looked at again at once (not after a select() that sleeps until the deadline).
        ran = bool(self._from_threads)
        while self._from_threads:
            self._from_threads.popleft()()
        if self._soon or ran:
            wait = 0.0
        else:
            when = self._timers.next_deadline()
            wait = max(0.0, min(deadline, when if when is not None else deadline) - time.monotonic())
        for key, events in self.selector.select(wait):
            watch = key.data
            if watch is None:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except BlockingIOError:
                    pass
                continue
            if events & selectors.EVENT_READ and watch.mask & selectors.EVENT_READ and not watch.closed:
                watch.on_readable()
            if events & selectors.EVENT_WRITE and watch.mask & selectors.EVENT_WRITE and not watch.closed:
                watch.on_writable()
        self._timers.fire(time.monotonic())
        for _ in range(len(self._soon)):
            self._soon.popleft()()

    def close(self) -> None:
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()
