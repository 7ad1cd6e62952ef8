"""Run options of the ice-nostr mode (already validated by the CLI), shared by every runtime."""

from __future__ import annotations

import attrs

from tunnel_core.nostr.constants import KIND
from tunnel_core.options import DEFAULT_RECONNECT_TIMEOUT, Forward, IceOptions, SocksListen

#: Upstream E3's default relays (reference 5.7). Tests always pass their own local relay.
DEFAULT_RELAYS: tuple[str, ...] = (
    "wss://nos.lol",
    "wss://relay.nostr.net",
    "wss://relay.primal.net",
    "wss://relay.snort.social",
)
DEFAULT_MAX_SESSIONS = 10
DEFAULT_SERVER_REPUBLISH = 10.0
DEFAULT_CLIENT_REPUBLISH = 5.0
DEFAULT_MAX_WAIT = 120.0


@attrs.frozen
class NostrServerOptions:
    """`tunnel server nostr`: serve sessions requested by the one client key ``peer_npub`` through ``relays``."""

    nsec: str
    peer_npub: str
    allowed_tcp: tuple[str, ...] = ()
    allowed_udp: tuple[str, ...] = ()
    relays: tuple[str, ...] = DEFAULT_RELAYS
    ice: IceOptions = attrs.field(factory=IceOptions)
    #: 0 means unlimited.
    max_sessions: int = DEFAULT_MAX_SESSIONS
    republish_interval: float = DEFAULT_SERVER_REPUBLISH
    max_wait: float = DEFAULT_MAX_WAIT
    #: Speak upstream's plaintext content (no NIP-44, no client pinning) for tunnel-rs peers.
    plaintext: bool = False
    #: Upstream's kind 24242 by default. Some relays refuse it (it is also Blossom's authorization kind, and
    #: nostr-sdk's relay blacklists it), so another ephemeral kind can be agreed on both sides.
    event_kind: int = KIND
    #: Reverse forwards (docs/forwards.md): the exact ip:port addresses a client may ask this server to listen on.
    allow_listen: tuple[str, ...] = ()


@attrs.frozen
class NostrClientOptions:
    """`tunnel client nostr`: ask the server ``peer_npub`` for ``source`` and expose it locally at ``target``."""

    nsec: str
    peer_npub: str
    #: The first forward; both None for a client with only a SOCKS5 listener and/or reverse forwards.
    source: str | None
    target: str | None
    #: More forwards over the same connection (docs/forwards.md); each names its protocol in its source URL.
    extra_forwards: tuple[Forward, ...] = ()
    #: A dynamic (SOCKS5) forward, last among the local forwards; reverse forwards (docs/forwards.md).
    socks5: SocksListen | None = None
    reverse: tuple[Forward, ...] = ()
    relays: tuple[str, ...] = DEFAULT_RELAYS
    ice: IceOptions = attrs.field(factory=IceOptions)
    republish_interval: float = DEFAULT_CLIENT_REPUBLISH
    max_wait: float = DEFAULT_MAX_WAIT
    plaintext: bool = False
    #: How long a lost tunnel is re-established before giving up (exit 11); 0 exits at once (docs/reconnect.md).
    reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT
    #: Upstream's kind 24242 by default. Some relays refuse it (it is also Blossom's authorization kind, and
    #: nostr-sdk's relay blacklists it), so another ephemeral kind can be agreed on both sides.
    event_kind: int = KIND
