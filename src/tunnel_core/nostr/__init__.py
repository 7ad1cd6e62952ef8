"""Nostr signaling for the ice-nostr mode, sans-IO: keys (NIP-19), events (NIP-01, BIP-340), NIP-44 v2, the
tunnel's kind-24242 messages, the relay protocol and a relay-pool machine.

Everything here is bytes/text in, values or text out: adapters own the WebSocket connections and the clocks, and
pass randomness in as ``rng(n) -> bytes``.
"""

from tunnel_core.nostr.errors import NostrError

__all__ = ["NostrError"]
