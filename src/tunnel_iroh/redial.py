"""Dialing the server again after the connection was lost for good (issue 15, docs/reconnect.md "A long outage").

Measured with iroh's own log (``TUNNEL_IROH_LOG=debug``) in the NAT lab's 90 s cut, two things kept an iroh tunnel
down for seconds after the path was back (docs/reconnect.md has the timelines):

- **Our attempts.** One dial at a time, given 10 s, then 1 s doubling to 5 s of sleep: when the path came back
  there was often no attempt pending (measured: the tunnel back 5 s after the relay, the next attempt's start).
  Now the client starts an attempt every ``ATTEMPT_INTERVAL`` seconds, gives each ``ATTEMPT_TIMEOUT`` for its
  QUIC handshake (authenticating gets the ordinary time once that is done) and keeps at most ``IN_FLIGHT`` of
  them at once (heal.py's probe dials do the same for a stalled connection): a fresh Initial is never more than
  a second away. Every ``LONG_EVERY``-th attempt gets upstream's 10 s instead (one at a time, beside the short
  ones), so a path whose handshake needs more than 2 s (a slow relay, Tor) still connects.
- **iroh's relay connection.** iroh 1.4's relay client redials its relay after a failed dial (1.5 s each) with an
  exponential backoff that grew to 25-31 s in a 90 s cut (0.07, 0.14, 0.26, 0.49, 1.2, 2.4, 3.3, 9.9, 15.9, 24.8
  s), and nothing in the binding wakes it early (no "network changed" call; a relay map change does not restart
  it): the relay connection came back 2.1 s and 29.2 s after the heal in one run, and every dial through the relay
  waits for it. A *new* endpoint dials its relay at once. So while reconnecting the client checks itself whether
  the relay's TCP port answers (``RelayProbe``: a connect, closed at once, every ``PROBE_INTERVAL`` seconds, each
  given ``PROBE_TIMEOUT``, at most ``IN_FLIGHT`` at once, and only until it answers); when it answers after having
  not answered, the client binds a fresh endpoint with the same key (same EndpointId, so an allowlist still
  matches), closes the old one and dials from the new one. A relay that answers from the start (the server
  restarted, the relay never went away) costs one connect and no new endpoint.

Bounded: at most one attempt and one relay connect a second, each with its timeout; at most one fresh endpoint per
reconnect; all of it only while reconnecting, within ``--reconnect-timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from tunnel_core.iroh_session import CLOSE_DONE
from tunnel_core.iroh_session.socks import relay_address
from tunnel_core.options import TunnelError
from tunnel_core.reconnect import FINAL, gave_up
from tunnel_iroh.endpoint import CONNECT_TIMEOUT

log = logging.getLogger("tunnel_iroh")

#: A new attempt at most this often (seconds) ...
ATTEMPT_INTERVAL = 1.0
#: ... each given this long for its QUIC handshake (what a round trip through a relay needs, with room) ...
ATTEMPT_TIMEOUT = 2.0
#: ... and at most this many attempts (and as many relay connects) pending at once ...
IN_FLIGHT = 2
#: ... beside which every LONG_EVERY-th attempt gets LONG_TIMEOUT (upstream's dial timeout), one at a time.
LONG_EVERY = 5
LONG_TIMEOUT = CONNECT_TIMEOUT
#: The relay check: a TCP connect at most this often while the relay does not answer, each given PROBE_TIMEOUT.
PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 2.0

Dial = Callable[[float], Awaitable[Any]]

__all__ = ["RelayProbe", "redial", "relay_address"]


class RelayProbe:
    """Whether the relay's TCP port answers, checked only until it does. ``observe`` tells the caller when it
    answered after a check that it did not: the moment a fresh endpoint's relay connection would succeed while
    the old endpoint's relay client may still be waiting out its backoff."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.failed = False
        self.answered = False

    async def check(self) -> bool:
        host, port = self.address
        try:
            _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), PROBE_TIMEOUT)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    def observe(self, ok: bool) -> bool:
        """One check's result; True once, when the relay answers after it did not."""
        if self.answered:
            return False
        if not ok:
            self.failed = True
            return False
        self.answered = True
        return self.failed


async def redial(dial: Dial, *, budget: float, last: str, probe: RelayProbe | None = None,
                 fresh_endpoint: Callable[[], Awaitable[None]] | None = None) -> tuple[Any, int]:
    """Dial until one attempt connects (returned with the number of attempts), a refusal ends it (raised), or
    ``budget`` seconds passed (``gave_up``, exit 11). ``dial(timeout)`` makes and authenticates one connection;
    ``fresh_endpoint()`` replaces the endpoint the next dials use (when ``probe`` saw the relay come back)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    attempts: set[asyncio.Task[Any]] = set()
    long: asyncio.Task[Any] | None = None
    checks: set[asyncio.Task[bool]] = set()
    next_attempt = next_check = started
    count = 0
    try:
        while True:
            for task in [t for t in attempts if t.done()]:
                attempts.discard(task)
                long = None if task is long else long
                conn, failure = _outcome(task)
                if conn is not None:
                    return conn, count
                if isinstance(failure, TunnelError) and failure.exit_code in FINAL:
                    raise failure
                if failure is not None:
                    last = failure.message if isinstance(failure, TunnelError) else repr(failure)
            for task in [t for t in checks if t.done()]:
                checks.discard(task)
                ok = not task.cancelled() and task.exception() is None and task.result()
                if probe is not None and probe.observe(ok) and fresh_endpoint is not None:
                    log.debug("reconnect: the relay answers again; dialing from a fresh endpoint (iroh's relay "
                              "client may still be waiting out its backoff)")
                    await _cancel(attempts)
                    attempts.clear()
                    long = None
                    await fresh_endpoint()
                    next_attempt = loop.time()
            now = loop.time()
            if now - started >= budget:
                raise gave_up(now - started, count, last)
            if now >= next_attempt and _room(attempts, long, count):
                due_long = long is None and count % LONG_EVERY == LONG_EVERY - 1
                count += 1
                task = asyncio.ensure_future(dial(LONG_TIMEOUT if due_long else ATTEMPT_TIMEOUT))
                attempts.add(task)
                long = task if due_long else long
                next_attempt = now + ATTEMPT_INTERVAL
            probing = probe is not None and not probe.answered
            if probing and len(checks) < IN_FLIGHT and now >= next_check:
                assert probe is not None
                checks.add(asyncio.ensure_future(probe.check()))
                next_check = now + PROBE_INTERVAL
            wake = started + budget
            if _room(attempts, long, count):
                wake = min(wake, next_attempt)
            if probing and len(checks) < IN_FLIGHT:
                wake = min(wake, next_check)
            pending, delay = attempts | checks, max(0.0, wake - loop.time())
            if pending:
                await asyncio.wait(pending, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(delay)
    finally:
        await _cancel(checks)
        for conn in await _cancel(attempts):
            with contextlib.suppress(Exception):
                conn.close(CLOSE_DONE.code, CLOSE_DONE.reason)


def _room(attempts: set[asyncio.Task[Any]], long: asyncio.Task[Any] | None, count: int) -> bool:
    """Whether the next attempt may start now: a long one when it is due and none is pending, else a short one
    while fewer than IN_FLIGHT short ones are."""
    if long is None and count % LONG_EVERY == LONG_EVERY - 1:
        return True
    return len(attempts) - (long is not None) < IN_FLIGHT


def _outcome(task: asyncio.Task[Any]) -> tuple[Any, BaseException | None]:
    if task.cancelled():
        return None, None
    failure = task.exception()
    if failure is not None:
        log.debug("reconnect attempt failed: %s", failure)
        return None, failure
    return task.result(), None


async def _cancel(tasks: Sequence[asyncio.Task[Any]] | set[asyncio.Task[Any]]) -> list[Any]:
    """Cancel ``tasks`` and wait for them; the connections of those that had completed anyway."""
    for task in tasks:
        task.cancel()
    done = []
    for task in tasks:
        with contextlib.suppress(BaseException):
            done.append(await task)
    return [conn for conn in done if conn is not None]
