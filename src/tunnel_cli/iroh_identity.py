"""Who is who in iroh mode: this endpoint's secret key, the E4 authorized keys and private key, and the E2
NodeId allowlist, each from CLI > environment > config. Messages name where a key came from, never its content.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from tunnel_cli import config as cfg
from tunnel_cli import iroh_env
from tunnel_cli.iroh_env import IrohEnv
from tunnel_cli.iroh_section import IrohSection, section_lines, section_list, section_str
from tunnel_cli.keyfiles import check_secret_file_mode
from tunnel_cli.parser import flag, given

AUTH_KEYS_REQUIRED = (
    f"Authentication requires --authorized-keys-file, {iroh_env.AUTHORIZED_KEYS_FILE}, [iroh].authorized_keys_file, "
    "or [iroh].authorized_keys."
)
PRIVATE_KEY_REQUIRED = (
    f"Authentication requires --private-key-file, {iroh_env.PRIVATE_KEY_FILE}, [iroh].private_key_file, "
    "or [iroh].private_key."
)


def read_key_text(path: str, missing: str) -> str:
    target = cfg.expand_path(path)
    try:
        return cfg.read_bounded_text(target)
    except FileNotFoundError:
        raise cfg.usage_error(missing) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise cfg.usage_error(f"Failed to read {target}: {getattr(exc, 'strerror', None) or exc}") from None


def load_secret_file(path: str) -> bytes:
    from tunnel_core.keys import KeyFormatError, parse_secret_key

    text = read_key_text(path, f"Secret key file not found: {path}\nGenerate one with: "
                            f"tunnel-rs generate-server-key --output {path}")
    check_secret_file_mode(path)
    if not text.strip():
        raise cfg.usage_error(f"Secret key file is empty: {path}")
    try:
        return parse_secret_key(text)
    except KeyFormatError as exc:
        raise cfg.usage_error(f"{exc} (in {path})") from None


def secret_key(ns: argparse.Namespace, section: IrohSection, env_secret: str | None = None) -> bytes | None:
    """CLI pair, else ``TUNNEL_RS_SECRET`` (server, e4), else the config pair; one pair is never mixed with another."""
    from tunnel_core.keys import KeyFormatError, parse_secret_key

    cli_inline, cli_file = flag(ns, "secret"), given(flag(ns, "secret_file"))
    if cli_inline is not None or cli_file is not None:
        inline, file = cli_inline, cli_file
    elif env_secret is not None:
        try:
            return parse_secret_key(env_secret)
        except KeyFormatError as exc:  # fixed wording: never the value itself
            raise cfg.usage_error(f"Invalid {iroh_env.SECRET}: {exc}") from None
    else:
        inline, file = section.values.get("secret"), section_str(section, "secret_file")
    if inline is not None and file is not None:
        raise cfg.usage_error("Cannot combine --secret with --secret-file (or secret and secret_file in config).")
    if inline is not None:
        if not isinstance(inline, str) or not inline.strip():
            raise cfg.usage_error("Inline secret is empty. Provide a base64-encoded secret key.")
        try:
            return parse_secret_key(inline)
        except KeyFormatError:
            raise cfg.usage_error("Invalid inline secret key (expected base64)") from None
    if file is not None:
        return load_secret_file(file)
    return None


def key_path(
    cli: Any, env_value: str | None, env_name: str, section: IrohSection, key: str
) -> tuple[str | None, str]:
    """CLI > environment > config for a key file path; the suffix names the variable so a "not found" error says
    where a path the user never typed came from."""
    cli_path = given(cli)
    if cli_path is not None:
        return cli_path, ""
    if env_value is not None:
        return env_value, f" (from {env_name})"
    return section_str(section, key), ""


def authorized_keys(ns: argparse.Namespace, section: IrohSection, env: IrohEnv) -> dict[bytes, str]:
    """--authorized-keys-file > TUNNEL_RS_AUTHORIZED_KEYS_FILE > [iroh].authorized_keys_file / authorized_keys,
    as public key -> comment (flexaccess-keys rules: the last line naming a key wins)."""
    from tunnel_core.iroh_session.authkeys import parse_authorized_entries
    from tunnel_core.keys import KeyFormatError

    path, where = key_path(
        flag(ns, "authorized_keys_file"), env.authorized_keys_file, iroh_env.AUTHORIZED_KEYS_FILE,
        section, "authorized_keys_file",
    )
    if path is not None:
        text, origin = read_key_text(path, f"Authorized keys file not found: {path}{where}"), path
    else:
        inline = section_lines(section, "authorized_keys")
        if inline is None:
            raise cfg.usage_error(AUTH_KEYS_REQUIRED)
        text, origin = inline, "[iroh].authorized_keys"
    try:
        entries = parse_authorized_entries(text, origin)
    except KeyFormatError as exc:
        raise cfg.usage_error(str(exc)) from None
    if not entries:
        raise cfg.usage_error(f"No Ed25519 public keys found in {origin}")
    return entries


def private_key(ns: argparse.Namespace, section: IrohSection, env: IrohEnv) -> bytes:
    """--private-key-file > TUNNEL_RS_PRIVATE_KEY_FILE > [iroh].private_key_file / private_key. Errors name where
    the key came from, never its content (authkeys' messages carry no key material)."""
    from tunnel_core.iroh_session.authkeys import parse_private_key
    from tunnel_core.keys import KeyFormatError

    path, where = key_path(
        flag(ns, "private_key_file"), env.private_key_file, iroh_env.PRIVATE_KEY_FILE, section, "private_key_file"
    )
    if path is not None:
        check_secret_file_mode(path)
        text = read_key_text(path, f"Private key file not found: {path}{where}\nGenerate one with: "
                                f"tunnel generate-auth-key --output {path}")
        origin = path
    else:
        inline = section.values.get("private_key")
        if inline is None:
            raise cfg.usage_error(PRIVATE_KEY_REQUIRED)
        if not isinstance(inline, str):
            raise cfg.usage_error(f"Failed to parse config file: {section.path}: [iroh] 'private_key' must be a string")
        text, origin = inline, "[iroh].private_key"
    try:
        return parse_private_key(text, origin)
    except KeyFormatError as exc:
        raise cfg.usage_error(str(exc)) from None


def allowed_clients(
    ns: argparse.Namespace, section: IrohSection, warn: Callable[[str], None] | None
) -> tuple[bytes, ...]:
    from tunnel_core.keys import KeyFormatError, parse_allowed_client, parse_allowed_clients

    cli_ids = [v for v in (flag(ns, "allowed_clients") or []) if not v.strip().startswith("#")]
    cli_file = given(flag(ns, "allowed_clients_file"))
    if cli_ids or cli_file is not None:
        values, file = cli_ids, cli_file
    else:
        values, file = list(section_list(section, "allowed_clients")), section_str(section, "allowed_clients_file")
    if not values and file is None:
        raise cfg.usage_error(
            "Authentication required: specify --allowed-clients or --allowed-clients-file.\n"
            "Clients need to provide their NodeId, which can be generated with:\n"
            "tunnel generate-iroh-key --output <key-file>\ntunnel show-iroh-node-id --secret-file <key-file>"
        )
    ids: list[bytes] = []
    try:
        for value in values:
            ids.append(parse_allowed_client(value))
        if file is not None:
            text = read_key_text(file, f"Allowed clients file not found: {file}")
            from_file = parse_allowed_clients(text, file)
            if not from_file and warn is not None:
                warn(f"Allowed clients file {file} lists no client: every client will be refused")
            ids.extend(from_file)
    except KeyFormatError as exc:
        raise cfg.usage_error(str(exc)) from None
    return tuple(dict.fromkeys(ids))


