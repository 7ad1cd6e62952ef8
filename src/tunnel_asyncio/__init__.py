"""tunnel_asyncio: the asyncio runtime adapter for tunnel_core (wait readable, drain, feed, flush once, one timer)."""
