"""The reactor contract (tunnel_io.reactor) as scenarios, and a way to run one on any runtime.

A scenario is ``scenario(reactor, finish)``: it sets up callbacks on the reactor and calls ``finish(observations)``
with JSON-able observations; the test body asserts on them afterwards, outside the loop. The same scenario runs on
the reference SelectReactor, asyncio, uvloop, trio, gevent, and gevent under ``monkey.patch_all()`` (in a fresh
interpreter, since patching cannot be undone: ``python contract.py SCENARIO`` prints the observations as JSON).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

Finish = Callable[[Any], None]
Scenario = Callable[[Any, Finish], None]
TIMEOUT = 5.0
#: Timers may fire a little late (scheduling), never early; this much clock granularity is tolerated.
EARLY_TOLERANCE = 0.001

RUNTIMES = ("select", "asyncio", "uvloop", "trio", "gevent", "gevent-patched")


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def _nothing() -> None:
    pass


# ------------------------------------------------------------------------------------------------ scenarios


def soon_runs_after_the_current_callback_in_order(r: Any, finish: Finish) -> None:
    seen: list[str] = []

    def first() -> None:
        seen.append("first")
        r.call_soon(lambda: seen.append("nested"))
        seen.append("first-end")

    r.call_soon(first)
    r.call_soon(lambda: seen.append("second"))
    r.call_at(r.time() + 0.05, lambda: finish(seen))


def timers_fire_in_deadline_order_never_early_and_not_when_cancelled(r: Any, finish: Finish) -> None:
    t0 = r.time()
    fired: list[list[Any]] = []

    def at(delay: float, name: str) -> Any:
        return r.call_at(t0 + delay, lambda: fired.append([name, r.time() - t0 - delay]))

    at(0.03, "b")
    at(0.01, "a")
    at(0.02, "cancelled").cancel()
    at(0.04, "same")
    at(0.04, "same")  # the order of equal deadlines is not part of the contract (asyncio and libev differ)

    def inside() -> None:
        fired.append(["inside", 0.0])
        own = r.call_at(r.time() + 0.01, lambda: fired.append(["cancelled-inside", 0.0]))
        own.cancel()
        r.call_at(r.time() + 0.01, lambda: fired.append(["nested", 0.0]))

    r.call_at(t0 + 0.05, inside)
    r.call_at(t0 + 0.15, lambda: finish(fired))


def read_readiness_follows_want(r: Any, finish: Finish) -> None:
    a, b = _pair()
    got: list[str] = []
    watch: Any = None

    def on_readable() -> None:
        got.append(a.recv(100).decode())
        if got == ["x"]:
            watch.want(read=False, write=False)
            b.send(b"y")  # readable now, but disarmed: no callback until re-armed
            r.call_at(r.time() + 0.05, rearm)
        else:
            watch.close()
            b.close()
            finish({"got": got, "closed": a.fileno() == -1})

    def rearm() -> None:
        got.append("rearm")
        watch.want(read=True, write=False)

    watch = r.watch(a, on_readable, _nothing)
    watch.want(read=True, write=False)
    b.send(b"x")


def write_readiness_follows_want(r: Any, finish: Finish) -> None:
    a, b = _pair()
    calls: list[int] = []
    watch: Any = None

    def on_writable() -> None:
        calls.append(1)
        watch.want(read=False, write=False)

    def done() -> None:
        watch.close()
        b.close()
        finish(len(calls))

    watch = r.watch(a, _nothing, on_writable)
    watch.want(read=False, write=True)
    r.call_at(r.time() + 0.05, done)


def close_stops_callbacks_even_when_due(r: Any, finish: Finish) -> None:
    a, b = _pair()
    calls: list[int] = []
    watch = r.watch(a, lambda: calls.append(1), lambda: calls.append(2))
    watch.want(read=True, write=True)
    b.send(b"x")
    watch.close()
    watch.close()  # idempotent
    timer = r.call_at(r.time(), lambda: calls.append(3))
    timer.cancel()
    timer.cancel()

    def done() -> None:
        b.close()
        finish({"calls": calls, "closed": a.fileno() == -1})

    r.call_at(r.time() + 0.05, done)


def a_disarmed_watch_hands_the_socket_on(r: Any, finish: Finish) -> None:
    a, b = _pair()
    seen: list[str] = []
    old = r.watch(a, lambda: seen.append("old"), _nothing)
    old.want(read=True, write=False)
    old.want(read=False, write=False)

    def on_new() -> None:
        seen.append(a.recv(10).decode())
        new.close()
        b.close()
        finish(seen)

    new = r.watch(a, on_new, _nothing)
    new.want(read=True, write=False)
    b.send(b"new")


def _native_ident() -> Callable[[], int]:
    """The OS thread's id even under gevent's patching (which makes get_ident tell greenlets apart)."""
    if "gevent.monkey" in sys.modules:
        from gevent import monkey

        if monkey.is_module_patched("threading"):
            return monkey.get_original("_thread", "get_ident")
    return threading.get_ident


def run_blocking_reports_on_the_reactor_thread(r: Any, finish: Finish) -> None:
    get_ident = _native_ident()
    here = get_ident()
    results: list[Any] = []

    def fails() -> None:
        raise ValueError("boom")

    def done(ok: bool, value: Any) -> None:
        results.append([ok, repr(value) if not ok else value != here, get_ident() == here])
        if len(results) == 2:
            finish(sorted(results, key=lambda item: item[0]))

    r.run_blocking(lambda: get_ident(), done)
    r.run_blocking(fails, done)


def defer_runs_soon(r: Any, finish: Finish) -> None:
    r.defer(lambda: finish("ran"))


def time_is_monotonic_seconds(r: Any, finish: Finish) -> None:
    t1 = r.time()
    r.call_at(t1 + 0.02, lambda: finish(r.time() - t1 >= 0.02 - EARLY_TOLERANCE))


SCENARIOS: dict[str, Scenario] = {fn.__name__: fn for fn in (
    soon_runs_after_the_current_callback_in_order,
    timers_fire_in_deadline_order_never_early_and_not_when_cancelled,
    read_readiness_follows_want,
    write_readiness_follows_want,
    close_stops_callbacks_even_when_due,
    a_disarmed_watch_hands_the_socket_on,
    run_blocking_reports_on_the_reactor_thread,
    defer_runs_soon,
    time_is_monotonic_seconds,
)}


# ------------------------------------------------------------------------------------------------ runtimes


def run_on(runtime: str, scenario: Scenario) -> Any:
    """Run ``scenario`` on ``runtime``'s reactor until it finishes (at most TIMEOUT); return its observations."""
    if runtime == "select":
        from tunnel_io.testing import SelectReactor

        reactor = SelectReactor()
        box: list[Any] = []
        scenario(reactor, box.append)
        try:
            assert reactor.run_until(lambda: bool(box), TIMEOUT), "the scenario never finished"
        finally:
            reactor.close()
        return json.loads(json.dumps(box[0]))
    if runtime in ("asyncio", "uvloop"):
        import asyncio

        from tunnel_asyncio.reactor import AsyncioReactor

        async def main() -> Any:
            fut = asyncio.get_running_loop().create_future()
            scenario(AsyncioReactor(), lambda value: fut.done() or fut.set_result(value))
            return await asyncio.wait_for(fut, TIMEOUT)

        if runtime == "asyncio":
            return json.loads(json.dumps(asyncio.run(main())))
        import uvloop

        loop = uvloop.new_event_loop()
        try:
            return json.loads(json.dumps(loop.run_until_complete(main())))
        finally:
            loop.close()
    if runtime == "trio":
        import trio

        from tunnel_trio.reactor import TrioReactor

        async def trio_main() -> Any:
            result: list[Any] = []
            finished = trio.Event()
            async with trio.open_nursery() as nursery:
                reactor = TrioReactor(nursery)
                reactor.start()

                def finish(value: Any) -> None:
                    result.append(value)
                    finished.set()

                scenario(reactor, finish)
                with trio.fail_after(TIMEOUT):
                    await finished.wait()
                nursery.cancel_scope.cancel()
            return result[0]

        return json.loads(json.dumps(trio.run(trio_main)))
    if runtime == "gevent":
        import gevent.event

        from tunnel_gevent.reactor import GeventReactor

        outcome = gevent.event.AsyncResult()
        scenario(GeventReactor(), outcome.set)
        return json.loads(json.dumps(outcome.get(timeout=TIMEOUT)))
    if runtime == "gevent-patched":
        here = Path(__file__).resolve()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(here.parent.parent), os.environ.get("PYTHONPATH")])))
        out = subprocess.run([sys.executable, str(here), scenario.__name__], capture_output=True, text=True,
                             timeout=60, env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        return json.loads(out.stdout)
    raise ValueError(runtime)


if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()
    assert monkey.is_module_patched("socket") and monkey.is_module_patched("threading")
    print(json.dumps(run_on("gevent", SCENARIOS[sys.argv[1]])))
