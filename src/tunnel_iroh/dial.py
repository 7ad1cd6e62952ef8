"""The iroh server's TCP dial of a checked source: tunnel_io's happy eyeballs (the one every mode uses), awaited
on asyncio and handed over as asyncio streams.

Dialing the policy's addresses one after another would make a black-holed first address (an IPv6 route that
drops packets) cost the full connect timeout before the next is tried; starting a new attempt every 250 ms (or at
once when the previous one failed) while earlier ones continue bounds that cost and keeps the first address's head
start (tunnel_io.dial has the exact rules).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from tunnel_asyncio.reactor import AsyncioReactor
from tunnel_core.types import Address
from tunnel_io.dial import CONNECT_TIMEOUT, HAPPY_EYEBALLS_DELAY, HappyEyeballs

DIAL_TIMEOUT = CONNECT_TIMEOUT

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class DialFailed(Exception):
    """No address answered; ``errors`` has one ``host:port: reason`` entry per attempt, for the log."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors) or "no address to dial")
        self.errors = errors


async def happy_eyeballs(
    addresses: Sequence[Address], *, limit: int, delay: float = HAPPY_EYEBALLS_DELAY,
    timeout: float = DIAL_TIMEOUT,
) -> Connection:
    """Connect to the first of ``addresses`` that answers; attempts start ``delay`` apart, in the given order."""
    loop = asyncio.get_running_loop()
    won: asyncio.Future[Any] = loop.create_future()
    errors: list[str] = []

    def done(sock: Any) -> None:
        if not won.done():
            won.set_result(sock)
        elif sock is not None:
            sock.close()  # the caller gave up meanwhile: a late winner must not leak

    dial = HappyEyeballs(AsyncioReactor(loop), addresses, done, delay=delay, timeout=timeout,
                         on_error=lambda addr, reason: errors.append(f"{addr[0]}:{addr[1]}: {reason}"))
    try:
        sock = await won
    except asyncio.CancelledError:
        dial.cancel()
        raise
    if sock is None:
        raise DialFailed(errors)
    return await asyncio.open_connection(sock=sock, limit=limit)
