"""The asyncio shell of tunnel_io's dialogue runner: signals, cancellation and the blocking entry points.

``AsyncioRunner(console).run(dialogue)`` runs a manual or nostr dialogue on the running loop (uvloop too) until it ends;
``stop()`` (or SIGINT/SIGTERM/SIGHUP) ends it orderly with CONNECTION_CLOSE "done". Cancelling the task that awaits
``run`` closes it orderly too, bounded by CLOSE_LIMIT (tunnel_io.entry).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from tunnel_asyncio.reactor import AsyncioReactor
from tunnel_core.dialogue import Dialogue
from tunnel_io import Console, entry
from tunnel_io.runner import CLOSE_GRACE  # noqa: F401 - part of this module's public names


class AsyncioRunner(entry.RunnerShell):
    """Runs one dialogue on the running asyncio loop. ``handle_signals`` (main thread only) turns SIGINT, SIGTERM and
    SIGHUP into ``stop()``; an embedding program with its own signal policy passes False."""

    async def run(self, dialogue: Dialogue, *, signals: bool | None = None) -> None:
        """Run ``dialogue`` to its end; user-facing failures come out as TunnelError. (``signals`` is the old name of
        ``handle_signals``, kept as an alias.)"""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[BaseException | None] = loop.create_future()
        handle = self.handle_signals if signals is None else signals
        installed = _install_signals(loop, self.stop) if handle else {}
        self._start(AsyncioReactor(loop), dialogue, lambda failure: done.done() or done.set_result(failure))
        try:
            failure = await asyncio.shield(done)
        except asyncio.CancelledError:
            self.stop()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(done), entry.CLOSE_LIMIT)
            raise
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            entry.restore_signal_handlers(installed)
        if failure is not None:
            raise failure

    run_nostr = run


def _install_signals(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> dict[int, Any]:
    installed = {}
    for sig in entry.STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            previous = entry.save_signal_handlers((sig,))
            loop.add_signal_handler(sig, stop)
            installed.update(previous)
    return installed


#: The runner also runs nostr dialogues; the old name stays as an alias.
NostrRunner = AsyncioRunner


def run_dialogue(dialogue: Any, console: Console | None = None) -> None:
    """Run a dialogue to completion on a new asyncio loop; user-facing failures come out as TunnelError."""

    async def main() -> None:
        await AsyncioRunner(console).run(dialogue)

    asyncio.run(main())


run_nostr_dialogue = run_dialogue
run_manual_client, run_manual_server = entry.manual_entry_points(run_dialogue)
run_nostr_client, run_nostr_server = entry.nostr_entry_points(run_dialogue)


#: Old names, kept for embedders; docs/embedding.md.
run_flow = run_nostr_flow = run_dialogue
