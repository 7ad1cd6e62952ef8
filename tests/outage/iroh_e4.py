"""An iroh pair speaking protocol e4 in the NAT lab (tests/nat/modes.IrohMode speaks e2): durable streams need
e4 between our own peers (docs/durable.md)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from tests.nat.lab import SRV_IP, Lab
from tests.nat.modes import CLI, Proc, RunningPair, start_echo

from tunnel_core.iroh_session.auth import public_key_from_seed
from tunnel_core.iroh_session.authkeys import format_private_key, format_public_key
from tunnel_core.keys import endpoint_id_from_secret, format_endpoint_id, format_secret_key


def start_iroh_e4(lab: Lab, listen_port: int, echo_port: int, client_extra: Sequence[str],
                  server_extra: Sequence[str] = ()) -> RunningPair:
    """An iroh pair speaking e4 (upstream's current protocol, Ed25519 keys): durable streams between our peers.
    Otherwise as tests/nat/modes.IrohMode (our relay on the public side, no discovery)."""
    relay_url = f"http://{SRV_IP}:{listen_port + 1000}"
    secret = os.urandom(32)
    server_key = lab.workdir / f"iroh-e4-{listen_port}.key"
    server_key.write_text(format_secret_key(secret))
    seed = os.urandom(32)
    client_key = lab.workdir / f"iroh-e4-{listen_port}.auth"
    client_key.write_text(format_private_key(seed, "lab client"))
    authorized = lab.workdir / f"iroh-e4-{listen_port}.authorized"
    authorized.write_text(format_public_key(public_key_from_seed(seed), "lab client") + "\n")
    for path in (server_key, client_key):
        path.chmod(0o600)
    network = ["--relay-url", relay_url, "--dns-server", "none"]
    echo = start_echo(lab, echo_port)
    relay = Proc("iroh-relay", lab.in_ns("srv", [*CLI, "relay", "--bind", f"{SRV_IP}:{listen_port + 1000}"]))
    server = Proc("server", lab.in_ns("pB", [*CLI, "server", "iroh", "--protocol", "e4", "--secret-file",
                                             str(server_key), "--authorized-keys-file", str(authorized),
                                             "--allowed-tcp", "127.0.0.0/8", *network, *server_extra]))
    pair = RunningPair(lab=lab, client=server, server=server, echo=echo, listen_port=listen_port, helpers=[relay],
                       listening=r"Listening on TCP ")
    assert relay.wait_line(r"(?i)relay listening on", 20), relay.stderr
    assert server.wait_line(r"Listening on", 30), server.stderr
    server_id = format_endpoint_id(endpoint_id_from_secret(secret))
    pair.client = Proc("client", lab.in_ns("pA", [
        *CLI, "client", "iroh", "--protocol", "e4", "--private-key-file", str(client_key), "-n", server_id,
        "-s", f"tcp://127.0.0.1:{echo_port}", "-t", f"127.0.0.1:{listen_port}", *network, *client_extra]))
    pair.answered_at = pair.client.started_at
    return pair
