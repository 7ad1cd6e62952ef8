"""Run options of iroh mode: plain validated values built by the CLI (or an embedding program) and handed to
the adapter, so nothing downstream re-parses flags or config files."""

from __future__ import annotations

import attrs

from tunnel_core.iroh_session.constants import DEFAULT_MAX_SESSIONS
from tunnel_core.options import DEFAULT_RECONNECT_TIMEOUT, Forward, SocksListen


@attrs.frozen
class IrohNetwork:
    """How an endpoint reaches the world: relays, discovery, local binding."""

    #: Relay URLs (``http://``/``https://``); empty with ``relays_disabled`` False means iroh's public relays.
    relay_urls: tuple[str, ...] = ()
    #: No relays at all: direct addresses only (LAN or offline use, and every test on this machine).
    relays_disabled: bool = False
    #: True: n0's pkarr/DNS address lookup (iroh's default); False: no internet discovery (``--dns-server none``).
    discovery: bool = True
    #: Local UDP bind address of the endpoint, e.g. ``127.0.0.1:0``; None lets iroh choose.
    bind_addr: str | None = None
    #: ``socks5h://host:port`` used only to reach ``.onion`` relay URLs (experimental).
    socks5_proxy: str | None = None
    #: Bearer token sent to every custom relay (``Authorization: Bearer``), upstream's ``--relay-auth-token``.
    relay_auth_token: str | None = attrs.field(default=None, repr=False)
    #: Upstream's ``--relay-only``: dial the server through the relays only, never through direct addresses.
    relay_only: bool = False


@attrs.frozen
class IrohServerOptions:
    """``tunnel server iroh``: serve allowlisted clients, each stream choosing its source."""

    secret_key: bytes
    allowed_clients: tuple[bytes, ...]
    allowed_tcp: tuple[str, ...] = ()
    allowed_udp: tuple[str, ...] = ()
    max_sessions: int = DEFAULT_MAX_SESSIONS
    network: IrohNetwork = IrohNetwork()
    #: "e2" (NodeId allowlist, ALPN multi-forward/1) or "e4" (Ed25519 challenge-response, ALPN mf/4).
    protocol: str = "e2"
    #: E4 only: the Ed25519 public keys whose holders may connect (``allowed_clients`` is unused then).
    authorized_keys: tuple[bytes, ...] = ()
    #: E4 only: (public key, comment) of the authorized-keys entries, for the "authenticated ... as <comment>" log.
    authorized_key_comments: tuple[tuple[bytes, str], ...] = ()
    #: Reverse forwards (docs/forwards.md): the exact ip:port addresses a client may ask this server to listen on.
    allow_listen: tuple[str, ...] = ()
    #: "stream": never take a client's offer of QUIC datagrams (UDP stays u16-framed on its stream, as upstream).
    udp_over: str = "datagrams"


@attrs.frozen
class IrohClientOptions:
    """``tunnel client iroh``: expose the server's ``source`` at the local ``target``."""

    server_id: bytes
    #: The first forward; both None for a client with only other forwards (``[[forward]]``, SOCKS5, reverse).
    source: str | None
    target: str | None
    #: More TCP and UDP forwards over the same connection (``--forward``; docs/forwards.md): each stream's
    #: SourceRequest names its own source, so upstream's server serves them as it is.
    extra_forwards: tuple[Forward, ...] = ()
    #: A dynamic (SOCKS5) forward: each CONNECT is a stream asking for its target; reverse forwards (ours).
    socks5: SocksListen | None = None
    reverse: tuple[Forward, ...] = ()
    #: Persistent identity (what the server allowlists); None means a fresh identity for this run.
    secret_key: bytes | None = None
    #: ``ip:port`` addresses of the server to dial directly (no discovery needed).
    server_addrs: tuple[str, ...] = ()
    network: IrohNetwork = IrohNetwork()
    #: "e2" or "e4", as on the server.
    protocol: str = "e2"
    #: E4 only: the 32-byte Ed25519 seed used to answer the server's challenge.
    auth_seed: bytes | None = None
    #: How long a lost connection is dialled again before giving up (exit 11); 0 exits at once (docs/reconnect.md).
    reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT
    #: "stream": make no datagram offer (upstream's SourceRequest bytes, one stream, replies to the last sender).
    udp_over: str = "datagrams"
