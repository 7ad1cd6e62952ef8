"""The sans-IO side of iroh mode (reference 3.2: E2 NodeId allowlist, E4 Ed25519 auth in .auth).

iroh itself (QUIC, TLS, hole punching, relays) is a binary library driven by the adapter; what is ours is the
dialogue on each bidirectional stream, the connection gate, the session limit and the path messages. Those live
here as explicit state machines so they are tested without sockets and shared by every adapter.
"""

from __future__ import annotations

from tunnel_core.iroh_session.client import ClientStream, ClientStreamState, SourceAccepted, SourceRejected
from tunnel_core.iroh_session.constants import (
    ALPN_E2,
    ALPN_E4,
    CLOSE_DONE,
    CLOSE_UNAUTHORIZED,
    DEFAULT_MAX_SESSIONS,
    INVALID_PROTOCOL_REASON,
    PROTOCOL_VERSION_E2,
    PROTOCOL_VERSION_E4,
    PROTOCOLS,
    SESSION_LIMIT_REASON,
    CloseCode,
)
from tunnel_core.iroh_session.gate import ClientAllowlist, SessionLimiter
from tunnel_core.iroh_session.options import IrohClientOptions, IrohNetwork, IrohServerOptions
from tunnel_core.iroh_session.paths import PathReporter, PathView, describe_path
from tunnel_core.iroh_session.server import (
    DurableControl,
    ResolveHost,
    SendBytes,
    ServerStream,
    ServerStreamState,
    StartForwarding,
    StartListening,
    StreamFailed,
    StreamRejected,
)

__all__ = [
    "ALPN_E2",
    "ALPN_E4",
    "CLOSE_DONE",
    "CLOSE_UNAUTHORIZED",
    "DEFAULT_MAX_SESSIONS",
    "INVALID_PROTOCOL_REASON",
    "PROTOCOLS",
    "PROTOCOL_VERSION_E2",
    "PROTOCOL_VERSION_E4",
    "SESSION_LIMIT_REASON",
    "ClientAllowlist",
    "ClientStream",
    "ClientStreamState",
    "CloseCode",
    "DurableControl",
    "IrohClientOptions",
    "IrohNetwork",
    "IrohServerOptions",
    "PathReporter",
    "PathView",
    "ResolveHost",
    "SendBytes",
    "ServerStream",
    "ServerStreamState",
    "SessionLimiter",
    "SourceAccepted",
    "SourceRejected",
    "StartForwarding",
    "StartListening",
    "StreamFailed",
    "StreamRejected",
    "describe_path",
]
