"""The trio shell of tunnel_io's dialogue runner: signals, cancellation and the blocking entry points.

``TrioRunner(console).run(dialogue)`` is an ordinary async function, so a trio program can run a tunnel (manual or
nostr) in one of its own nurseries and stop it with ``runner.stop()`` (orderly: CONNECTION_CLOSE "done") or by
cancelling it (also orderly: the reactor's tasks live in a shielded nursery, so the close can finish, bounded).
"""

from __future__ import annotations

import threading
from typing import Any

import trio

from tunnel_core.dialogue import Dialogue
from tunnel_core.options import TunnelError
from tunnel_io import Console
from tunnel_io.entry import CLOSE_LIMIT, STOP_SIGNALS, RunnerShell, manual_entry_points, nostr_entry_points
from tunnel_io.runner import CLOSE_GRACE  # noqa: F401 - part of this module's public names
from tunnel_trio.reactor import TrioReactor


class TrioRunner(RunnerShell):
    """Runs one dialogue inside the caller's trio run. ``handle_signals`` (main thread only) turns SIGINT, SIGTERM and
    SIGHUP into ``stop()``; an embedding program with its own signal policy passes False."""

    async def run(self, dialogue: Dialogue) -> None:
        """Run ``dialogue`` to its end; user-facing failures come out as TunnelError (never in an ExceptionGroup)."""
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
            if self.handle_signals and threading.current_thread() is threading.main_thread():
                await outer.start(self._watch_signals)
            core = self._start(reactor, dialogue, lambda _failure: done.set())
            try:
                await done.wait()
            finally:
                with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_LIMIT):
                    self.stop()
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


#: The runner also runs nostr dialogues; the old name stays as an alias.
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


def run_dialogue(dialogue: Any, console: Console | None = None) -> None:
    """Run a dialogue to completion in a new trio run; user-facing failures come out as TunnelError."""

    async def main() -> None:
        await TrioRunner(console).run(dialogue)

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        raise _unwrap(group) from None


run_nostr_dialogue = run_dialogue
run_manual_client, run_manual_server = manual_entry_points(run_dialogue)
run_nostr_client, run_nostr_server = nostr_entry_points(run_dialogue)


#: Old names, kept for embedders; docs/embedding.md.
run_flow = run_nostr_flow = run_dialogue
