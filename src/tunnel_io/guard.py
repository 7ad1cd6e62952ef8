"""A reactor wrapper that turns an exception escaping a callback into the end of the run, not a hang.

Why: every runtime treats an exception raised by a readiness or timer callback its own way - asyncio logs "Exception
in callback" and carries on, gevent prints the greenlet's traceback and carries on, trio tears down the task - and in
the first two the tunnel is then half-dead: a driver that stopped flushing, a listener nobody accepts on, a process
that never exits. The dialogue runner wraps the reactor it is given in a :class:`GuardedReactor`, so a bug anywhere
in the I/O layer or the core ends the run through the runner's own orderly close, and the CLI prints one line
(``Error: internal error: ...``, exit 1) like any other crash. The wrapper costs one Python call per callback,
taken once per watch or timer, not per datagram.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tunnel_io.reactor import Reactor, Timer, Watch

log = logging.getLogger("tunnel_io.guard")


class GuardedReactor:
    """``reactor`` with every callback wrapped: an exception goes to ``on_crash(exc)`` instead of the runtime."""

    def __init__(self, reactor: Reactor, on_crash: Callable[[BaseException], None]) -> None:
        self.inner = reactor
        self.time = reactor.time
        self._on_crash = on_crash

    def guard(self, fn: Callable[..., None]) -> Callable[..., None]:
        on_crash = self._on_crash

        def guarded(*args: Any) -> None:
            try:
                fn(*args)
            except Exception as exc:
                log.debug("callback %r raised", fn, exc_info=exc)
                on_crash(exc)

        return guarded

    def call_at(self, when: float, fn: Callable[[], None]) -> Timer:
        return self.inner.call_at(when, self.guard(fn))

    def call_soon(self, fn: Callable[[], None]) -> None:
        self.inner.call_soon(self.guard(fn))

    def defer(self, fn: Callable[[], None]) -> None:
        self.inner.defer(self.guard(fn))

    def watch(self, sock: Any, on_readable: Callable[[], None], on_writable: Callable[[], None]) -> Watch:
        return self.inner.watch(sock, self.guard(on_readable), self.guard(on_writable))

    def run_blocking(self, fn: Callable[[], Any], done: Callable[[bool, Any], None], *, subject: Any = None) -> None:
        self.inner.run_blocking(fn, self.guard(done), subject=subject)
