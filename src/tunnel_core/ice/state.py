"""The agent's life-cycle states (module docstring of ``tunnel_core.ice.agent``)."""

from __future__ import annotations

import enum

__all__ = ["IceState"]


class IceState(enum.Enum):
    NEW = "new"
    GATHERING = "gathering"
    CHECKING = "checking"
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSED = "closed"
