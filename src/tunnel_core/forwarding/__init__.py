"""Forwarding: local TCP connections and UDP peers over the streams of one QUIC connection (sans-IO)."""

from tunnel_core.forwarding.events import (
    AbortTcp,
    CloseTcp,
    CloseUdp,
    DialTcp,
    DynamicReply,
    ForwardingEvent,
    OpenUdp,
    PauseReading,
    ResolveTarget,
    ResumeReading,
    SendTcp,
    SendUdp,
    SendUdpTo,
    ShutdownTcpWrite,
)
from tunnel_core.forwarding.session import (
    DEFAULT_HIGH_WATER,
    DEFAULT_LOW_WATER,
    DEFAULT_MAX_UDP_PEERS,
    DEFAULT_UDP_IDLE_TIMEOUT,
    ForwardingSession,
    Route,
)

__all__ = [
    "DEFAULT_HIGH_WATER",
    "DEFAULT_LOW_WATER",
    "DEFAULT_MAX_UDP_PEERS",
    "DEFAULT_UDP_IDLE_TIMEOUT",
    "AbortTcp",
    "CloseTcp",
    "CloseUdp",
    "DialTcp",
    "DynamicReply",
    "ForwardingEvent",
    "ForwardingSession",
    "OpenUdp",
    "PauseReading",
    "ResolveTarget",
    "ResumeReading",
    "Route",
    "SendTcp",
    "SendUdp",
    "SendUdpTo",
    "ShutdownTcpWrite",
]
