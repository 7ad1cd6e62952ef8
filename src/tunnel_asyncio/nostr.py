"""ice-nostr mode on asyncio: relay WebSockets for the sans-IO RelayPool, and the nostr effects of
tunnel_core.flows_nostr on top of the ordinary flow interpreter.

The pool decides (which relay to (re)connect, what to send, which events are new) and tunnel_core.nostr.links glues
it to the sans-IO WebSocket client; this module only moves bytes between asyncio streams and those links. One task
per relay reads; writes need no task of their own, since ``StreamWriter.write`` buffers synchronously. Server sessions
run as child runners, each with its own sockets, peer and local forwarding, sharing the parent's relays and its stop
signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from typing import Any

from tunnel_asyncio.runner import CLOSE_GRACE, AsyncioRunner
from tunnel_core import flows
from tunnel_core import flows_nostr as fx
from tunnel_core.nostr.links import RelayLink, RelayLinks
from tunnel_core.nostr.options import NostrClientOptions, NostrServerOptions
from tunnel_core.nostr.pool import RelayPool
from tunnel_core.options import TunnelError
from tunnel_core.websocket import WebSocketError
from tunnel_io import Console, PrefixConsole

log = logging.getLogger("tunnel_asyncio.nostr")

CONNECT_TIMEOUT = 10.0
READ_SIZE = 65536


class _Conn:
    """One open relay stream: the link, and the writer its bytes go to (asyncio buffers writes, so no writer task)."""

    def __init__(self, link: RelayLink, writer: asyncio.StreamWriter) -> None:
        self.link = link
        self.writer = writer

    def write(self) -> None:
        data = self.link.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)


class RelayConnections:
    """Drives one RelayPool over asyncio streams; verified new events go to ``inbox``."""

    def __init__(self, pool: RelayPool, inbox: asyncio.Queue[Any], loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.links = RelayLinks(pool, os.urandom)
        self.inbox = inbox
        self.loop = loop
        self.conns: dict[str, _Conn] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.changed = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def flush(self) -> None:
        step = self.links.step(self.loop.time())
        for url in step.connect:
            task = self.loop.create_task(self._connection(url))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        for conn in self.conns.values():
            conn.write()
        for link in step.close:
            conn = self.conns.get(link.url)
            if conn is not None:
                conn.writer.close()  # after the CLOSE and the close frame written just above
        for ev in step.received:
            self.inbox.put_nowait(ev.event)
        for other in step.other:
            log.debug("relay pool: %s", other)
        if step.received or step.other:
            self.changed.set()
        self._rearm()

    def _rearm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self.pool.get_timer()
        if when is not None and not self._closed:
            self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.pool.handle_timer(self.loop.time())
        self.flush()

    async def _connection(self, url: str) -> None:
        reason = "closed"
        writer: asyncio.StreamWriter | None = None
        try:
            link = self.links.new_link(url)
            target = link.target
            context = ssl.create_default_context() if target.tls else None
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(target.host, target.port, ssl=context,
                                        server_hostname=target.host if target.tls else None),
                CONNECT_TIMEOUT,
            )
            writer.write(link.data_to_send())
            async with asyncio.timeout(CONNECT_TIMEOUT):
                while link.connecting:
                    link.receive(await reader.read(READ_SIZE), self.loop.time())
            self.conns[url] = _Conn(link, writer)
            self.flush()
            while link.open:
                data = await reader.read(READ_SIZE)
                link.receive(data, self.loop.time())
                self.flush()
                if not data:
                    break
        except (OSError, TimeoutError, WebSocketError) as exc:
            reason = str(exc) or type(exc).__name__
        finally:
            self.conns.pop(url, None)
            if writer is not None:
                writer.close()
            if not self._closed:
                self.links.lost(url, self.loop.time(), reason)
                self.flush()
            self.changed.set()

    def close(self) -> None:
        """Unsubscribe, close every connection, stop reconnecting."""
        if self._closed:
            return
        self.pool.close()
        self.flush()
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self.tasks):
            task.cancel()


class NostrRunner(AsyncioRunner):
    """The flow interpreter plus the nostr effects (relays, publish, signals, clocks, sub-flows)."""

    def __init__(self, console: Console | None = None, parent: NostrRunner | None = None) -> None:
        super().__init__(console)
        self.parent = parent
        self.inbox: asyncio.Queue[Any] = parent.inbox if parent is not None else asyncio.Queue()
        self.relays: RelayConnections | None = parent.relays if parent is not None else None
        if parent is not None:
            self.stopping = parent.stopping
        self.children: set[asyncio.Task[None]] = set()

    async def run_nostr(self, flow: Any) -> None:
        try:
            await self.run(flow)
        finally:
            await self._stop_children()
            if self.relays is not None:
                self.relays.close()
                await asyncio.sleep(0)

    async def _stop_children(self) -> None:
        if not self.children:
            return
        if not self.stopping.done():
            self.stopping.set_result(None)
        _done, pending = await asyncio.wait(set(self.children), timeout=CLOSE_GRACE + 1.0)
        for task in pending:
            task.cancel()

    async def _perform(self, effect: Any) -> Any:
        if isinstance(effect, fx.OpenRelays):
            return await self._stoppable(self._open_relays(effect))
        if isinstance(effect, fx.Publish):
            assert self.relays is not None
            n = self.relays.pool.publish(effect.event, self.loop.time())
            self.relays.flush()
            return n
        if isinstance(effect, fx.NextSignal):
            return await self._next_signal(effect.timeout)
        if isinstance(effect, fx.CloseRelays):
            if self.relays is not None:
                self.loop.call_later(effect.delay, self.relays.close)
            return None
        if isinstance(effect, fx.Clock):
            return fx.Times(self.loop.time(), int(time.time()))
        if isinstance(effect, fx.Spawn):
            self._spawn(effect)
            return None
        return await super()._perform(effect)

    async def _open_relays(self, effect: fx.OpenRelays) -> int:
        self.relays = RelayConnections(effect.pool, self.inbox, self.loop)
        self.relays.flush()
        deadline = self.loop.time() + effect.timeout
        while not effect.pool.settled:
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                break
            self.relays.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.relays.changed.wait(), remaining)
        return effect.pool.open_count

    async def _next_signal(self, timeout: float | None) -> Any:
        if not self.inbox.empty():
            return self.inbox.get_nowait()
        getter = asyncio.ensure_future(self.inbox.get())
        try:
            done, _ = await asyncio.wait({getter, self.stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter in done:
            return getter.result()
        if self.stopping in done:
            raise flows.Stopped()
        return None

    def _spawn(self, effect: fx.Spawn) -> None:
        child = NostrRunner(PrefixConsole(self.console, effect.label), parent=self)

        async def run_child() -> None:
            error: str | None = None
            try:
                await child.run(effect.flow, signals=False)
            except TunnelError as exc:
                error = exc.message
            except Exception as exc:
                log.exception("session %s crashed", effect.name)
                error = f"internal error: {type(exc).__name__}: {exc}"
            self.inbox.put_nowait(fx.SessionEnded(effect.name, error))

        task = self.loop.create_task(run_child())
        self.children.add(task)
        task.add_done_callback(self.children.discard)


def run_nostr_flow(flow: Any, console: Console | None = None) -> None:
    async def main() -> None:
        await NostrRunner(console).run_nostr(flow)

    asyncio.run(main())


def run_nostr_server(opts: NostrServerOptions, console: Console | None = None) -> None:
    run_nostr_flow(fx.nostr_server_flow(opts, os.urandom), console)


def run_nostr_client(opts: NostrClientOptions, console: Console | None = None) -> None:
    run_nostr_flow(fx.nostr_client_flow(opts, os.urandom), console)
