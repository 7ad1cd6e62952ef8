"""The iroh server's happy-eyeballs TCP dial: staggered starts, first success wins, losers closed, all
errors reported. Real sockets on 127.0.0.1 only; slow addresses are simulated by patching one attempt."""

from __future__ import annotations

import asyncio
import socket

import pytest

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


def _hanging_port() -> tuple[socket.socket, list[socket.socket], int]:
    """A loopback port whose accept queue is full: a connect there hangs (the kernel drops the SYN) until its timeout,
    like a black-holed route, without leaving 127.0.0.1."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    return listener, fillers, port


def test_a_hanging_first_address_costs_one_stagger_not_the_timeout() -> None:
    async def main() -> None:
        server, port = await _listener()
        listener, fillers, hanging = _hanging_port()
        try:
            async with server:
                await asyncio.sleep(0.1)  # the fillers' handshakes complete and fill the queue
                t0 = asyncio.get_running_loop().time()
                _, writer = await happy_eyeballs([("127.0.0.1", hanging), ("127.0.0.1", port)], limit=1 << 16,
                                                 delay=0.1)
                elapsed = asyncio.get_running_loop().time() - t0
                assert writer.get_extra_info("peername")[1] == port
                writer.close()
        finally:
            for sock in (listener, *fillers):
                sock.close()
        assert 0.09 <= elapsed < 2.0  # one stagger, not the 10 s connect timeout

    asyncio.run(main())


def test_an_attempt_that_hangs_past_its_timeout_is_reported() -> None:
    async def main() -> None:
        listener, fillers, hanging = _hanging_port()
        try:
            await asyncio.sleep(0.1)
            with pytest.raises(DialFailed) as info:
                await happy_eyeballs([("127.0.0.1", hanging)], limit=1 << 16, timeout=0.3)
            assert info.value.errors == [f"127.0.0.1:{hanging}: timed out"]
        finally:
            for sock in (listener, *fillers):
                sock.close()

    asyncio.run(main())
