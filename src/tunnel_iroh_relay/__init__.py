"""`tunnel relay` on asyncio: an iroh-compatible relay server (HTTP/1.1, WebSocket, optional TLS)."""

from tunnel_iroh_relay.run import run_relay
from tunnel_iroh_relay.server import RelayService

__all__ = ["RelayService", "run_relay"]
