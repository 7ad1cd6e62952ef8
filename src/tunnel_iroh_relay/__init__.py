"""`tunnel relay` on asyncio: an iroh-compatible relay server (HTTP/1.1, WebSocket, optional TLS)."""

from tunnel_asyncio.relay.run import run_relay
from tunnel_asyncio.relay.server import RelayService

__all__ = ["RelayService", "run_relay"]
