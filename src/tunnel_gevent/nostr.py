"""ice-nostr mode on gevent: relay WebSockets for the sans-IO RelayPool, and the nostr effects of
tunnel_core.flows_nostr on top of the ordinary flow interpreter (GeventRunner).

The pool decides (which relay to (re)connect, what to send, which events are new) and tunnel_core.nostr.links glues
it to the sans-IO WebSocket client; this module only moves bytes between gevent sockets and those links. Each relay
connection is a reader greenlet plus a writer greenlet (a gevent socket blocks its greenlet while it writes, and the
pool's decisions are made in whichever greenlet read something). Server sessions run as child runners in their own
greenlets, each with its own sockets, peer and local forwarding, sharing the parent's relays and its stop request.
No monkey-patching: gevent.socket and gevent.ssl objects only.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.ssl
from gevent import socket

from tunnel_core import flows
from tunnel_core import flows_nostr as fx
from tunnel_core.nostr.links import RelayLink, RelayLinks
from tunnel_core.nostr.options import NostrClientOptions, NostrServerOptions
from tunnel_core.nostr.pool import RelayPool
from tunnel_core.options import TunnelError
from tunnel_core.websocket import WebSocketError
from tunnel_gevent.runner import CLOSE_GRACE, GeventRunner, now
from tunnel_io import Console, PrefixConsole

log = logging.getLogger("tunnel_gevent.nostr")

CONNECT_TIMEOUT = 10.0
READ_SIZE = 65536
#: How long leaving the relays may take (CLOSE and close frames going out) before the sockets are cut.
RELAY_CLOSE_GRACE = 1.0
_STREAM_ERRORS = (OSError, TimeoutError, WebSocketError)


def _tls_context() -> gevent.ssl.SSLContext:
    """The default verification (system CAs, hostname check) on gevent's cooperative SSLContext.

    Not ``gevent.ssl.create_default_context``: that is the standard library's function and builds a *blocking*
    stdlib context, whose reads would stall the whole hub.
    """
    context = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_default_certs()
    return context


class _Conn:
    """One relay socket: the link, and a writer greenlet woken whenever the link may have bytes to send."""

    def __init__(self, link: RelayLink, sock: socket.socket) -> None:
        self.link = link
        self.sock = sock
        self.wake = gevent.event.Event()
        self.reason = "closed"
        self.ended = False
        self.done = gevent.event.Event()

    def kick(self) -> None:
        self.wake.set()

    def end(self, reason: str | None = None) -> None:
        """Close the socket; the reader greenlet parked in recv wakes with an error and reports the loss."""
        if reason is not None and self.reason == "closed":
            self.reason = reason
        self.ended = True
        self.wake.set()
        self.sock.close()
        self.done.set()


class RelayConnections:
    """Drives one RelayPool over gevent sockets; verified new events go to ``deliver``, every change to ``changed``."""

    def __init__(self, pool: RelayPool, deliver: Callable[[Any], None], changed: Callable[[], None]) -> None:
        self.pool = pool
        self.links = RelayLinks(pool, os.urandom)
        self.deliver = deliver
        self.changed = changed
        self.conns: dict[str, _Conn] = {}
        self.greenlets: set[gevent.Greenlet] = set()
        self._timer: gevent.Greenlet | None = None
        self._timer_at: float | None = None
        self._closed = False

    def flush(self) -> None:
        step = self.links.step(now())
        for url in step.connect:
            self._spawn(self._connection, url)
        for conn in self.conns.values():
            conn.kick()
        for ev in step.received:
            self.deliver(ev.event)
        for ev in step.other:
            log.debug("relay pool: %s", ev)
        if step.received or step.other or step.connect:
            self.changed()
        self._rearm()

    def _spawn(self, fn: Callable[..., None], *args: Any) -> gevent.Greenlet:
        greenlet = gevent.spawn(fn, *args)
        self.greenlets.add(greenlet)
        greenlet.link(self.greenlets.discard)
        return greenlet

    def _rearm(self) -> None:
        """Reconnect timers are rare (a relay went away), so a greenlet per deadline is cheap enough."""
        when = None if self._closed else self.pool.get_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.kill(block=False)
            self._timer = None
        self._timer_at = when
        if when is not None:
            self._timer = gevent.spawn_later(max(0.0, when - now()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._closed:
            return
        self.pool.handle_timer(now())
        self.flush()

    def _connection(self, url: str) -> None:
        reason = "closed"
        conn: _Conn | None = None
        sock: socket.socket | None = None
        try:
            link = self.links.new_link(url)
            target = link.target
            with gevent.Timeout(CONNECT_TIMEOUT, TimeoutError):
                sock = socket.create_connection((target.host, target.port))
                if target.tls:
                    sock = _tls_context().wrap_socket(sock, server_hostname=target.host)
                sock.sendall(link.data_to_send())
                while link.connecting:
                    link.receive(sock.recv(READ_SIZE), now())
            conn = _Conn(link, sock)
            self.conns[url] = conn
            self._spawn(self._writer, conn)
            self.flush()
            while not link.finished and not conn.ended:
                data = sock.recv(READ_SIZE)
                link.receive(data, now())
                conn.kick()
                self.flush()
                if not data:
                    break
            if link.finished and not conn.ended:
                conn.kick()  # the writer sends what is left (the reply to a close frame), then closes
                conn.done.wait(RELAY_CLOSE_GRACE)
            reason = conn.reason
        except _STREAM_ERRORS as exc:
            reason = conn.reason if conn is not None and conn.ended else (str(exc) or type(exc).__name__)
        finally:
            if conn is not None:
                self.conns.pop(url, None)
                if not conn.ended:
                    conn.end()
            elif sock is not None:
                sock.close()
            self.links.lost(url, now(), reason)
            if not self._closed:
                self.flush()
            self.changed()

    def _writer(self, conn: _Conn) -> None:
        """The only greenlet that writes to the socket, so frames never interleave."""
        link = conn.link
        try:
            while not conn.ended:
                conn.wake.wait()
                conn.wake.clear()
                if conn.ended:
                    return
                data = link.data_to_send()
                if data:
                    conn.sock.sendall(data)
                if link.finished:
                    conn.end()
                    return
        except _STREAM_ERRORS as exc:
            if not conn.ended:
                conn.end(str(exc) or type(exc).__name__)

    def close(self) -> None:
        """Unsubscribe and close every connection (the CLOSE and close frames still go out); no more reconnects."""
        if self._closed:
            return
        self.pool.close()
        self.flush()
        self._closed = True
        self._rearm()

    def close_and_wait(self, grace: float = RELAY_CLOSE_GRACE) -> None:
        """``close``, then a short grace for the goodbyes to leave before every relay socket is cut."""
        self.close()
        deadline = now() + grace
        while self.conns and now() < deadline:
            gevent.sleep(0.01)
        for conn in list(self.conns.values()):
            conn.end()
        current = gevent.getcurrent()
        gevent.killall([g for g in self.greenlets if g is not current], timeout=1.0)

    def close_later(self, delay: float) -> None:
        gevent.sleep(delay)
        self.close_and_wait()


class NostrRunner(GeventRunner):
    """The flow interpreter plus the nostr effects (relays, publish, signals, clocks, sub-flows).

    A child runner (``parent`` given) is a server session: it shares the root's relays and signal inbox, never
    handles signals itself, and is stopped whenever its parent is.
    """

    def __init__(self, console: Console | None = None, *, handle_signals: bool = True,
                 parent: NostrRunner | None = None) -> None:
        super().__init__(console, handle_signals=handle_signals and parent is None)
        self.parent = parent
        self.root: NostrRunner = parent.root if parent is not None else self
        self.inbox: deque[Any] = parent.inbox if parent is not None else deque()
        self.relays: RelayConnections | None = parent.relays if parent is not None else None
        self.children: dict[NostrRunner, gevent.Greenlet] = {}
        self._background: list[gevent.Greenlet] = []

    def run_nostr(self, flow: Any) -> None:
        """The same as ``run`` (relays and sessions are closed with the runner); named as on asyncio."""
        self.run(flow)

    def stop(self) -> None:
        super().stop()
        for child in list(self.children):
            child.stop()

    def _signal(self, item: Any) -> None:
        """A relay event or a session's end, for the root flow's NextSignal."""
        self.root.inbox.append(item)
        self.root._notify()

    # ------------------------------------------------------------------------------------------ effects

    def _perform(self, effect: Any) -> Any:
        if isinstance(effect, fx.OpenRelays):
            return self._open_relays(effect)
        if isinstance(effect, fx.Publish):
            assert self.relays is not None
            n = self.relays.pool.publish(effect.event, now())
            self.relays.flush()
            return n
        if isinstance(effect, fx.NextSignal):
            return self._next_signal(effect.timeout)
        if isinstance(effect, fx.CloseRelays):
            if self.relays is not None:
                self._background.append(gevent.spawn(self.relays.close_later, effect.delay))
            return None
        if isinstance(effect, fx.Clock):
            return fx.Times(now(), int(time.time()))
        if isinstance(effect, fx.Spawn):
            self._spawn(effect)
            return None
        return super()._perform(effect)

    def _open_relays(self, effect: fx.OpenRelays) -> int:
        relays = RelayConnections(effect.pool, self._signal, self._notify)
        self.relays = relays
        relays.flush()
        deadline = now() + effect.timeout
        while not effect.pool.settled:
            if self._stopping:
                raise flows.Stopped()
            remaining = deadline - now()
            if remaining <= 0:
                break
            self._changed.wait(remaining)
        if self._stopping:
            raise flows.Stopped()
        return effect.pool.open_count

    def _next_signal(self, timeout: float | None) -> Any:
        deadline = None if timeout is None else now() + timeout
        while True:
            if self.inbox:
                return self.inbox.popleft()
            if self._stopping:
                raise flows.Stopped()
            remaining = None if deadline is None else deadline - now()
            if remaining is not None and remaining <= 0:
                return None
            self._changed.wait(remaining)

    def _spawn(self, effect: fx.Spawn) -> None:
        child = NostrRunner(PrefixConsole(self.console, effect.label), parent=self)
        if self._stopping:
            child.stop()

        def run_child() -> None:
            error: str | None = None
            try:
                child.run(effect.flow)
            except TunnelError as exc:
                error = exc.message
            except Exception as exc:
                log.exception("session %s crashed", effect.name)
                error = f"internal error: {type(exc).__name__}: {exc}"
            finally:
                self.children.pop(child, None)
                self._notify()
            self._signal(fx.SessionEnded(effect.name, error))

        self.children[child] = gevent.spawn(run_child)

    # ------------------------------------------------------------------------------------------ closing

    def close(self) -> None:
        """Sessions first (each closes its QUIC connection orderly), then the relays, then our own tunnel."""
        if self.children:
            for child in list(self.children):
                child.stop()
            deadline = now() + CLOSE_GRACE + 1.0
            while self.children and now() < deadline:
                self._changed.wait(max(0.0, deadline - now()))
            gevent.killall(list(self.children.values()), timeout=1.0)
        if self.relays is not None and self.parent is None:
            self.relays.close_and_wait()
        gevent.killall([g for g in self._background if g is not gevent.getcurrent()], timeout=1.0)
        super().close()


def run_nostr_flow(flow: Any, console: Console | None = None) -> None:
    """Run a nostr flow to completion in the current greenlet; user-facing failures come out as TunnelError."""
    NostrRunner(console).run(flow)


def run_nostr_server(opts: NostrServerOptions, console: Console | None = None) -> None:
    run_nostr_flow(fx.nostr_server_flow(opts, os.urandom), console)


def run_nostr_client(opts: NostrClientOptions, console: Console | None = None) -> None:
    run_nostr_flow(fx.nostr_client_flow(opts, os.urandom), console)


__all__ = ["NostrRunner", "RelayConnections", "run_nostr_client", "run_nostr_flow", "run_nostr_server"]
