"""Healing a stalled iroh connection after a short cut (issue 15 item 1, docs/reconnect.md).

During a cut quinn's probe timeout (PTO) doubles with every unanswered probe (RFC 9002 6.2.1), so after a 20 s cut
the connection sends its next probe up to ten seconds after the path is back, and nothing moves until then. The
ICE modes prod their own QUIC when a consent check is answered again; the iroh binding has no such hook (no
"probe now", no "network changed", no transport settings), so iroh mode cannot make the stalled connection
probe. A *new* connection has no backed-off timer: its handshake completes one round trip after the path is back.
With durable streams (protocol e4 between our own peers, docs/durable.md) the client can move every stream to it
without losing or repeating a byte, as after a reconnect - so that is what it does:

- ``StallDetector`` (no I/O, time passed in): the connection is *stalled* when no packet at all arrived from the
  server for ``STALL`` seconds (a live but slow path keeps delivering QUIC ACKs, so it never looks stalled) while
  either bytes we sent on a durable stream waited as long for the server's confirmation, or - for data flowing
  only towards us - a stream was busy moments before and the server did not answer the confirmations we sent it
  again a second into the silence (a "nudge": any answer shows the path lives; an idle connection is never
  nudged, so it never looks stalled).
  While stalled it asks for a probe dial every ``PROBE_INTERVAL`` seconds, every ``SLOW_PROBE_INTERVAL``
  seconds once the stall is older than ``SLOW_AFTER`` (bounded, however long the cut). A confirmation ends the
  stall (the old connection came back by itself) and the probing with it.
- ``Healer`` runs it for one connection: it samples every ``SAMPLE`` seconds, nudges when asked to, dials the
  server again in the background (``PROBE_TIMEOUT`` each, at most ``MAX_PROBES`` at once) and, when a dial
  completes - proof that the path is back - hands the new connection to the client, which adopts it and closes
  the stalled one; the durable streams then resume on it at their confirmed offsets (``tunnel_iroh.client``).

Nothing happens without durable streams (protocol e2, upstream's server): their connections wait for quinn's next
probe, as before; nor while a connection that could not survive the move is open (one a server without durable
streams carries: upstream's, or an older one for a reverse forward), since moving would reset it. SOCKS5 and
reverse-forward connections are durable streams like ``--forward`` ones and move with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from tunnel_core.iroh_session import CLOSE_DONE

log = logging.getLogger("tunnel_iroh")

#: How long sent bytes wait unconfirmed, with no packet from the server, before the connection counts as stalled.
STALL = 2.0
#: A durable stream that moved bytes within ACTIVE seconds, on a connection that received nothing for NUDGE_AFTER
#: seconds, makes the client send the server a confirmation again (any answer, even QUIC's ACK, shows the path
#: lives); NUDGE_WAIT seconds without an answer, and STALL seconds of silence in all, are a stall too.
ACTIVE = 5.0
NUDGE_AFTER = 1.0
NUDGE_WAIT = 1.0
#: How often the healer looks at the connection.
SAMPLE = 0.25
#: The probe dials of a stall: one every PROBE_INTERVAL seconds, each given PROBE_TIMEOUT to complete its QUIC
#: handshake (once that is done the path is back, and authenticating gets the ordinary time) ...
PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 2.0
#: At most this many probe dials at once. Why more than one: on a direct path a dial started just before the path
#: came back waits for its own retransmission (a second); the next one does not. Why not more: iroh queues what it
#: sends to a relay while the relay connection is down and delivers it when that is back, so every dial still
#: pending then reaches the server (which authenticates it; the client closes all but the first).
MAX_PROBES = 2
#: ... and only one every SLOW_PROBE_INTERVAL seconds once the stall is older than SLOW_AFTER (a long cut).
SLOW_AFTER = 30.0
SLOW_PROBE_INTERVAL = 5.0

#: (key, confirmed offset, end offset, received offset) of one durable stream
Offsets = tuple[int, int, int, int]


class StallDetector:
    """Decides from samples whether a connection is stalled, when to nudge the server and when to dial a probe
    (docs at the module top)."""

    def __init__(self, now: float) -> None:
        self._rx: int | None = None
        self._rx_since = now
        self._confirmed: dict[int, int] = {}
        #: the first sample counts what its streams received as movement: a cut can come before the second one
        self._received: dict[int, int] = {}
        self._waiting_since: float | None = None
        self._active_at: float | None = None
        self._nudged_at: float | None = None
        self._open = False
        #: when the current stall began (None: not stalled), and whether our sent bytes wait ("send") or what the
        #: server sends stopped arriving ("receive")
        self.stalled_since: float | None = None
        self.kind = ""
        self._next_probe = 0.0
        self.probes = 0

    @property
    def stalled(self) -> bool:
        return self.stalled_since is not None

    def observe(self, now: float, rx_datagrams: int, streams: Iterable[Offsets]) -> bool:
        """One sample: how many datagrams the connection has received so far, and every durable stream's offsets.
        True when this sample ended a stall (bytes moved again on the old connection)."""
        if rx_datagrams != self._rx:
            self._rx, self._rx_since = rx_datagrams, now
        streams = list(streams)
        confirmed = {key: done for key, done, _end, _got in streams}
        received = {key: got for key, _done, _end, got in streams}
        sent_moved = any(key not in confirmed or confirmed[key] > done for key, done in self._confirmed.items())
        got_moved = any(got > self._received.get(key, 0) for key, got in received.items())
        self._confirmed, self._received, self._open = confirmed, received, bool(streams)
        if sent_moved or got_moved:
            self._active_at = now
        waiting = any(end > done for _key, done, end, _got in streams)
        if self.stalled_since is not None:
            if sent_moved or (got_moved and self.kind == "receive"):
                self.stalled_since = None
                self._waiting_since = now if waiting else None
                return True
            return False
        if sent_moved or not waiting:
            self._waiting_since = now if waiting else None
        elif self._waiting_since is None:
            self._waiting_since = now
        silent = now - self._rx_since
        if silent < STALL:
            return False
        if self._waiting_since is not None and now - self._waiting_since >= STALL:
            self._stall(now, "send")
        elif (self._nudged_at is not None and self._nudged_at >= self._rx_since
              and now - self._nudged_at >= NUDGE_WAIT):
            self._stall(now, "receive")
        return False

    def _stall(self, now: float, kind: str) -> None:
        self.stalled_since, self.kind = now, kind
        self._next_probe = now
        self.probes = 0

    def nudge_due(self, now: float) -> bool:
        """Bytes moved on a durable stream within ``ACTIVE`` seconds and nothing arrived for ``NUDGE_AFTER``: time
        to send the server something it must acknowledge (once per silence), so that silence after it means a
        dead path and not an idle one."""
        return (self.stalled_since is None and self._open and self._active_at is not None
                and now - self._active_at <= ACTIVE and now - self._rx_since >= NUDGE_AFTER
                and (self._nudged_at is None or self._nudged_at < self._rx_since))

    def nudged(self, now: float) -> None:
        self._nudged_at = now

    def probe_due(self, now: float) -> bool:
        return self.stalled_since is not None and now >= self._next_probe

    def probe_started(self, now: float) -> None:
        assert self.stalled_since is not None
        self.probes += 1
        slow = now - self.stalled_since >= SLOW_AFTER
        self._next_probe = now + (SLOW_PROBE_INTERVAL if slow else PROBE_INTERVAL)


class Healer:
    """Watches one connection; when it stalls, dials probes and offers the first that completes to ``adopt``.

    ``offsets()`` gives the durable streams' offsets, ``nudge()`` sends the server our confirmations again,
    ``movable()`` says whether every open stream survives a move, ``dial()`` makes (``PROBE_TIMEOUT`` for the
    handshake) and authenticates a new connection (raising on failure), ``adopt(new, stalled_for, probes)``
    switches to it (and closes the old one), ``current()`` is the client's connection now. ``run`` ends when the
    connection closes or was replaced."""

    def __init__(self, conn: Any, *, offsets: Callable[[], Iterable[Offsets]], nudge: Callable[[], None],
                 movable: Callable[[], bool], dial: Callable[[], Awaitable[Any]],
                 adopt: Callable[[Any, float, int], Awaitable[None]], current: Callable[[], Any]) -> None:
        self.conn = conn
        self._offsets = offsets
        self._nudge = nudge
        self._movable = movable
        self._dial = dial
        self._adopt = adopt
        self._current = current

    def _live(self) -> bool:
        if self._current() is not self.conn:
            return False
        try:
            return self.conn.close_reason() is None
        except Exception:
            return False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        detector = StallDetector(loop.time())
        probes: set[asyncio.Task[Any]] = set()
        try:
            while self._live():
                if probes:  # a completed probe is acted on at once, not at the next sample
                    await asyncio.wait(probes, timeout=SAMPLE, return_when=asyncio.FIRST_COMPLETED)
                else:
                    await asyncio.sleep(SAMPLE)
                if not self._live():
                    return
                now = loop.time()
                try:
                    rx = int(self.conn.stats().udp_rx_datagrams)
                except Exception as exc:
                    log.debug("heal: no connection stats (%r); not watching this connection", exc)
                    return
                began = detector.stalled_since
                if detector.observe(now, rx, list(self._offsets())):
                    assert began is not None
                    log.warning("Tunnel back after %.1fs: the stalled connection recovered by itself",
                                now - began + STALL)
                if detector.nudge_due(now):
                    log.debug("heal: nothing from the server for %.1f s after data moved; nudging it", NUDGE_AFTER)
                    detector.nudged(now)
                    self._nudge()
                if detector.stalled and began is None:
                    log.debug("heal: stalled (%s)", detector.kind)
                    log.warning("Tunnel degraded: no packet from the server for %.0f s while data was moving; dialing "
                                "it again in the background (the open connections are kept)", STALL)
                for probe in [p for p in probes if p.done()]:
                    probes.discard(probe)
                    new = _result(probe)
                    if new is None:
                        continue
                    if detector.stalled_since is not None and self._live() and self._movable():
                        await self._adopt(new, now - detector.stalled_since + STALL, detector.probes)
                        return
                    _close_quietly(new)
                if not detector.stalled:
                    for probe in probes:
                        probe.cancel()
                elif len(probes) < MAX_PROBES and detector.probe_due(now) and self._movable():
                    detector.probe_started(now)
                    probes.add(asyncio.ensure_future(self._dial()))
        finally:
            for probe in probes:
                probe.cancel()
            for probe in probes:
                with contextlib.suppress(BaseException):
                    _close_quietly(await probe)


def _result(probe: asyncio.Task[Any]) -> Any:
    """A finished probe's connection, or None (it failed or was cancelled)."""
    if probe.cancelled():
        return None
    failure = probe.exception()
    if failure is not None:
        log.debug("heal probe failed: %r", failure)
        return None
    return probe.result()


def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close(CLOSE_DONE.code, CLOSE_DONE.reason)
