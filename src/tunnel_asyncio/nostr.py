"""ice-nostr on asyncio: the runner runs nostr flows itself (NostrRunner is its old name); relays: tunnel_io.relays."""

from tunnel_asyncio.runner import Console, NostrRunner, run_nostr_client, run_nostr_flow, run_nostr_server  # noqa: F401
