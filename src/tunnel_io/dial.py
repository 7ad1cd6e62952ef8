"""Happy eyeballs (RFC 8305 in spirit), written once: staggered TCP connection attempts, the first success wins.

Semantics (the same for manual, nostr and iroh mode, on every runtime):

- the addresses are tried in the order given (the policy already resolved and checked exactly these);
- the next attempt starts ``HAPPY_EYEBALLS_DELAY`` after the previous one, or at once when the previous one failed;
- each attempt gives up after ``CONNECT_TIMEOUT``;
- the first connected socket wins; every other attempt is closed; when all failed the result is ``None``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from tunnel_core.types import Address
from tunnel_io.reactor import Reactor, Timer, Watch

HAPPY_EYEBALLS_DELAY = 0.25
CONNECT_TIMEOUT = 10.0
_IN_PROGRESS = (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EALREADY)


class _Attempt:
    def __init__(self, dial: HappyEyeballs, addr: Address) -> None:
        self.dial = dial
        self.addr = addr
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.sock: Any = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.watch: Watch | None = None
        self.timeout: Timer | None = None
        err = self.sock.connect_ex(addr)
        if err == 0:
            dial.reactor.call_soon(self._connected)
        elif err in _IN_PROGRESS:
            self.watch = dial.reactor.watch(self.sock, _nothing, self._writable)
            self.watch.want(read=False, write=True)
            self.timeout = dial.reactor.call_at(dial.reactor.time() + dial.timeout, lambda: self._failed("timed out"))
        else:
            dial.reactor.call_soon(lambda: self._failed(os.strerror(err)))

    def _writable(self) -> None:
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            self._connected()
        else:
            self._failed(os.strerror(err))

    def _connected(self) -> None:
        if self.sock is None:
            return
        self._unwatch()
        sock, self.sock = self.sock, None
        self.dial.won(self, sock)

    def _failed(self, reason: str) -> None:
        if self.sock is None:
            return
        self.release()
        self.dial.lost(self, reason)

    def _unwatch(self) -> None:
        if self.timeout is not None:
            self.timeout.cancel()
            self.timeout = None
        if self.watch is not None:
            # A watch disarmed in both directions holds nothing: dropping it hands the socket on (to the TCP flow).
            self.watch.want(read=False, write=False)
            self.watch = None

    def release(self) -> None:
        if self.timeout is not None:
            self.timeout.cancel()
            self.timeout = None
        if self.sock is None:
            return
        sock, self.sock = self.sock, None
        if self.watch is not None:
            self.watch.close()  # closes the socket after the runtime stopped watching it
            self.watch = None
        else:
            sock.close()


class HappyEyeballs:
    """One dial. ``done(sock)`` is called exactly once (``None`` when every attempt failed), unless ``cancel()``
    came first; ``on_error(address, reason)`` hears of every failed attempt (for a log line)."""

    def __init__(self, reactor: Reactor, addresses: Sequence[Address], done: Callable[[Any], None], *,
                 delay: float = HAPPY_EYEBALLS_DELAY, timeout: float = CONNECT_TIMEOUT,
                 on_error: Callable[[Address, str], None] | None = None) -> None:
        self.reactor = reactor
        self.addresses = list(addresses)
        self.done = done
        self.delay = delay
        self.timeout = timeout
        self.on_error = on_error
        self.attempts: list[_Attempt] = []
        self._next = 0
        self._stagger: Timer | None = None
        self._finished = False
        reactor.call_soon(self._start_next)

    def _start_next(self) -> None:
        if self._finished:
            return
        if self._stagger is not None:
            self._stagger.cancel()
            self._stagger = None
        if self._next >= len(self.addresses):
            if not self.attempts:
                self._finish(None)
            return
        addr = self.addresses[self._next]
        self._next += 1
        try:
            self.attempts.append(_Attempt(self, addr))
        except OSError as exc:
            if self.on_error is not None:
                self.on_error(addr, exc.strerror or str(exc))
            self.reactor.call_soon(self._start_next)
            return
        if self._next < len(self.addresses):
            self._stagger = self.reactor.call_at(self.reactor.time() + self.delay, self._start_next)

    def won(self, attempt: _Attempt, sock: Any) -> None:
        if self._finished:
            sock.close()
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.attempts.remove(attempt)
        self._finish(sock)

    def lost(self, attempt: _Attempt, reason: str) -> None:
        if attempt in self.attempts:
            self.attempts.remove(attempt)
        if self.on_error is not None and not self._finished:
            self.on_error(attempt.addr, reason)
        if not self._finished:
            self._start_next()  # a quick failure starts the next attempt early; the last one reports failure

    def _finish(self, sock: Any) -> None:
        self._finished = True
        self.cancel()
        self.done(sock)

    def cancel(self) -> None:
        self._finished = True
        if self._stagger is not None:
            self._stagger.cancel()
            self._stagger = None
        for attempt in self.attempts:
            attempt.release()
        self.attempts.clear()


def _nothing() -> None:
    pass
