"""The iroh key tools: upstream v0.6's ``generate-server-key`` / ``show-server-id``, flexaccess-keys' commands
``generate-auth-key`` / ``show-auth-key`` (E4 client keys), and the E2-era
``generate-iroh-key`` / ``show-iroh-node-id``.

Output shapes (stdout vs stderr, JSON keys, the ``#`` header lines) are upstream's, because scripts such as
upstream's own test-scripts/run_e2e.sh parse them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

import attrs

from tunnel_cli import config as cfg
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
class GenerateServerKey:
    """``generate-server-key``: output None or ``-`` means stdout."""

    output: str | None = None
    force: bool = False
    json: bool = False


@attrs.frozen
class ShowServerId:
    secret_file: str
    json: bool = False


@attrs.frozen
class GenerateAuthKey:
    """E4 client key in the flexaccess-keys format; output None or ``-`` means stdout."""

    output: str | None = None
    comment: str | None = None
    force: bool = False
    json: bool = False


@attrs.frozen
class ShowAuthKey:
    private_key_file: str
    comment: str | None = None
    json: bool = False


KeyTool = GenerateKey | ShowNodeId | GenerateServerKey | ShowServerId | GenerateAuthKey | ShowAuthKey

#: First header line of a server key file (upstream's wording: ``head`` on a key file says what it is).
SERVER_KEY_HEADER = "# tunnel-rs server secret key (iroh endpoint identity)"


def _to_stdout(output: str | None) -> bool:
    return output is None or output == "-"


def _compact_json(value: dict[str, str]) -> str:
    """serde_json's compact form, which upstream prints and scripts compare byte for byte."""
    return json.dumps(value, separators=(",", ":"))


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


def server_key_file(secret: bytes, *, created: float) -> str:
    """The commented key file of ``generate-server-key``: three ``#`` headers, then the base64 key line."""
    from tunnel_core.iroh_session.authkeys import rfc3339_utc
    from tunnel_core.keys import endpoint_id_from_secret, format_endpoint_id, format_secret_key

    endpoint_id = format_endpoint_id(endpoint_id_from_secret(secret))
    return (f"{SERVER_KEY_HEADER}\n# Created: {rfc3339_utc(created)}\n# EndpointId: {endpoint_id}\n"
            f"{format_secret_key(secret)}\n")


def generate_server_key(command: GenerateServerKey, *, rng: Callable[[int], bytes] = os.urandom,
                        now: Callable[[], float] = time.time) -> None:
    from tunnel_core.keys import endpoint_id_from_secret, format_endpoint_id, format_secret_key

    secret = rng(32)
    endpoint_id = format_endpoint_id(endpoint_id_from_secret(secret))
    if command.json:
        print(_compact_json({"public_key": endpoint_id, "private_key": format_secret_key(secret)}), flush=True)
        return
    text = server_key_file(secret, created=now())
    if _to_stdout(command.output):
        sys.stdout.write(text)
        sys.stdout.flush()
        print(f"EndpointId: {endpoint_id}", file=sys.stderr, flush=True)
        return
    assert command.output is not None
    write_secret_file(command.output, text, force=command.force)
    print(f"Secret key saved to: {command.output}", file=sys.stderr, flush=True)
    print(f"EndpointId: {endpoint_id}", flush=True)


def show_server_id(command: ShowServerId) -> None:
    from tunnel_core.keys import endpoint_id_from_secret, format_endpoint_id

    endpoint_id = format_endpoint_id(endpoint_id_from_secret(load_secret_file(command.secret_file)))
    print(_compact_json({"public_key": endpoint_id}) if command.json else endpoint_id, flush=True)


def generate_auth_key(command: GenerateAuthKey, *, rng: Callable[[int], bytes] = os.urandom,
                      now: Callable[[], float] = time.time) -> None:
    from tunnel_core.iroh_session.auth import public_key_from_seed
    from tunnel_core.iroh_session.authkeys import SECRET_PREFIX, format_private_key, format_public_key

    seed = rng(32)
    entry = format_public_key(public_key_from_seed(seed), command.comment)
    text = format_private_key(seed, command.comment, created=now())
    if command.json:
        private_token = text.rstrip("\n").rsplit("\n", 1)[-1]
        assert private_token.startswith(SECRET_PREFIX)
        print(_compact_json({"authorized_key": entry, "private_key": private_token}), flush=True)
        return
    if _to_stdout(command.output):
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    assert command.output is not None
    write_secret_file(command.output, text, force=command.force)
    print(f"Private key saved to: {command.output}", file=sys.stderr, flush=True)
    print(entry, flush=True)


def show_auth_key(command: ShowAuthKey) -> None:
    from tunnel_cli.iroh_identity import read_key_text
    from tunnel_cli.keyfiles import check_secret_file_mode
    from tunnel_core.iroh_session.authkeys import authorized_entry_from_private_file
    from tunnel_core.keys import KeyFormatError

    path = command.private_key_file
    text = read_key_text(path, f"Private key file not found: {path}")
    check_secret_file_mode(path)
    try:
        entry = authorized_entry_from_private_file(text, path, command.comment)
    except KeyFormatError as exc:
        raise cfg.usage_error(str(exc)) from None
    print(_compact_json({"authorized_key": entry}) if command.json else entry, flush=True)


def show_node_id(command: ShowNodeId) -> None:
    from tunnel_core.keys import endpoint_id_from_secret, format_endpoint_id

    secret = load_secret_file(command.secret_file)
    print(format_endpoint_id(endpoint_id_from_secret(secret)), flush=True)


def run_key_tool(command: KeyTool) -> None:
    """Dispatch one key tool (they run on any runtime: no event loop involved)."""
    if isinstance(command, GenerateKey):
        generate_key(command)
    elif isinstance(command, ShowNodeId):
        show_node_id(command)
    elif isinstance(command, GenerateServerKey):
        generate_server_key(command)
    elif isinstance(command, ShowServerId):
        show_server_id(command)
    elif isinstance(command, GenerateAuthKey):
        generate_auth_key(command)
    else:
        show_auth_key(command)
