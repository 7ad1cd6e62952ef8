"""QUIC for tunnels: identities and pins, the configuration builder, and our ``QuicConnection`` subclass.

Everything that touches aioquic fields it calls internal lives in this package (aioquic is pinned to 1.7.x).
"""

from tunnel_core.quic import speedups
from tunnel_core.quic.config import (
    CONGESTION_CONTROLLERS,
    DEFAULT_CONGESTION,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_PACKET_SIZE,
    DEFAULT_WINDOW,
    MAX_PACKET_SIZE,
    MIN_PACKET_SIZE,
    SERVER_NAME,
    check_congestion,
    clamp_packet_size,
    make_configuration,
)
from tunnel_core.quic.connection import (
    DEFAULT_KEEPALIVE_INTERVAL,
    FINGERPRINT_MISMATCH_ERROR,
    FINGERPRINT_MISMATCH_REASON,
    TunnelQuicConnection,
)
from tunnel_core.quic.events import PeerVerificationFailed
from tunnel_core.quic.identity import (
    DEFAULT_CERT_NAME,
    QuicIdentity,
    fingerprint,
    make_identity,
    normalize_fingerprint,
)

__all__ = [
    "CONGESTION_CONTROLLERS",
    "DEFAULT_CERT_NAME",
    "DEFAULT_CONGESTION",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_KEEPALIVE_INTERVAL",
    "DEFAULT_PACKET_SIZE",
    "DEFAULT_WINDOW",
    "FINGERPRINT_MISMATCH_ERROR",
    "FINGERPRINT_MISMATCH_REASON",
    "MAX_PACKET_SIZE",
    "MIN_PACKET_SIZE",
    "SERVER_NAME",
    "PeerVerificationFailed",
    "QuicIdentity",
    "TunnelQuicConnection",
    "check_congestion",
    "clamp_packet_size",
    "fingerprint",
    "make_configuration",
    "make_identity",
    "normalize_fingerprint",
]

# Before any connection exists; containers these modules took from aioquic are rebuilt too (see speedups.apply).
speedups.apply()
