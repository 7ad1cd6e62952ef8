"""The gevent shell of tunnel_io's flow runner: signals, greenlet kill and the blocking entry points.

``GeventRunner(console).run(flow)`` blocks the calling greenlet only; the tunnel's watchers keep serving, so a
gevent program runs it with ``gevent.spawn(runner.run, flow)`` next to its other work and ends it with
``runner.stop()`` (orderly: CONNECTION_CLOSE "done"). Nothing here monkey-patches the standard library: whether
to patch is the embedding program's decision.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import gevent
import gevent.event

from tunnel_core import flows
from tunnel_gevent.reactor import GeventReactor
from tunnel_io import Console
from tunnel_io.entry import restore_signal_handlers, save_signal_handlers
from tunnel_io.runner import CLOSE_GRACE, FlowRunner

#: The signals that stop a tunnel orderly (SIGHUP: the terminal went away).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: The longest an orderly close may take: sessions, relays, then our own tunnel.
CLOSE_LIMIT = 2 * CLOSE_GRACE + 2.0


class GeventRunner:
    """Runs one flow, blocking only the calling greenlet. ``handle_signals`` (main thread only) turns SIGINT,
    SIGTERM and SIGHUP into ``stop()``; an embedding program with its own signal policy passes False."""

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

    def run(self, flow: flows.Flow) -> None:
        done = gevent.event.Event()
        self.core = core = FlowRunner(GeventReactor(), self.console)
        handlers, saved = [], {}
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            saved = save_signal_handlers(STOP_SIGNALS)
            handlers = [gevent.signal_handler(sig, core.stop) for sig in STOP_SIGNALS]
        core.start(flow, lambda _failure: done.set())
        if self._stop_early:
            core.stop()
        try:
            done.wait()
        finally:
            if not done.is_set():  # killed (GreenletExit) or interrupted: still close orderly, bounded
                core.stop()
                done.wait(CLOSE_LIMIT)
            for handler in handlers:
                handler.cancel()
            restore_signal_handlers(saved)
        if core.failure is not None:
            raise core.failure

    run_nostr = run


#: The runner also runs nostr flows; the old name stays as an alias.
NostrRunner = GeventRunner


def run_flow(flow: Any, console: Console | None = None) -> None:
    """Run a flow to completion in the current greenlet; user-facing failures come out as TunnelError."""
    GeventRunner(console).run(flow)


run_nostr_flow = run_flow

__all__ = ["CLOSE_GRACE", "Console", "GeventRunner", "NostrRunner", "run_flow", "run_nostr_flow"]
