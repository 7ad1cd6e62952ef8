"""Testing kit shipped with the core: a virtual clock and an in-memory network (see docs/architecture.md)."""

from tunnel_core.testing.clock import VirtualClock

__all__ = ["VirtualClock"]
