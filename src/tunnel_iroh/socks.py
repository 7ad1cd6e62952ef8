"""Reaching ``.onion`` relays through a SOCKS5 proxy (Tor), as upstream E2 did (reference 6.5). Experimental.

iroh cannot speak SOCKS5, so each ``.onion`` relay URL gets a local TCP bridge on 127.0.0.1: iroh is handed
``http://127.0.0.1:<bridge>`` and every connection to it is tunnelled through the proxy to the onion host
(hostname resolution stays inside Tor: we send the name, never resolve it). Other relay URLs pass unchanged;
iroh's own UDP traffic is never proxied, so this hides the relay's address, not the peers'.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from urllib.parse import urlsplit

from tunnel_core.iroh_session.socks import ProxyAddress, onion_target, parse_socks5_proxy, socks5_connect_request
from tunnel_core.options import ExitCode, TunnelError

log = logging.getLogger("tunnel_iroh")

HANDSHAKE_TIMEOUT = 30.0


async def _socks5_open(proxy: ProxyAddress, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    try:
        writer.write(b"\x05\x01\x00")  # version 5, one method: no authentication
        await writer.drain()
        if await reader.readexactly(2) != b"\x05\x00":
            raise ConnectionError("SOCKS5 proxy refused the no-authentication method")
        writer.write(socks5_connect_request(host, port))
        await writer.drain()
        head = await reader.readexactly(4)
        if head[0] != 5 or head[1] != 0:
            raise ConnectionError(f"SOCKS5 connect to {host}:{port} failed (reply code {head[1]})")
        skip = {1: 4, 4: 16}.get(head[3])
        if skip is None:
            skip = (await reader.readexactly(1))[0]
        await reader.readexactly(skip + 2)
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, asyncio.IncompleteReadError):
        writer.transport.abort()


class OnionBridges:
    """The local bridges of one endpoint; ``rewrite`` starts them, ``close`` stops them."""

    def __init__(self, proxy_url: str | None) -> None:
        self._proxy = parse_socks5_proxy(proxy_url) if proxy_url else None
        self._servers: list[asyncio.base_events.Server] = []

    async def rewrite(self, relay_urls: Sequence[str]) -> tuple[str, ...]:
        out = []
        for url in relay_urls:
            target = onion_target(url)
            if target is None:
                out.append(url)
                continue
            if self._proxy is None:
                raise TunnelError(
                    "SOCKS5 proxy required for .onion relay URLs. Use --socks5-proxy socks5h://127.0.0.1:9050",
                    ExitCode.USAGE,
                )
            port = await self._bridge(*target)
            scheme = urlsplit(url).scheme
            out.append(f"{scheme}://127.0.0.1:{port}")
            log.info("Relay %s reached through SOCKS5 bridge 127.0.0.1:%d (experimental)", url, port)
        return tuple(out)

    async def _bridge(self, host: str, port: int) -> int:
        proxy = self._proxy
        assert proxy is not None

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.wait_for(_socks5_open(proxy, host, port), HANDSHAKE_TIMEOUT)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                log.warning("SOCKS5 bridge to %s:%d failed: %s", host, port, exc)
                writer.close()
                return
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            for w in (writer, up_writer):
                w.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        for server in self._servers:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._servers.clear()
