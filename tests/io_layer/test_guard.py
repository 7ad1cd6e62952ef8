"""A bug in a callback ends the run with the exception, on every runtime, instead of leaving a half-dead process.

Without tunnel_io.guard, asyncio logs "Exception in callback" and gevent prints the greenlet's traceback, and both
carry on: the dialogue below would sleep its 30 s (and a real tunnel could hang forever with a dead driver). The
runner's own shells are used (AsyncioRunner, TrioRunner, GeventRunner), so this is what the CLI meets: the crash
comes out of ``run`` and the CLI turns it into ``Error: internal error: ...``, exit 1.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tunnel_core import dialogue as dx
from tunnel_io import Console

pytestmark = pytest.mark.timeout(30)

SLEEP = 30.0


class Boom(Exception):
    pass


def crashing_dialogue(shell: Any, where: str) -> Iterator[Any]:
    """Schedules a callback that raises through the runner's reactor (``where`` picks the kind), then waits long."""
    reactor = shell.core.reactor

    def boom() -> None:
        raise Boom(where)

    if where == "soon":
        reactor.call_soon(boom)
    elif where == "timer":
        reactor.call_at(reactor.time() + 0.05, boom)
    else:  # a blocking call's report
        reactor.run_blocking(lambda: None, lambda ok, value: boom())
    yield dx.Sleep(SLEEP)


def run_asyncio(make: Callable[[Any], Iterator[Any]]) -> None:
    import asyncio

    from tunnel_asyncio.runner import AsyncioRunner

    async def main() -> None:
        shell = AsyncioRunner(Console(io.StringIO(), io.StringIO(), io.StringIO()), handle_signals=False)
        await shell.run(_late(shell, make))

    asyncio.run(main())


def run_trio(make: Callable[[Any], Iterator[Any]]) -> None:
    import trio

    from tunnel_trio.runner import TrioRunner

    async def main() -> None:
        shell = TrioRunner(Console(io.StringIO(), io.StringIO(), io.StringIO()), handle_signals=False)
        await shell.run(_late(shell, make))

    trio.run(main)


def run_gevent(make: Callable[[Any], Iterator[Any]]) -> None:
    from tunnel_gevent.runner import GeventRunner

    shell = GeventRunner(Console(io.StringIO(), io.StringIO(), io.StringIO()), handle_signals=False)
    shell.run(_late(shell, make))


def _late(shell: Any, make: Callable[[Any], Iterator[Any]]) -> Iterator[Any]:
    """The dialogue is built when it first runs, once the shell has its DialogueRunner."""
    yield from make(shell)


RUNNERS = {"asyncio": run_asyncio, "trio": run_trio, "gevent": run_gevent}


@pytest.mark.parametrize("where", ["soon", "timer", "blocking-report"])
@pytest.mark.parametrize("runtime", sorted(RUNNERS))
def test_a_callback_that_raises_ends_the_run_with_its_exception(runtime: str, where: str) -> None:
    started = time.monotonic()
    with pytest.raises(Boom, match=where):
        RUNNERS[runtime](lambda shell: crashing_dialogue(shell, where))
    assert time.monotonic() - started < SLEEP / 3  # not the dialogue's sleep: the crash ended it
