"""The blocking entry points every runtime offers, built once from that runtime's ``run_dialogue``.

``run_manual_client/server(opts, console=None)`` and ``run_nostr_client/server(opts, console=None)`` build the dialogue
(tunnel_core.dialogue / dialogue_nostr, OS randomness) and run it to its end; user-facing failures come out as
TunnelError. The runtime modules (tunnel_<runtime>.manual / .nostr) only bind these to their runner.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any

from tunnel_core.dialogue import manual_client_dialogue, manual_server_dialogue
from tunnel_core.dialogue_nostr import nostr_client_dialogue, nostr_server_dialogue
from tunnel_io import Console
from tunnel_io.reactor import Reactor
from tunnel_io.runner import CLOSE_GRACE, DialogueRunner

RunDialogue = Callable[[Any, "Console | None"], None]

#: The signals that stop a tunnel orderly when a shell handles signals (SIGHUP: the terminal went away).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: The longest an orderly close may take after stop(): sessions, relays, then our own tunnel.
CLOSE_LIMIT = 2 * CLOSE_GRACE + 2.0


class RunnerShell:
    """What the three runtime shells (AsyncioRunner, TrioRunner, GeventRunner) share: the constructor, ``stop()``
    (also before ``run`` began) and starting the DialogueRunner. Each subclass adds only ``run(dialogue)``: how its
    runtime waits for the end, handles the stop signals and cancellation."""

    def __init__(self, console: Console | None = None, *, handle_signals: bool = True) -> None:
        self.console = console or Console()
        self.handle_signals = handle_signals
        self.core: DialogueRunner | None = None
        self._stop_early = False

    def stop(self) -> None:
        """Ask the dialogue to end at its current wait; the tunnel closes with code 0 "done" and ``run`` returns."""
        if self.core is None:
            self._stop_early = True
        else:
            self.core.stop()

    def _start(
        self, reactor: Reactor, dialogue: Any, on_done: Callable[[BaseException | None], None]
    ) -> DialogueRunner:
        self.core = core = DialogueRunner(reactor, self.console)
        core.start(dialogue, on_done)
        if self._stop_early:
            core.stop()
        return core
EntryPoint = Callable[..., None]


def _entry(
    run_dialogue: RunDialogue, make_dialogue: Callable[[Any, Callable[[int], bytes]], Any], name: str
) -> EntryPoint:
    def entry(opts: Any, console: Console | None = None) -> None:
        run_dialogue(make_dialogue(opts, os.urandom), console)

    entry.__name__ = entry.__qualname__ = name
    return entry


def manual_entry_points(run_dialogue: RunDialogue) -> tuple[EntryPoint, EntryPoint]:
    """(run_manual_client, run_manual_server)."""
    return (_entry(run_dialogue, manual_client_dialogue, "run_manual_client"),
            _entry(run_dialogue, manual_server_dialogue, "run_manual_server"))


def nostr_entry_points(run_dialogue: RunDialogue) -> tuple[EntryPoint, EntryPoint]:
    """(run_nostr_client, run_nostr_server)."""
    return (_entry(run_dialogue, nostr_client_dialogue, "run_nostr_client"),
            _entry(run_dialogue, nostr_server_dialogue, "run_nostr_server"))


def save_signal_handlers(signals: tuple[int, ...]) -> dict[int, Any]:
    """The Python-level handlers in place now (main thread only), for ``restore_signal_handlers``.

    Why: asyncio's ``remove_signal_handler`` resets to the default and libev's watchers bypass Python's table, so
    a shell that handled the stop signals while it ran puts back exactly what the program had before (the CLI relies
    on that: a signal while the process winds down must not kill it, see tunnel_cli.entry)."""
    return {sig: signal.getsignal(sig) for sig in signals}


def restore_signal_handlers(saved: dict[int, Any]) -> None:
    for sig, handler in saved.items():
        if handler is not None:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, handler)
