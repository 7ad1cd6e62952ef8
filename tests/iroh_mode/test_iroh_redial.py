"""tunnel_iroh.redial: the reconnect loop's cadence and its relay check, on a real event loop with real loopback
sockets for the relay check; the dial itself is a stand-in coroutine (what it does against a real server is
tests/outage/test_durable.py's 90 s cut and tests/outage/test_reconnect.py's server restart). The intervals are
scaled down so the tests take a fraction of a second."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from tunnel_core.options import ExitCode, TunnelError
from tunnel_iroh import redial

SCALE = 0.05


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ATTEMPT_INTERVAL", "ATTEMPT_TIMEOUT", "LONG_TIMEOUT", "PROBE_INTERVAL", "PROBE_TIMEOUT"):
        monkeypatch.setattr(redial, name, getattr(redial, name) * SCALE)


class Dials:
    """Records when each attempt started, with which timeout, and how many ran at once; each fails after its
    timeout, except the ``succeed``-th, which returns a connection halfway through it, and (with ``need``) any
    attempt whose timeout leaves ``need`` seconds for the handshake."""

    def __init__(self, succeed: int | None = None, refuse: int | None = None, need: float | None = None) -> None:
        self.started: list[float] = []
        self.timeouts: list[float] = []
        self.need = need
        self.running = 0
        self.most = 0
        self.succeed = succeed
        self.refuse = refuse
        self.closed: list[Any] = []

    async def __call__(self, timeout: float) -> Any:
        loop = asyncio.get_running_loop()
        self.started.append(loop.time())
        self.timeouts.append(timeout)
        number = len(self.started)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            if number == self.refuse:
                raise TunnelError("Authentication rejected: auth_failed", ExitCode.AUTH)
            if self.need is not None and timeout >= self.need:
                await asyncio.sleep(self.need)
                return f"conn{number}"
            await asyncio.sleep(timeout * (0.5 if number == self.succeed else 1.0))
            if number == self.succeed:
                return f"conn{number}"
            raise TunnelError(f"Connection timed out after {timeout:g}s", ExitCode.CONNECT_FAILED)
        finally:
            self.running -= 1


def test_an_attempt_every_interval_at_most_two_short_ones_at_once_until_one_connects() -> None:
    dials = Dials(succeed=9)
    conn, attempts = asyncio.run(redial.redial(dials, budget=10.0, last="lost"))
    assert conn == "conn9" and attempts >= 9
    gaps = [b - a for a, b in zip(dials.started, dials.started[1:], strict=False)]
    assert min(gaps) >= redial.ATTEMPT_INTERVAL * 0.9, gaps
    assert max(gaps) <= redial.ATTEMPT_TIMEOUT * 1.5, gaps  # never a silence: one always starts soon
    assert dials.timeouts[redial.LONG_EVERY - 1] == redial.LONG_TIMEOUT
    assert dials.timeouts.count(redial.LONG_TIMEOUT) == 1  # one long attempt at a time
    assert dials.most == redial.IN_FLIGHT + 1  # two short ones beside the long one


def test_a_handshake_slower_than_the_short_timeout_still_connects_on_a_long_attempt() -> None:
    dials = Dials(need=redial.ATTEMPT_TIMEOUT * 3)
    conn, _attempts = asyncio.run(redial.redial(dials, budget=10.0, last="lost"))
    assert conn == f"conn{redial.LONG_EVERY}"
    assert dials.timeouts[redial.LONG_EVERY - 1] == redial.LONG_TIMEOUT


def test_a_refusal_ends_it_at_once_and_the_budget_ends_it_with_exit_11() -> None:
    with pytest.raises(TunnelError) as refused:
        asyncio.run(redial.redial(Dials(refuse=2), budget=10.0, last="lost"))
    assert refused.value.exit_code == ExitCode.AUTH
    dials = Dials()
    with pytest.raises(TunnelError) as gave_up:
        asyncio.run(redial.redial(dials, budget=0.5, last="lost"))
    assert gave_up.value.exit_code == ExitCode.CONNECTION_LOST
    assert "Gave up reconnecting" in gave_up.value.message and "timed out" in gave_up.value.message
    assert len(dials.started) <= 0.5 / redial.ATTEMPT_INTERVAL + 1


def test_relay_address_of_urls() -> None:
    assert redial.relay_address("https://Relay.Example:8443/") == ("relay.example", 8443)
    assert redial.relay_address("https://relay.example") == ("relay.example", 443)
    assert redial.relay_address("http://198.51.100.10:8300") == ("198.51.100.10", 8300)
    assert redial.relay_address("http://[::1]:80") == ("::1", 80)
    assert redial.relay_address("http://x:99999") is None
    assert redial.relay_address("no url") is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _relay_comes_back(port: int, after: float, dials: Dials, fresh: list[float]) -> tuple[Any, int, int]:
    """The relay's port refuses until ``after`` seconds, then accepts (counting connections)."""
    loop = asyncio.get_running_loop()
    accepted = 0

    def on_connection(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.close()

    async def listen_later() -> asyncio.base_events.Server:
        await asyncio.sleep(after)
        return await asyncio.start_server(on_connection, "127.0.0.1", port)

    async def fresh_endpoint() -> None:
        fresh.append(loop.time())
        dials.succeed = len(dials.started) + 1  # the fresh endpoint's first attempt connects

    server_task = asyncio.ensure_future(listen_later())
    if after <= 0:
        await asyncio.wait([server_task])
    probe = redial.RelayProbe(("127.0.0.1", port))
    try:
        conn, attempts = await redial.redial(dials, budget=10.0, last="lost", probe=probe,
                                             fresh_endpoint=fresh_endpoint)
        await asyncio.sleep(redial.PROBE_INTERVAL * 3)  # no more relay checks once it answered
    finally:
        server = await server_task
        server.close()
    return conn, attempts, accepted


def test_the_relay_answering_again_gets_a_fresh_endpoint_once() -> None:
    dials, fresh = Dials(), []
    conn, attempts, accepted = asyncio.run(_relay_comes_back(_free_port(), 0.3, dials, fresh))
    assert len(fresh) == 1
    assert conn == f"conn{dials.succeed}" and attempts == len(dials.started)
    assert accepted == 1  # one check answered; then no more checks


def test_a_relay_that_answers_from_the_start_costs_one_connect_and_no_fresh_endpoint() -> None:
    dials, fresh = Dials(succeed=4), []
    conn, attempts, accepted = asyncio.run(_relay_comes_back(_free_port(), 0.0, dials, fresh))
    assert fresh == []
    assert conn == "conn4" and attempts >= 4
    assert accepted == 1
