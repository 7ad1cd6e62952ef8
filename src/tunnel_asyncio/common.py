"""asyncio name resolution shared by the runners (the loop keeps running while a name resolves)."""

from __future__ import annotations

import asyncio
import socket

from tunnel_io import unique_addresses


async def resolve_all(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return unique_addresses(infos)
