"""ice-nostr on gevent: the runner runs nostr dialogues (old name: NostrRunner); relays: tunnel_io.nostr_relays."""

from tunnel_gevent.runner import Console, NostrRunner, run_nostr_client, run_nostr_dialogue, run_nostr_server  # noqa: F401
