"""ice-nostr mode on trio: relay WebSockets for the sans-IO RelayPool, and the nostr effects of
tunnel_core.flows_nostr on top of the ordinary flow interpreter (TrioRunner).

The pool decides (which relay to (re)connect, what to send, which events are new) and tunnel_core.nostr.links glues
it to the sans-IO WebSocket client; this module only moves bytes between trio streams and those links. Each relay
connection is a reader task plus a writer task (trio streams write with ``await``, the pool's decisions arrive in
synchronous code). Server sessions run as child runners, each with its own sockets, peer and local forwarding,
sharing the parent's relays and its stop request.
"""

from __future__ import annotations

import logging
import math
import os
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from tunnel_core import flows
from tunnel_core import flows_nostr as fx
from tunnel_core.nostr.links import RelayLink, RelayLinks
from tunnel_core.nostr.options import NostrClientOptions, NostrServerOptions
from tunnel_core.nostr.pool import RelayPool
from tunnel_core.options import TunnelError
from tunnel_core.websocket import WebSocketError
from tunnel_io import Console, PrefixConsole
from tunnel_trio.runner import CLOSE_GRACE, TrioRunner, _unwrap

log = logging.getLogger("tunnel_trio.nostr")

CONNECT_TIMEOUT = 10.0
READ_SIZE = 65536
#: How long leaving the relays may take (CLOSE and close frames going out) before the streams are cut.
RELAY_CLOSE_GRACE = 1.0
_STREAM_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, WebSocketError)


class _Conn:
    """One relay stream: the link, and a writer woken whenever the link may have bytes to send."""

    def __init__(self, link: RelayLink, stream: trio.abc.Stream) -> None:
        self.link = link
        self.stream = stream
        self.wake = trio.Event()
        self.scope = trio.CancelScope()
        self.reason = "closed"

    def kick(self) -> None:
        self.wake.set()


class RelayConnections:
    """Drives one RelayPool over trio streams; verified new events go to ``deliver``, every change to ``changed``."""

    def __init__(self, pool: RelayPool, deliver: Callable[[Any], None], changed: Callable[[], None]) -> None:
        self.pool = pool
        self.links = RelayLinks(pool, os.urandom)
        self.deliver = deliver
        self.changed = changed
        self.conns: dict[str, _Conn] = {}
        self.scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._deadline = math.inf
        self._timer_scope: trio.CancelScope | None = None
        self._closed = False
        self._gone = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The relays' home: connection tasks and the reconnect timer live in this task's nursery."""
        with self.scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._timer_task)
                task_status.started()
        self._gone.set()

    def flush(self) -> None:
        step = self.links.step(trio.current_time())
        if self._nursery is not None:
            for url in step.connect:
                self._nursery.start_soon(self._connection, url)
        for conn in self.conns.values():
            conn.kick()
        for ev in step.received:
            self.deliver(ev.event)
        for ev in step.other:
            log.debug("relay pool: %s", ev)
        if step.received or step.other or step.connect:
            self.changed()
        self._rearm()

    def _rearm(self) -> None:
        when = self.pool.get_timer()
        self._deadline = math.inf if when is None or self._closed else when
        if self._timer_scope is not None:
            self._timer_scope.deadline = self._deadline

    async def _timer_task(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._deadline) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            self._deadline = math.inf
            self.pool.handle_timer(trio.current_time())
            self.flush()

    async def _connection(self, url: str) -> None:
        reason = "closed"
        conn: _Conn | None = None
        try:
            link = self.links.new_link(url)
            target = link.target
            with trio.fail_after(CONNECT_TIMEOUT):
                if target.tls:
                    stream: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(
                        target.host, target.port, ssl_context=ssl.create_default_context())
                else:
                    stream = await trio.open_tcp_stream(target.host, target.port)
                try:
                    await stream.send_all(link.data_to_send())
                    while link.connecting:
                        link.receive(await stream.receive_some(READ_SIZE), trio.current_time())
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
            conn = _Conn(link, stream)
            self.conns[url] = conn
            self.flush()
            with conn.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, conn)
                    nursery.start_soon(self._reader, conn)
            reason = conn.reason
        except _STREAM_ERRORS as exc:
            reason = str(exc) or type(exc).__name__
        finally:
            if conn is not None:
                self.conns.pop(url, None)
                await trio.aclose_forcefully(conn.stream)
            self.links.lost(url, trio.current_time(), reason)
            if not self._closed:
                self.flush()
            self.changed()

    async def _reader(self, conn: _Conn) -> None:
        link = conn.link
        try:
            while not link.finished:
                data = await conn.stream.receive_some(READ_SIZE)
                link.receive(data, trio.current_time())
                conn.kick()
                self.flush()
                if not data:
                    break
        except _STREAM_ERRORS as exc:
            conn.reason = str(exc) or type(exc).__name__
            conn.scope.cancel()
            return
        if link.finished:
            conn.kick()  # the writer sends what is left (the reply to a close frame), then ends the connection
        else:
            conn.scope.cancel()

    async def _writer(self, conn: _Conn) -> None:
        """The only task that writes to the stream (trio streams refuse concurrent ``send_all``)."""
        link = conn.link
        try:
            while True:
                await conn.wake.wait()
                conn.wake = trio.Event()
                data = link.data_to_send()
                if data:
                    await conn.stream.send_all(data)
                if link.finished:
                    break
        except _STREAM_ERRORS as exc:
            conn.reason = str(exc) or type(exc).__name__
        conn.scope.cancel()

    def close(self) -> None:
        """Unsubscribe and close every connection (the CLOSE and close frames still go out); no more reconnects."""
        if self._closed:
            return
        self.pool.close()
        self.flush()
        self._closed = True
        self._rearm()

    async def aclose(self) -> None:
        """``close``, then a short grace for the goodbyes to leave before every relay stream is cut."""
        self.close()
        with trio.move_on_after(RELAY_CLOSE_GRACE):
            while self.conns:
                await trio.sleep(0.01)
        self.scope.cancel()

    async def close_after(self, delay: float) -> None:
        await trio.sleep(delay)
        await self.aclose()


class NostrRunner(TrioRunner):
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
        self.children: set[NostrRunner] = set()
        self._children_done = trio.Event()

    async def run_nostr(self, flow: Any) -> None:
        """The same as ``run`` (relays and sessions are closed with the runner); named as on asyncio."""
        await self.run(flow)

    def stop(self) -> None:
        super().stop()
        for child in list(self.children):
            child.stop()

    def _signal(self, item: Any) -> None:
        """A relay event or a session's end, for the root flow's NextSignal."""
        self.root.inbox.append(item)
        self.root._notify()

    # ------------------------------------------------------------------------------------------ effects

    async def _perform(self, effect: Any) -> Any:
        if isinstance(effect, fx.OpenRelays):
            return await self._open_relays(effect)
        if isinstance(effect, fx.Publish):
            assert self.relays is not None
            n = self.relays.pool.publish(effect.event, trio.current_time())
            self.relays.flush()
            return n
        if isinstance(effect, fx.NextSignal):
            return await self._next_signal(effect.timeout)
        if isinstance(effect, fx.CloseRelays):
            if self.relays is not None:
                assert self._nursery is not None
                self._nursery.start_soon(self.relays.close_after, effect.delay)
            return None
        if isinstance(effect, fx.Clock):
            return fx.Times(trio.current_time(), int(time.time()))
        if isinstance(effect, fx.Spawn):
            self._spawn(effect)
            return None
        return await super()._perform(effect)

    async def _open_relays(self, effect: fx.OpenRelays) -> int:
        assert self._nursery is not None
        relays = RelayConnections(effect.pool, self._signal, self._notify)
        await self._nursery.start(relays.run)
        self.relays = relays
        relays.flush()
        with trio.move_on_after(effect.timeout):
            while not effect.pool.settled:
                if self._stopping:
                    raise flows.Stopped()
                await self._changed.wait()
        if self._stopping:
            raise flows.Stopped()
        return effect.pool.open_count

    async def _next_signal(self, timeout: float | None) -> Any:
        with trio.move_on_after(math.inf if timeout is None else timeout):
            while True:
                if self.inbox:
                    return self.inbox.popleft()
                if self._stopping:
                    raise flows.Stopped()
                await self._changed.wait()
        return None

    def _spawn(self, effect: fx.Spawn) -> None:
        assert self._nursery is not None
        child = NostrRunner(PrefixConsole(self.console, effect.label), parent=self)
        self.children.add(child)
        if self._stopping:
            child.stop()

        async def run_child() -> None:
            error: str | None = None
            try:
                await child.run(effect.flow)
            except TunnelError as exc:
                error = exc.message
            except Exception as exc:
                log.exception("session %s crashed", effect.name)
                error = f"internal error: {type(exc).__name__}: {exc}"
            finally:
                self.children.discard(child)
                self._notify()
            self._signal(fx.SessionEnded(effect.name, error))

        self._nursery.start_soon(run_child)

    # ------------------------------------------------------------------------------------------ closing

    async def close(self) -> None:
        """Sessions first (each closes its QUIC connection orderly), then the relays, then our own tunnel."""
        if self.children:
            for child in list(self.children):
                child.stop()
            with trio.move_on_after(CLOSE_GRACE + 1.0):
                while self.children:
                    await self._changed.wait()
        if self.relays is not None and self.parent is None:
            await self.relays.aclose()
        await super().close()


def run_nostr_flow(flow: Any, console: Console | None = None) -> None:
    """Run a nostr flow in a new trio run; user-facing failures come out as TunnelError."""

    async def main() -> None:
        await NostrRunner(console).run(flow)

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        raise _unwrap(group) from None


def run_nostr_server(opts: NostrServerOptions, console: Console | None = None) -> None:
    run_nostr_flow(fx.nostr_server_flow(opts, os.urandom), console)


def run_nostr_client(opts: NostrClientOptions, console: Console | None = None) -> None:
    run_nostr_flow(fx.nostr_client_flow(opts, os.urandom), console)


__all__ = ["NostrRunner", "RelayConnections", "run_nostr_client", "run_nostr_flow", "run_nostr_server"]
