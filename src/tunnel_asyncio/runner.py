"""The asyncio shell of tunnel_io's flow runner: signals, cancellation and the blocking entry points.

``AsyncioRunner(console).run(flow)`` runs a manual or nostr flow on the running loop (uvloop too) until it ends;
``stop()`` (or SIGINT/SIGTERM/SIGHUP) ends it orderly with CONNECTION_CLOSE "done". Cancelling the task that awaits
``run`` closes it orderly too, bounded by CLOSE_GRACE.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from tunnel_asyncio.reactor import AsyncioReactor
from tunnel_core import flows
from tunnel_io import Console
from tunnel_io.entry import restore_signal_handlers, save_signal_handlers
from tunnel_io.runner import CLOSE_GRACE, FlowRunner

#: The signals that stop a tunnel orderly (SIGHUP: the terminal went away).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class AsyncioRunner:
    """Runs one flow on the running asyncio loop. ``handle_signals`` (main thread only) turns SIGINT, SIGTERM and
    SIGHUP into ``stop()``; an embedding program with its own signal policy passes False."""

    def __init__(self, console: Console | None = None, *, handle_signals: bool = True) -> None:
        self.console = console or Console()
        self.handle_signals = handle_signals
        self.core: FlowRunner | None = None
        self._stop_early = False

    def stop(self) -> None:
        """Ask the running flow to end: the tunnel closes with code 0 "done" and ``run`` returns."""
        if self.core is None:
            self._stop_early = True
        else:
            self.core.stop()

    async def run(self, flow: flows.Flow, *, signals: bool | None = None) -> None:
        """Run ``flow`` to its end; user-facing failures come out as TunnelError. (``signals`` is the old name of
        ``handle_signals``, kept as an alias.)"""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[BaseException | None] = loop.create_future()
        self.core = core = FlowRunner(AsyncioReactor(loop), self.console)
        handle = self.handle_signals if signals is None else signals
        installed = _install_signals(loop, core.stop) if handle else {}
        core.start(flow, lambda failure: done.done() or done.set_result(failure))
        if self._stop_early:
            core.stop()
        try:
            failure = await asyncio.shield(done)
        except asyncio.CancelledError:
            core.stop()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(done), 2 * CLOSE_GRACE + 2.0)
            raise
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            restore_signal_handlers(installed)
        if failure is not None:
            raise failure

    run_nostr = run


def _install_signals(loop: asyncio.AbstractEventLoop, stop: Any) -> dict[int, Any]:
    installed = {}
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            previous = save_signal_handlers((sig,))
            loop.add_signal_handler(sig, stop)
            installed.update(previous)
    return installed


#: The runner also runs nostr flows; the old name stays as an alias.
NostrRunner = AsyncioRunner


def run_flow(flow: Any, console: Console | None = None) -> None:
    """Run a flow to completion on a new asyncio loop; user-facing failures come out as TunnelError."""

    async def main() -> None:
        await AsyncioRunner(console).run(flow)

    asyncio.run(main())


run_nostr_flow = run_flow

__all__ = ["CLOSE_GRACE", "AsyncioRunner", "Console", "NostrRunner", "run_flow", "run_nostr_flow"]
