"""What the relay server machine asks of its adapter, and what it reports for logs and tests."""

from __future__ import annotations

import enum

import attrs

__all__ = [
    "ClientAuthenticated",
    "ClientDenied",
    "ClientLeft",
    "CloseCode",
    "CloseConnection",
    "Event",
    "OutputReady",
]


class CloseCode(enum.IntEnum):
    """WebSocket close codes (RFC 6455 7.4.1) the relay uses, so clients and logs can tell why."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down or restarting
    PROTOCOL_ERROR = 1002  # garbage, oversize or out-of-place frames
    POLICY_VIOLATION = 1008  # authentication or authorisation refused


@attrs.frozen
class OutputReady:
    """The connection's queue went from empty to non-empty: wake its writer (once per transition, not per frame)."""

    conn_id: int


@attrs.frozen
class CloseConnection:
    """Flush what ``take_outgoing`` still returns, then close the WebSocket with ``code`` and drop the transport.

    Only this connection is affected; the machine has already unregistered it.
    """

    conn_id: int
    code: CloseCode
    reason: str


@attrs.frozen
class ClientAuthenticated:
    conn_id: int
    endpoint_id: bytes
    version: int


@attrs.frozen
class ClientDenied:
    conn_id: int
    endpoint_id: bytes | None
    reason: str


@attrs.frozen
class ClientLeft:
    conn_id: int
    endpoint_id: bytes
    reason: str


Event = OutputReady | CloseConnection | ClientAuthenticated | ClientDenied | ClientLeft
