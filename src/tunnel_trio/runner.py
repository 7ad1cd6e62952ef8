"""The trio interpreter of tunnel_core.flows: performs each effect a flow yields and sends the result back.

``TrioRunner(console).run(flow)`` is an ordinary async function, so a trio program can run a tunnel in one of its
own nurseries and stop it with ``runner.stop()`` (orderly: CONNECTION_CLOSE "done") or by cancelling it (also
orderly: the close is shielded and bounded by CLOSE_GRACE).
"""

from __future__ import annotations

import math
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from tunnel_core import flows
from tunnel_core.errors import ProtocolError
from tunnel_core.ice.events import GatheringComplete
from tunnel_core.options import ExitCode, TunnelError
from tunnel_core.peer import IceConnected, TunnelClosed, TunnelReady
from tunnel_core.signal import BlockReader
from tunnel_core.types import Address
from tunnel_io import Console, bind_host_sockets, new_identity, unique_addresses
from tunnel_io.driver import PeerDriver
from tunnel_io.local import LocalForwarder
from tunnel_trio.reactor import TrioReactor

CLOSE_GRACE = 2.0
MILESTONES = ("gathered", "connected", "ready", "closed")


# ------------------------------------------------------------------------------------------------ OS helpers


async def resolve_all(host: str, port: int) -> list[str]:
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return unique_addresses(infos)


# ------------------------------------------------------------------------------------------------ the runner


class TrioRunner:
    """Runs one flow inside the caller's trio run; owns the sockets, the driver and the local forwarding I/O.

    ``handle_signals`` turns SIGINT/SIGTERM into an orderly stop; only possible in the main thread, and an
    embedding program that has its own signal policy passes False and calls ``stop()`` itself.
    """

    def __init__(self, console: Console | None = None, *, handle_signals: bool = True) -> None:
        self.console = console or Console()
        self.handle_signals = handle_signals
        self.sockets: dict[Address, socket.socket] = {}
        self.peer: Any = None
        self.driver: PeerDriver | None = None
        self.local: LocalForwarder | None = None
        self.results: dict[str, Any] = {}
        self._changed = trio.Event()
        self._stopping = False
        self._nursery: trio.Nursery | None = None

    def stop(self) -> None:
        """Ask the flow to end at its current wait; the tunnel closes with code 0 "done" and ``run`` returns."""
        self._stopping = True
        self._notify()

    # ------------------------------------------------------------------------------------------ flow loop

    async def run(self, flow: flows.Flow) -> None:
        """Run ``flow`` to its end. User-facing failures come out as TunnelError (never inside an ExceptionGroup)."""
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.handle_signals and _in_main_thread():
                await nursery.start(self._watch_signals)
            try:
                await self._drive(flow)
            except Exception as exc:  # re-raised below, outside the nursery (no ExceptionGroup wrapping)
                failure = exc
            finally:
                with trio.CancelScope(shield=True):
                    await self.close()
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _drive(self, flow: flows.Flow) -> None:
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                effect = flow.throw(error) if error is not None else flow.send(result)
            except (StopIteration, flows.Stopped):
                return
            except ProtocolError as exc:
                raise TunnelError(str(exc), ExitCode.USAGE) from None
            result, error = None, None
            try:
                result = await self._perform(effect)
            except (flows.Stopped, OSError) as exc:
                error = exc

    async def _watch_signals(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for _sig in signals:
                self.stop()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _stoppable(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Await ``fn(*args)`` unless a stop request comes first (then Stopped is thrown into the flow)."""
        done: list[Any] = []
        errors: list[Exception] = []
        async with trio.open_nursery() as nursery:

            async def work() -> None:
                try:
                    done.append(await fn(*args))
                except Exception as exc:  # re-raised below, outside the nursery (no ExceptionGroup wrapping)
                    errors.append(exc)
                nursery.cancel_scope.cancel()

            async def watch() -> None:
                while not self._stopping:
                    await self._changed.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(work)
            nursery.start_soon(watch)
        if errors:
            raise errors[0]
        if done:
            return done[0]
        raise flows.Stopped()

    # ------------------------------------------------------------------------------------------ effects

    async def _perform(self, effect: Any) -> Any:
        if isinstance(effect, flows.Say):
            self.console.say(effect.text)
        elif isinstance(effect, flows.PrintBlock):
            self.console.block(effect.text)
        elif isinstance(effect, flows.ReadBlock):
            return await self._stoppable(self._read_block, effect.kind)
        elif isinstance(effect, flows.BindHostSockets):
            self.sockets = bind_host_sockets(effect.wanted)
            return list(self.sockets)
        elif isinstance(effect, flows.Resolve):
            return await self._stoppable(resolve_all, effect.host, effect.port)
        elif isinstance(effect, flows.NewIdentity):
            return new_identity()
        elif isinstance(effect, flows.Start):
            await self._start(effect.peer)
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
        """Lines from stdin in a worker thread, so trio (and ICE answering checks) never blocks on the terminal."""
        reader = BlockReader(kind)  # type: ignore[arg-type]
        lines: list[str] = []
        try:
            while True:
                line = await trio.to_thread.run_sync(self.console.stdin.readline, abandon_on_cancel=True)
                if line == "":
                    reader.feed_eof()
                    raise TunnelError("Missing BEGIN marker", ExitCode.USAGE)
                lines.append(line)
                if reader.feed_line(line) is not None:
                    return "".join(lines)
        except ProtocolError as exc:
            raise TunnelError(str(exc), ExitCode.USAGE) from None

    async def _wait(self, kind: str, timeout: float | None) -> Any:
        with trio.move_on_after(math.inf if timeout is None else timeout):
            while True:
                if kind in self.results:
                    return self.results[kind]
                if "closed" in self.results:
                    return self.results["closed"]
                if self._stopping:
                    raise flows.Stopped()
                await self._changed.wait()
        return None

    async def _start(self, peer: Any) -> None:
        assert self._nursery is not None
        self.peer = peer
        reactor = TrioReactor(self._nursery)
        reactor.start()
        self.driver = PeerDriver(reactor, peer, self.sockets, self._on_event)
        self.local = LocalForwarder(reactor, lambda: peer.session, self.driver.kick_now, self.driver.now)

    def _on_event(self, ev: Any) -> None:
        if isinstance(ev, GatheringComplete):
            self._settle("gathered", ev)
        elif isinstance(ev, IceConnected):
            self._settle("connected", ev)
            assert self.driver is not None
            self.driver.keep_only(ev.local_address)
        elif isinstance(ev, TunnelReady):
            self._settle("ready", ev)
        elif isinstance(ev, TunnelClosed):
            self._settle("closed", ev)
        elif self.local is not None:
            self.local.handle(ev)

    def _settle(self, kind: str, value: Any) -> None:
        if kind not in self.results:
            self.results[kind] = value
            self._notify()

    async def close(self) -> None:
        """Orderly stop: CONNECTION_CLOSE(0, "done"), a short grace for it to leave, then release everything.

        The grace loop fires the machine's timer itself, so the close completes even when the caller's cancellation
        already stopped the driver's tasks.
        """
        peer, driver = self.peer, self.driver
        if peer is not None and driver is not None and not peer.closed:
            peer.close(driver.now(), "done")
            driver.flush()
            with trio.move_on_after(CLOSE_GRACE):
                while "closed" not in self.results and not peer.closed:
                    when = peer.get_timer()
                    with trio.move_on_at(math.inf if when is None else when):
                        await self._changed.wait()
                    if when is not None and trio.current_time() >= when:
                        peer.handle_timer(driver.now())
                        driver.flush()
        if self.local is not None:
            self.local.close()
        if self.driver is not None:
            self.driver.close()
        else:
            for sock in self.sockets.values():
                sock.close()  # never watched: nothing waits on them


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _unwrap(group: BaseExceptionGroup[Any]) -> BaseException:
    """trio wraps task failures in ExceptionGroups; a single user-facing error is shown as itself."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for leaf in leaves:
        if isinstance(leaf, TunnelError):
            return leaf
    return leaves[0] if len(leaves) == 1 else group


def run_flow(flow: flows.Flow, console: Console | None = None) -> None:
    """Run a flow to completion in a new trio run; user-facing failures come out as TunnelError."""

    async def main() -> None:
        await TrioRunner(console).run(flow)

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        raise _unwrap(group) from None


__all__ = ["CLOSE_GRACE", "Console", "TrioRunner", "run_flow"]
