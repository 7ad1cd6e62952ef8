"""The iroh key tools: ``generate-iroh-key``, ``show-iroh-node-id`` and ``generate-auth-key`` (E4 client key)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import attrs

from tunnel_cli.iroh_identity import load_secret_file
from tunnel_cli.keyfiles import write_secret_file


@attrs.frozen
class GenerateKey:
    output: str
    force: bool = False


@attrs.frozen
class ShowNodeId:
    secret_file: str


@attrs.frozen
class GenerateAuthKey:
    """E4 client key: the private file is written 0600, the public line printed for the server's keys file."""

    output: str
    comment: str | None = None
    force: bool = False



def generate_key(command: GenerateKey, *, rng: Callable[[int], bytes] = os.urandom) -> None:
    from tunnel_core.keys import endpoint_id_from_secret, format_endpoint_id, format_secret_key

    secret = rng(32)
    text = format_secret_key(secret)
    endpoint_id = format_endpoint_id(endpoint_id_from_secret(secret))
    if command.output == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        print(f"EndpointId: {endpoint_id}", file=sys.stderr, flush=True)
        return
    write_secret_file(command.output, text, force=command.force)
    print(f"Secret key saved to: {command.output}", file=sys.stderr, flush=True)
    print(f"EndpointId: {endpoint_id}", flush=True)


def generate_auth_key(command: GenerateAuthKey, *, rng: Callable[[int], bytes] = os.urandom) -> None:
    from tunnel_core.iroh_session.auth import public_key_from_seed
    from tunnel_core.iroh_session.authkeys import format_private_key, format_public_key

    seed = rng(32)
    write_secret_file(command.output, format_private_key(seed, command.comment), force=command.force)
    print(f"Private key saved to: {command.output}", file=sys.stderr, flush=True)
    print(format_public_key(public_key_from_seed(seed), command.comment), flush=True)


def show_node_id(command: ShowNodeId) -> None:
    from tunnel_core.keys import endpoint_id_from_secret, format_endpoint_id

    secret = load_secret_file(command.secret_file)
    print(format_endpoint_id(endpoint_id_from_secret(secret)), flush=True)


