"""Wire constants of iroh mode (E2 NodeId allowlist and E4 Ed25519 generations), in one place so both roles agree."""

from __future__ import annotations

import attrs

#: ALPN of E1/E2 multi-source iroh mode (reference 6.1); a peer with another ALPN fails the QUIC handshake.
ALPN_E2 = b"multi-forward/1"
#: SourceRequest/SourceResponse "version" of the pre-token codec (reference 3.2 step 3).
PROTOCOL_VERSION_E2 = 1
#: ALPN of the current upstream (E4); "not a secret, grants nothing": the Ed25519 auth stream does the gating.
ALPN_E4 = b"mf/4"
#: Message version of the E4 Ed25519 codec (auth stream and SourceRequest alike).
PROTOCOL_VERSION_E4 = 4
#: ``--protocol`` values: which upstream generation's wire protocol to speak.
PROTOCOLS = ("e2", "e4")
#: Upstream's default of --max-sessions: a global cap on concurrently forwarded streams.
DEFAULT_MAX_SESSIONS = 100

SESSION_LIMIT_REASON = "Session limit reached"
INVALID_PROTOCOL_REASON = "Invalid protocol (must be tcp:// or udp://)"


@attrs.frozen
class CloseCode:
    """A QUIC application close: the code and reason bytes the peer sees."""

    code: int
    reason: bytes


#: Sent when the TLS-authenticated client id is not on the server's allowlist.
CLOSE_UNAUTHORIZED = CloseCode(1, b"unauthorized")
#: An orderly end of a connection, by either side.
CLOSE_DONE = CloseCode(0, b"done")
