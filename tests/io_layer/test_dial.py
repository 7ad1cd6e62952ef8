"""tunnel_io.dial.HappyEyeballs, tested once, on the reference reactor with real loopback sockets."""

from __future__ import annotations

import socket
import time
from typing import Any

from tunnel_io.dial import HappyEyeballs
from tunnel_io.testing import SelectReactor


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dial(addresses: list[tuple[str, int]], **kwargs: Any) -> tuple[Any, list[str], float]:
    reactor = SelectReactor()
    result: list[Any] = []
    errors: list[str] = []
    started = time.monotonic()
    HappyEyeballs(reactor, addresses, result.append, on_error=lambda a, r: errors.append(f"{a[1]}: {r}"), **kwargs)
    assert reactor.run_until(lambda: bool(result), 15)
    reactor.close()
    return result[0], errors, time.monotonic() - started


def test_a_refused_address_starts_the_next_at_once() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        dead = _closed_port()
        sock, errors, took = _dial([("127.0.0.1", dead), ("127.0.0.1", port)], delay=5.0)
        assert sock is not None and sock.getpeername()[1] == port
        assert errors == [f"{dead}: Connection refused"]
        assert took < 2.0  # not the 5 s stagger: a quick failure starts the next attempt early
        sock.close()


def test_when_every_attempt_fails_the_result_is_none_with_every_error() -> None:
    ports = [_closed_port(), _closed_port()]
    sock, errors, _took = _dial([("127.0.0.1", p) for p in ports])
    assert sock is None
    assert sorted(errors) == sorted(f"{p}: Connection refused" for p in ports)


def test_no_address_fails_at_once() -> None:
    sock, errors, took = _dial([])
    assert (sock, errors) == (None, []) and took < 1.0


def test_cancel_closes_the_attempts_and_never_reports() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = [socket.socket() for _ in range(4)]
    for filler in fillers:
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
    time.sleep(0.1)  # the accept queue is full: the next connect hangs
    reactor = SelectReactor()
    result: list[Any] = []
    dial = HappyEyeballs(reactor, [("127.0.0.1", port)], result.append)
    reactor.run_until(lambda: bool(dial.attempts), 2)
    attempt_socks = [a.sock for a in dial.attempts]
    assert attempt_socks and all(s is not None for s in attempt_socks)
    dial.cancel()
    reactor.run_until(lambda: False, 0.2)
    assert result == []
    assert all(s.fileno() == -1 for s in attempt_socks)
    reactor.close()
    for sock in (listener, *fillers):
        sock.close()
