"""Numbers of the nostr signaling that the CLI needs without loading any crypto."""

from __future__ import annotations

#: The reference's signaling event kind (reference 5.3).
KIND = 24242
#: Relays do not store events of these kinds (NIP-01), which is what signaling wants.
EPHEMERAL_KINDS = (20000, 29999)
