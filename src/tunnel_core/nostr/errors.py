"""The one error family of the Nostr codecs, so callers can catch exactly "bad outside input" from a relay/peer."""

from __future__ import annotations

from tunnel_core.errors import RemoteProtocolError


class NostrError(RemoteProtocolError):
    """A key, event, encrypted payload, tunnel message or relay message is malformed, forged or not for us."""
