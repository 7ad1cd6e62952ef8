"""The asyncio interpreter of tunnel_core.flows: performs each effect a flow yields and sends the result back."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from typing import Any

import tunnel_io
from tunnel_asyncio import common
from tunnel_asyncio.reactor import AsyncioReactor
from tunnel_core import flows
from tunnel_core.errors import ProtocolError
from tunnel_core.ice.events import GatheringComplete
from tunnel_core.options import ExitCode, TunnelError
from tunnel_core.peer import IceConnected, TunnelClosed, TunnelReady
from tunnel_core.signal import BlockReader
from tunnel_core.types import Address
from tunnel_io import Console
from tunnel_io.driver import PeerDriver
from tunnel_io.local import LocalForwarder

CLOSE_GRACE = 2.0


class AsyncioRunner:
    """Runs one flow on the running asyncio loop; owns the sockets, the driver and the local forwarding I/O."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.loop = asyncio.get_running_loop()
        self.sockets: dict[Address, socket.socket] = {}
        self.peer: Any = None
        self.driver: PeerDriver | None = None
        self.local: LocalForwarder | None = None
        self.milestones: dict[str, asyncio.Future[Any]] = {
            k: self.loop.create_future() for k in ("gathered", "connected", "ready", "closed")
        }
        self.stopping: asyncio.Future[None] = self.loop.create_future()
        self._stdin_lines: asyncio.Queue[str] | None = None

    # ------------------------------------------------------------------------------------------ flow loop

    async def run(self, flow: flows.Flow, *, signals: bool = True) -> None:
        """``signals=False`` for a sub-flow (a nostr server session): its parent owns SIGINT/SIGTERM."""
        installed = self._install_signals() if signals else []
        try:
            result: Any = None
            error: BaseException | None = None
            while True:
                try:
                    effect = flow.throw(error) if error is not None else flow.send(result)
                except StopIteration:
                    return
                except flows.Stopped:
                    return
                except ProtocolError as exc:
                    raise TunnelError(str(exc), ExitCode.USAGE) from None
                result, error = None, None
                try:
                    result = await self._perform(effect)
                except flows.Stopped as exc:
                    error = exc
                except OSError as exc:
                    error = exc
                except ProtocolError as exc:
                    # Bad outside input met while performing (a pasted block cut short): the user's input error.
                    raise TunnelError(str(exc), ExitCode.USAGE) from None
        finally:
            for sig in installed:
                self.loop.remove_signal_handler(sig)
            await self.close()

    def _install_signals(self) -> list[int]:
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                self.loop.add_signal_handler(sig, self._on_signal)
                installed.append(sig)
        return installed

    def stop(self) -> None:
        """Ask the running flow to end: the tunnel closes with code 0 "done" and run() returns (any thread-safe
        caller on this loop; SIGINT/SIGTERM do the same)."""
        if not self.stopping.done():
            self.stopping.set_result(None)

    def _on_signal(self) -> None:
        self.stop()

    async def _stoppable(self, awaitable: Any) -> Any:
        task = asyncio.ensure_future(awaitable)
        done, _ = await asyncio.wait({task, self.stopping}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        raise flows.Stopped()

    # ------------------------------------------------------------------------------------------ effects

    async def _perform(self, effect: Any) -> Any:
        if isinstance(effect, flows.Say):
            self.console.say(effect.text)
        elif isinstance(effect, flows.PrintBlock):
            self.console.block(effect.text)
        elif isinstance(effect, flows.ReadBlock):
            return await self._stoppable(self._read_block(effect.kind))
        elif isinstance(effect, flows.BindHostSockets):
            self.sockets = tunnel_io.bind_host_sockets(effect.wanted)
            return list(self.sockets)
        elif isinstance(effect, flows.Resolve):
            return await self._stoppable(common.resolve_all(effect.host, effect.port))
        elif isinstance(effect, flows.NewIdentity):
            return tunnel_io.new_identity()
        elif isinstance(effect, flows.Start):
            self._start(effect.peer)
        elif isinstance(effect, flows.Poke):
            assert self.driver is not None
            effect.fn(self.driver.now())
            self.driver.flush()
        elif isinstance(effect, flows.Wait):
            return await self._wait(effect.kind, effect.timeout)
        elif isinstance(effect, flows.Listen):
            assert self.local is not None
            if effect.protocol == "tcp":
                return self.local.listen_tcp(effect.ip, effect.port)
            return self.local.listen_udp(effect.ip, effect.port)
        else:  # pragma: no cover - a flow yielded something new
            raise TypeError(f"unknown effect {effect!r}")
        return None

    async def _read_block(self, kind: str) -> str:
        """Lines from stdin via a daemon thread, so the loop (and ICE answering checks) never blocks.

        Not the default executor: asyncio.run() joins its threads at exit, and a thread parked in readline()
        would keep a Ctrl-C'd process alive until the user pressed Enter.
        """
        reader = BlockReader(kind)  # type: ignore[arg-type]
        lines: list[str] = []
        while True:
            line = await self._next_stdin_line()
            if line == "":
                reader.feed_eof()  # raises the reference's message (missing BEGIN / END marker)
                raise TunnelError("Missing BEGIN marker", ExitCode.USAGE)
            lines.append(line)
            if reader.feed_line(line) is not None:
                return "".join(lines)

    async def _next_stdin_line(self) -> str:
        if self._stdin_lines is None:
            self._stdin_lines = asyncio.Queue()
            queue, loop, stream = self._stdin_lines, self.loop, self.console.stdin

            def pump() -> None:
                while True:
                    try:
                        line = stream.readline()
                    except (OSError, ValueError):
                        line = ""
                    try:
                        loop.call_soon_threadsafe(queue.put_nowait, line)
                    except RuntimeError:  # the loop is gone: the program is exiting
                        return
                    if line == "":
                        return

            threading.Thread(target=pump, name="stdin", daemon=True).start()
        return await self._stdin_lines.get()

    async def _wait(self, kind: str, timeout: float | None) -> Any:
        fut = self.milestones[kind]
        closed = self.milestones["closed"]
        waiters = {fut, closed} if kind != "closed" else {closed}
        done, _ = await asyncio.wait({*waiters, self.stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if fut in done:
            return fut.result()
        if closed in done:
            return closed.result()
        if self.stopping in done:
            raise flows.Stopped()
        return None

    def _start(self, peer: Any) -> None:
        self.peer = peer
        reactor = AsyncioReactor(self.loop)
        self.driver = PeerDriver(reactor, peer, self.sockets, self._on_event)
        self.local = LocalForwarder(reactor, lambda: peer.session, self.driver.kick_now, self.driver.now)

    def _on_event(self, ev: Any) -> None:
        if isinstance(ev, GatheringComplete):
            _settle(self.milestones["gathered"], ev)
        elif isinstance(ev, IceConnected):
            _settle(self.milestones["connected"], ev)
            assert self.driver is not None
            self.driver.keep_only(ev.local_address)
        elif isinstance(ev, TunnelReady):
            _settle(self.milestones["ready"], ev)
        elif isinstance(ev, TunnelClosed):
            _settle(self.milestones["closed"], ev)
        elif self.local is not None:
            self.local.handle(ev)

    async def close(self) -> None:
        """Orderly stop: CONNECTION_CLOSE(0, "done"), a short grace for it to leave, then release everything."""
        if self.peer is not None and self.driver is not None and not self.peer.closed:
            self.peer.close(self.driver.now(), "done")
            self.driver.flush()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.milestones["closed"]), CLOSE_GRACE)
        if self.local is not None:
            self.local.close()
        if self.driver is not None:
            self.driver.close()
        else:
            for sock in self.sockets.values():
                sock.close()


def _settle(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def run_flow(flow: flows.Flow, console: Console | None = None) -> None:
    """Run a flow to completion on a new asyncio loop; user-facing failures come out as TunnelError."""

    async def main() -> None:
        await AsyncioRunner(console).run(flow)

    asyncio.run(main())
