"""The gevent shell of tunnel_io's dialogue runner: signals, greenlet kill and the blocking entry points.

``GeventRunner(console).run(dialogue)`` blocks the calling greenlet only; the tunnel's watchers keep serving, so a
gevent program runs it with ``gevent.spawn(runner.run, dialogue)`` next to its other work and ends it with
``runner.stop()`` (orderly: CONNECTION_CLOSE "done"). Nothing here monkey-patches the standard library: whether
to patch is the embedding program's decision.
"""

from __future__ import annotations

import threading
from typing import Any

import gevent
import gevent.event

from tunnel_core.dialogue import Dialogue
from tunnel_gevent.reactor import GeventReactor
from tunnel_io import Console
from tunnel_io.entry import (
    CLOSE_LIMIT,
    STOP_SIGNALS,
    RunnerShell,
    manual_entry_points,
    nostr_entry_points,
    restore_signal_handlers,
    save_signal_handlers,
)
from tunnel_io.runner import CLOSE_GRACE  # noqa: F401 - part of this module's public names


class GeventRunner(RunnerShell):
    """Runs one dialogue, blocking only the calling greenlet. ``handle_signals`` (main thread only) turns SIGINT,
    SIGTERM and SIGHUP into ``stop()``; an embedding program with its own signal policy passes False."""

    def run(self, dialogue: Dialogue) -> None:
        done = gevent.event.Event()
        handlers, saved = [], {}
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            saved = save_signal_handlers(STOP_SIGNALS)
            handlers = [gevent.signal_handler(sig, self.stop) for sig in STOP_SIGNALS]
        core = self._start(GeventReactor(), dialogue, lambda _failure: done.set())
        try:
            done.wait()
        finally:
            if not done.is_set():  # killed (GreenletExit) or interrupted: still close orderly, bounded
                self.stop()
                done.wait(CLOSE_LIMIT)
            for handler in handlers:
                handler.cancel()
            restore_signal_handlers(saved)
        if core.failure is not None:
            raise core.failure

    run_nostr = run


#: The runner also runs nostr dialogues; the old name stays as an alias.
NostrRunner = GeventRunner


def run_dialogue(dialogue: Any, console: Console | None = None) -> None:
    """Run a dialogue to completion in the current greenlet; user-facing failures come out as TunnelError."""
    GeventRunner(console).run(dialogue)


run_nostr_dialogue = run_dialogue
run_manual_client, run_manual_server = manual_entry_points(run_dialogue)
run_nostr_client, run_nostr_server = nostr_entry_points(run_dialogue)


#: Old names, kept for embedders; docs/embedding.md.
run_flow = run_nostr_flow = run_dialogue
