"""ice-manual mode on trio: the entry points behind `tunnel server|client manual` (docs/embedding.md)."""

from __future__ import annotations

from tunnel_io.entry import manual_entry_points
from tunnel_trio.runner import Console, run_flow

run_manual_client, run_manual_server = manual_entry_points(run_flow)

__all__ = ["Console", "run_manual_client", "run_manual_server"]
