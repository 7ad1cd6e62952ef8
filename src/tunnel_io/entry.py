"""The blocking entry points every runtime offers, built once from that runtime's ``run_flow``.

``run_manual_client/server(opts, console=None)`` and ``run_nostr_client/server(opts, console=None)`` build the flow
(tunnel_core.flows / flows_nostr, OS randomness) and run it to its end; user-facing failures come out as
TunnelError. The runtime modules (tunnel_<runtime>.manual / .nostr) only bind these to their runner.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from tunnel_core.flows import manual_client_flow, manual_server_flow
from tunnel_core.flows_nostr import nostr_client_flow, nostr_server_flow
from tunnel_io import Console

RunFlow = Callable[[Any, "Console | None"], None]
EntryPoint = Callable[..., None]


def _entry(run_flow: RunFlow, make_flow: Callable[[Any, Callable[[int], bytes]], Any], name: str) -> EntryPoint:
    def entry(opts: Any, console: Console | None = None) -> None:
        run_flow(make_flow(opts, os.urandom), console)

    entry.__name__ = entry.__qualname__ = name
    return entry


def manual_entry_points(run_flow: RunFlow) -> tuple[EntryPoint, EntryPoint]:
    """(run_manual_client, run_manual_server)."""
    return (_entry(run_flow, manual_client_flow, "run_manual_client"),
            _entry(run_flow, manual_server_flow, "run_manual_server"))


def nostr_entry_points(run_flow: RunFlow) -> tuple[EntryPoint, EntryPoint]:
    """(run_nostr_client, run_nostr_server)."""
    return (_entry(run_flow, nostr_client_flow, "run_nostr_client"),
            _entry(run_flow, nostr_server_flow, "run_nostr_server"))
