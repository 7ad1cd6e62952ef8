"""One test body per rule of the reactor contract (tunnel_io.reactor), run on the reference SelectReactor and on
every runtime: asyncio, uvloop, trio, gevent, and gevent under ``monkey.patch_all()`` (anyio's conftest habit: one
body, every backend). A runtime that breaks a rule the neutral layer relies on fails here, not in an e2e test."""

from __future__ import annotations

from typing import Any

import pytest

from io_layer import contract as c

pytestmark = [pytest.mark.timeout(60), pytest.mark.parametrize("runtime", c.RUNTIMES)]


def test_soon_runs_after_the_current_callback_in_order(runtime: str) -> None:
    seen = c.run_on(runtime, c.soon_runs_after_the_current_callback_in_order)
    assert seen == ["first", "first-end", "second", "nested"]


def test_timers_fire_in_deadline_order_never_early_and_not_when_cancelled(runtime: str) -> None:
    fired: list[Any] = c.run_on(runtime, c.timers_fire_in_deadline_order_never_early_and_not_when_cancelled)
    assert [name for name, _late in fired] == ["a", "b", "same", "same", "inside", "nested"]
    assert all(late >= -c.EARLY_TOLERANCE for _name, late in fired), fired


def test_read_readiness_follows_want(runtime: str) -> None:
    seen = c.run_on(runtime, c.read_readiness_follows_want)
    assert seen == {"got": ["x", "rearm", "y"], "closed": True}


def test_write_readiness_follows_want(runtime: str) -> None:
    assert c.run_on(runtime, c.write_readiness_follows_want) == 1


def test_close_stops_callbacks_even_when_due(runtime: str) -> None:
    assert c.run_on(runtime, c.close_stops_callbacks_even_when_due) == {"calls": [], "closed": True}


def test_a_disarmed_watch_hands_the_socket_on(runtime: str) -> None:
    assert c.run_on(runtime, c.a_disarmed_watch_hands_the_socket_on) == ["new"]


def test_run_blocking_reports_on_the_reactor_thread(runtime: str) -> None:
    results = c.run_on(runtime, c.run_blocking_reports_on_the_reactor_thread)
    # Failure first (sorted): the exception comes back as a value; success: ran on another thread.
    assert results == [[False, "ValueError('boom')", True], [True, True, True]]


def test_defer_runs_soon(runtime: str) -> None:
    assert c.run_on(runtime, c.defer_runs_soon) == "ran"


def test_time_is_monotonic_seconds(runtime: str) -> None:
    assert c.run_on(runtime, c.time_is_monotonic_seconds) is True
