"""Console entry points that a stop signal cannot turn into a traceback or a wrong exit code.

Cheap to import on purpose (only ``signal`` and ``sys``): the console scripts and ``python -m tunnel_<runtime>.cli``
import this first and everything else inside the guard, so Ctrl-C while Python is still loading the program gives
the one-line ``Interrupted; tunnel stopped.`` and exit 0 instead of a KeyboardInterrupt traceback. SIGINT, SIGTERM
and SIGHUP (terminal closed) raise ``Interrupted`` until a runner takes them over (it stops the tunnel orderly with a
QUIC close) and again after it gave them back. Once the command is done, every stop signal is ignored: the process is
only winding down, and a signal then must not replace the exit code already decided (a server that printed
``Connection closed.`` exits 0).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Sequence

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
INTERRUPTED = "Interrupted; tunnel stopped."


class Interrupted(KeyboardInterrupt):
    """A stop signal before or after a runner handles it. A subclass on purpose: CPython remembers an *exact*
    KeyboardInterrupt that crossed certain C-level calls (gevent's hub does so) and then ends the process with
    SIGINT at exit even though we caught it, which turned a clean stop into exit status -2."""


def _interrupt(_signum: int, _frame: object) -> None:
    raise Interrupted


def console_main(argv: Sequence[str] | None, program: str, runtime: str) -> int:
    """Run ``tunnel_cli.cli.run`` for the Program named ``program`` (an attribute of tunnel_cli.cli, or
    ``module:NAME``) on ``runtime``; returns the exit code."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _interrupt)
    try:
        try:
            from tunnel_cli import cli
            from tunnel_cli.heap import keep_freed_heap

            keep_freed_heap()

            if ":" in program:
                import importlib

                module, _, name = program.partition(":")
                chosen = getattr(importlib.import_module(module), name)
            else:
                chosen = getattr(cli, program)
            code = cli.run(argv, program=chosen, runtime=runtime)
        finally:
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr, flush=True)
        return 0
    return code


def console_mains(runtime: str) -> tuple[Callable[..., int], Callable[..., int]]:
    """``main`` (console script ``tunnel``) and ``main_ice`` (``tunnel-rs-ice``: the reference's ICE binary name,
    same flags, own default files) for ``runtime``."""

    def main(argv: Sequence[str] | None = None) -> int:
        return console_main(argv, "TUNNEL", runtime)

    def main_ice(argv: Sequence[str] | None = None) -> int:
        return console_main(argv, "TUNNEL_RS_ICE", runtime)

    return main, main_ice
