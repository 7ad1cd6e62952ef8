"""The trio shell of tunnel_io's flow runner: signals, cancellation and the blocking entry points.

``TrioRunner(console).run(flow)`` is an ordinary async function, so a trio program can run a tunnel (manual or
nostr) in one of its own nurseries and stop it with ``runner.stop()`` (orderly: CONNECTION_CLOSE "done") or by
cancelling it (also orderly: the reactor's tasks live in a shielded nursery, so the close can finish, bounded).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import trio

from tunnel_core import flows
from tunnel_core.options import TunnelError
from tunnel_io import Console
from tunnel_io.runner import CLOSE_GRACE, FlowRunner
from tunnel_trio.reactor import TrioReactor

#: The signals that stop a tunnel orderly (SIGHUP: the terminal went away).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: The longest an orderly close may take: sessions, relays, then our own tunnel.
CLOSE_LIMIT = 2 * CLOSE_GRACE + 2.0


class TrioRunner:
    """Runs one flow inside the caller's trio run. ``handle_signals`` (main thread only) turns SIGINT, SIGTERM and
    SIGHUP into ``stop()``; an embedding program with its own signal policy passes False."""

    def __init__(self, console: Console | None = None, *, handle_signals: bool = True) -> None:
        self.console = console or Console()
        self.handle_signals = handle_signals
        self.core: FlowRunner | None = None
        self._stop_early = False

    def stop(self) -> None:
        """Ask the flow to end at its current wait; the tunnel closes with code 0 "done" and ``run`` returns."""
        if self.core is None:
            self._stop_early = True
        else:
            self.core.stop()

    async def run(self, flow: flows.Flow) -> None:
        """Run ``flow`` to its end. User-facing failures come out as TunnelError (never inside an ExceptionGroup)."""
        done = trio.Event()
        reactor_scope = trio.CancelScope(shield=True)
        async with trio.open_nursery() as outer:

            async def host(*, task_status: trio.TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED) -> None:
                with reactor_scope:
                    async with trio.open_nursery() as nursery:
                        task_status.started(nursery)
                        await trio.sleep_forever()

            reactor = TrioReactor(await outer.start(host))
            reactor.start()
            self.core = core = FlowRunner(reactor, self.console)
            if self.handle_signals and threading.current_thread() is threading.main_thread():
                await outer.start(self._watch_signals)
            core.start(flow, lambda _failure: done.set())
            if self._stop_early:
                core.stop()
            try:
                await done.wait()
            finally:
                with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_LIMIT):
                    core.stop()
                    await done.wait()
                reactor_scope.cancel()
                outer.cancel_scope.cancel()
        if core.failure is not None:
            raise core.failure

    run_nostr = run

    async def _watch_signals(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            task_status.started()
            async for _sig in signals:
                self.stop()


#: The runner also runs nostr flows; the old name stays as an alias.
NostrRunner = TrioRunner


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


def run_flow(flow: Any, console: Console | None = None) -> None:
    """Run a flow to completion in a new trio run; user-facing failures come out as TunnelError."""

    async def main() -> None:
        await TrioRunner(console).run(flow)

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        raise _unwrap(group) from None


run_nostr_flow = run_flow

__all__ = ["CLOSE_GRACE", "Console", "NostrRunner", "TrioRunner", "run_flow", "run_nostr_flow"]
