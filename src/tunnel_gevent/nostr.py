"""ice-nostr mode on gevent: the entry points behind `tunnel server|client nostr`. The runner itself runs nostr flows
(``NostrRunner`` is its old name, kept as an alias); the relay connections are tunnel_io.relays."""

from __future__ import annotations

from tunnel_gevent.runner import Console, GeventRunner, NostrRunner, run_flow
from tunnel_io.entry import nostr_entry_points
from tunnel_io.relays import RelayConnections

run_nostr_client, run_nostr_server = nostr_entry_points(run_flow)
run_nostr_flow = run_flow

__all__ = [
           "Console",
           "GeventRunner",
           "NostrRunner",
           "RelayConnections",
           "run_nostr_client",
           "run_nostr_flow",
           "run_nostr_server",
]
