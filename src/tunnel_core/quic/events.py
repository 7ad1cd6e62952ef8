"""Events our QUIC connection adds to aioquic's own."""

from __future__ import annotations

import attrs


@attrs.frozen
class PeerVerificationFailed:
    """The peer's certificate did not match the pinned fingerprint; the connection is already closing.

    It replaces ``HandshakeCompleted``: the owner never sees a completed handshake, nor any stream data, from a
    peer it does not trust.
    """

    reason: str
