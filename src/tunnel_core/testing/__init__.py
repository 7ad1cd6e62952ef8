"""Testing kit shipped with the core: a virtual clock and an in-memory network (see docs/architecture.md)."""

from tunnel_core.testing.clock import VirtualClock
from tunnel_core.testing.link import Link, LinkStats
from tunnel_core.testing.network import (
    Datagram,
    Host,
    Machine,
    Nat,
    NatType,
    Network,
    Recorder,
    StunResponder,
    SupportsRandom,
    attach,
)

__all__ = [
    "Datagram",
    "Host",
    "Link",
    "LinkStats",
    "Machine",
    "Nat",
    "NatType",
    "Network",
    "Recorder",
    "StunResponder",
    "SupportsRandom",
    "VirtualClock",
    "attach",
]
