"""ice-manual mode on trio: the entry points behind `python -m tunnel_trio.cli server|client manual`.

The dialogue itself (offer, answer, checks, what is printed) is tunnel_core.flows; this module only picks the trio
interpreter and the OS randomness source. Programs already inside ``trio.run`` use ``TrioRunner`` directly
(docs/embedding.md).
"""

from __future__ import annotations

import os

from tunnel_core.flows import manual_client_flow, manual_server_flow
from tunnel_core.options import ManualClientOptions, ManualServerOptions
from tunnel_trio.runner import Console, run_flow


def run_manual_client(opts: ManualClientOptions, console: Console | None = None) -> None:
    run_flow(manual_client_flow(opts, os.urandom), console)


def run_manual_server(opts: ManualServerOptions, console: Console | None = None) -> None:
    run_flow(manual_server_flow(opts, os.urandom), console)
