"""Long runs that mostly wait, started in one background thread as soon as collection is over (tests/conftest.py).

Why: the NAT suite (~100 s of ICE deadlines, consent timeouts and watch periods) and the fresh-clone install
(~1 min of pip) would otherwise hold the whole session while a CPU idles. A module offers such a run with the
fixture that needs it (``offer``, at import, i.e. during collection); when collection ends, the runs whose fixture
a collected test uses start, one after another, beside the tests collected before theirs. Their tests still run in
their place and assert on the results, which ``result`` hands over (joining the background run, or running it
there and then if it was not started). The thread is not a daemon: a session that ends early still waits for the
runs to finish and tear down what they built.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterable
from typing import Any

import attrs


@attrs.frozen
class _Offer:
    fixture: str
    fn: Callable[[], Any]


_offers: dict[str, _Offer] = {}
_started: dict[str, concurrent.futures.Future[Any]] = {}


def offer(name: str, fixture: str, fn: Callable[[], Any]) -> None:
    """Run ``fn`` early under ``name`` if a collected test uses ``fixture``; offers run in the order made."""
    _offers.setdefault(name, _Offer(fixture, fn))


def start_for(items: Iterable[Any]) -> list[str]:
    """Start the offered runs that a collected item needs (by its fixture names); returns their names."""
    used = {name for item in items for name in getattr(item, "fixturenames", ())}
    wanted = [(name, o.fn) for name, o in _offers.items() if o.fixture in used and name not in _started]
    if not wanted:
        return []
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="early")
    for name, fn in wanted:
        _started[name] = pool.submit(fn)
    pool.shutdown(wait=False)
    return [name for name, _ in wanted]


def result(name: str, fn: Callable[[], Any]) -> Any:
    """The background run's value (its exception raised here); ``fn()`` now if ``name`` was not started."""
    future = _started.get(name)
    return fn() if future is None else future.result()
