"""Plain values describing a relay: the machine's policy and the adapter's run options.

They are validated by the CLI layer (tunnel_cli.relay_cmd) so every runtime and embedding program can build a
relay from the same description without argparse.
"""

from __future__ import annotations

import attrs

__all__ = ["DEV_BIND", "RelayOptions", "RelayPolicy"]

#: iroh-relay's ``--dev`` address: plain HTTP on localhost port 3340.
DEV_BIND = ("127.0.0.1", 3340)


@attrs.frozen
class RelayPolicy:
    """What the server machine enforces; defaults follow iroh-relay."""

    #: Accepted shared Bearer tokens; empty means no token is required.
    tokens: frozenset[str] = frozenset()
    #: Endpoint ids (32 raw bytes) allowed to connect; None means everyone who authenticates.
    allowed_endpoints: frozenset[bytes] | None = None
    #: Per-client read limit in bytes per second (token bucket); None means unlimited.
    rate_limit: int | None = None
    #: Bucket size in bytes; never below one maximal frame (1 MiB) or a legal frame could never pass.
    rate_burst: int | None = None
    #: Frames buffered per client before datagrams to it are dropped (iroh: 512).
    queue_depth: int = 512
    #: Server keep-alive ping period; jitter of 1..5 s is added (iroh: 15 s).
    ping_interval: float = 15.0
    #: A client that does not answer a ping within this many seconds is closed (iroh: 5 s).
    pong_timeout: float = 5.0
    #: A connection must complete the handshake within this many seconds.
    auth_timeout: float = 10.0
    #: Advice in the Restarting frame sent on shutdown.
    restart_reconnect_in_ms: int = 1000
    restart_try_for_ms: int = 5000


@attrs.frozen
class RelayOptions:
    """`tunnel relay`: where to listen, TLS, and the policy."""

    bind: tuple[str, int] = DEV_BIND
    tls_cert: str | None = None
    tls_key: str | None = None
    policy: RelayPolicy = RelayPolicy()
    #: Seconds to wait for clients to receive Restarting before the sockets are closed.
    shutdown_grace: float = 1.0
