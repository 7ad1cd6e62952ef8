"""Wire constants of the NodeId-allowlist generation (E2) of iroh mode, in one place so both roles agree."""

from __future__ import annotations

import attrs

#: ALPN of E1/E2 multi-source iroh mode (reference 6.1); a peer with another ALPN fails the QUIC handshake.
ALPN_E2 = b"multi-forward/1"
#: SourceRequest/SourceResponse "version" of the pre-token codec (reference 3.2 step 3).
PROTOCOL_VERSION_E2 = 1
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
