"""Happy eyeballs (RFC 8305 in spirit), written once: staggered TCP connection attempts, the first success wins.

Semantics (the same for manual and nostr mode on every runtime):

- the addresses are tried in the order given (the policy already resolved and checked exactly these);
- the next attempt starts ``HAPPY_EYEBALLS_DELAY`` after the previous one, or at once when the previous one failed;
- each attempt gives up after ``CONNECT_TIMEOUT``;
- the first connected socket wins; every other attempt is closed; when all failed the result is ``None``.
"""

from __future__ import annotations

import contextlib
import errno
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
            self.timeout = dial.reactor.call_at(dial.reactor.time() + CONNECT_TIMEOUT, self._failed)
        else:
            dial.reactor.call_soon(self._failed)

    def _writable(self) -> None:
        if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            self._connected()
        else:
            self._failed()

    def _connected(self) -> None:
        if self.sock is None:
            return
        self._unwatch()
        sock, self.sock = self.sock, None
        self.dial.won(self, sock)

    def _failed(self) -> None:
        if self.sock is None:
            return
        self.release()
        self.dial.lost(self)

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
    came first."""

    def __init__(self, reactor: Reactor, addresses: Sequence[Address], done: Callable[[Any], None]) -> None:
        self.reactor = reactor
        self.addresses = list(addresses)
        self.done = done
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
        except OSError:
            self.reactor.call_soon(self._start_next)
            return
        if self._next < len(self.addresses):
            self._stagger = self.reactor.call_at(self.reactor.time() + HAPPY_EYEBALLS_DELAY, self._start_next)

    def won(self, attempt: _Attempt, sock: Any) -> None:
        if self._finished:
            sock.close()
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.attempts.remove(attempt)
        self._finish(sock)

    def lost(self, attempt: _Attempt) -> None:
        if attempt in self.attempts:
            self.attempts.remove(attempt)
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
