"""ice-manual mode on gevent: the entry points behind `tunnel server|client manual` (docs/embedding.md)."""

from __future__ import annotations

from tunnel_gevent.runner import Console, run_flow
from tunnel_io.entry import manual_entry_points

run_manual_client, run_manual_server = manual_entry_points(run_flow)

__all__ = ["Console", "run_manual_client", "run_manual_server"]
