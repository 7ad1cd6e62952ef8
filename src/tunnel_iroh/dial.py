"""The server's TCP dial of a checked source: staggered happy eyeballs (reference 3.1, RFC 8305 style).

Dialing the policy's addresses one after another would make a black-holed first address (an IPv6 route that
drops packets) cost the full connect timeout before the next is tried; starting a new attempt every 250 ms
while earlier ones continue bounds that cost and keeps the first address's head start.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from tunnel_core.types import Address

HAPPY_EYEBALLS_DELAY = 0.25
DIAL_TIMEOUT = 10.0

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class DialFailed(Exception):
    """No address answered; ``errors`` has one ``host:port: reason`` entry per attempt, for the log."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors) or "no address to dial")
        self.errors = errors


async def _attempt(address: Address, limit: int, timeout: float) -> Connection:
    host, port = address
    return await asyncio.wait_for(asyncio.open_connection(host, port, limit=limit), timeout)


def _close(task: asyncio.Task[Connection]) -> None:
    """A second attempt that also succeeded must not leak its socket."""
    if task.done() and not task.cancelled() and task.exception() is None:
        task.result()[1].transport.abort()


async def happy_eyeballs(
    addresses: Sequence[Address], *, limit: int, delay: float = HAPPY_EYEBALLS_DELAY,
    timeout: float = DIAL_TIMEOUT,
) -> Connection:
    """Connect to the first of ``addresses`` that answers; attempts start ``delay`` apart, in the given order."""
    errors: list[str] = []
    pending: dict[asyncio.Task[Connection], Address] = {}
    winner: Connection | None = None
    queue = list(addresses)
    try:
        while winner is None and (queue or pending):
            if queue:
                address = queue.pop(0)
                pending[asyncio.ensure_future(_attempt(address, limit, timeout))] = address
            wait = delay if queue else None
            done, _ = await asyncio.wait(pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                address = pending.pop(task)
                exc = task.exception()
                if exc is None and winner is None:
                    winner = task.result()
                elif exc is None:
                    _close(task)
                else:
                    errors.append(f"{address[0]}:{address[1]}: {exc or 'timed out'}")
    finally:
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await task
            _close(task)
    if winner is None:
        raise DialFailed(errors)
    return winner
