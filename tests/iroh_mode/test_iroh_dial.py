"""The iroh server's happy-eyeballs TCP dial: staggered starts, first success wins, losers closed, all
errors reported. Real sockets on 127.0.0.1 only; slow addresses are simulated by patching one attempt."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from tunnel_iroh import dial
from tunnel_iroh.dial import DialFailed, happy_eyeballs


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _listener() -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


def test_refused_first_address_falls_through_to_a_live_one() -> None:
    async def main() -> None:
        server, port = await _listener()
        async with server:
            dead = _closed_port()
            _reader, writer = await happy_eyeballs([("127.0.0.1", dead), ("127.0.0.1", port)], limit=1 << 16)
            assert writer.get_extra_info("peername")[1] == port
            writer.close()

    asyncio.run(main())


def test_all_refused_lists_every_error() -> None:
    async def main() -> None:
        ports = [_closed_port(), _closed_port()]
        with pytest.raises(DialFailed) as info:
            await happy_eyeballs([("127.0.0.1", p) for p in ports], limit=1 << 16)
        assert len(info.value.errors) == 2 and all(f":{p}:" in str(info.value) for p in ports)
        with pytest.raises(DialFailed):
            await happy_eyeballs([], limit=1 << 16)

    asyncio.run(main())


def test_a_hanging_first_address_costs_one_stagger_not_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[tuple[str, float]] = []
    cancelled: list[str] = []

    async def fake(address: tuple[str, int], limit: int, timeout: float) -> Any:
        loop = asyncio.get_running_loop()
        started.append((address[0], loop.time()))
        if address[0] == "hang":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(address[0])
                raise
        reader, writer = await asyncio.open_connection("127.0.0.1", address[1])
        return reader, writer

    monkeypatch.setattr(dial, "_attempt", fake)

    async def main() -> None:
        server, port = await _listener()
        async with server:
            t0 = asyncio.get_running_loop().time()
            _, writer = await happy_eyeballs([("hang", port), ("127.0.0.1", port)], limit=1 << 16, delay=0.1)
            elapsed = asyncio.get_running_loop().time() - t0
            writer.close()
        assert 0.09 <= elapsed < 2.0
        assert [name for name, _ in started] == ["hang", "127.0.0.1"]
        assert started[1][1] - started[0][1] >= 0.09
        assert cancelled == ["hang"]

    asyncio.run(main())
