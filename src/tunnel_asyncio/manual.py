"""ice-manual mode on asyncio: the entry points behind `tunnel server manual` / `tunnel client manual`.

The dialogue itself (offer, answer, checks, what is printed) is tunnel_core.flows; this module only picks the
asyncio interpreter and the OS randomness source.
"""

from __future__ import annotations

import os

from tunnel_asyncio.runner import Console, run_flow
from tunnel_core.flows import manual_client_flow, manual_server_flow
from tunnel_core.options import ManualClientOptions, ManualServerOptions


def run_manual_client(opts: ManualClientOptions, console: Console | None = None) -> None:
    run_flow(manual_client_flow(opts, os.urandom), console)


def run_manual_server(opts: ManualServerOptions, console: Console | None = None) -> None:
    run_flow(manual_server_flow(opts, os.urandom), console)
