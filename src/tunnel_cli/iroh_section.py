"""The ``[iroh]`` table of a config file: which keys each role may use, and typed reads of its values."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from tunnel_cli import config as cfg

SERVER_KEYS = frozenset({
    "secret", "secret_file", "relay_urls", "dns_server", "allowed_sources", "max_sessions", "allowed_clients",
    "allowed_clients_file", "socks5_proxy", "bind_addr", "protocol", "authorized_keys_file", "authorized_keys",
})
CLIENT_KEYS = frozenset({
    "secret", "secret_file", "relay_urls", "dns_server", "server_node_id", "node_id", "request_source", "source",
    "target", "socks5_proxy", "server_addrs", "bind_addr", "protocol", "private_key_file", "private_key",
})


@attrs.frozen
class IrohSection:
    values: Mapping[str, Any] = attrs.Factory(dict)
    path: Path | None = None


def read_iroh_section(config: cfg.ConfigFile, role: str) -> IrohSection:
    if "source" in config.data and role == "server":
        raise cfg.usage_error("Top-level 'source' is not allowed for iroh server mode. "
                              "Use [iroh.allowed_sources] to restrict what clients can request.")
    table = config.data.get("iroh", {})
    if not isinstance(table, Mapping):
        raise config.parse_error("[iroh] must be a table")
    if role == "server":
        for key in ("source", "request_source", "target"):
            if key in table:
                raise cfg.usage_error("[iroh] 'source' / 'request_source' / 'target' are client-only fields. "
                                      "Servers use 'allowed_sources' to restrict what clients can request.")
        for key in ("server_node_id", "node_id", "server_addrs"):
            if key in table:
                raise cfg.usage_error(f"[iroh] '{key}' is a client-only field.")
    else:
        if "allowed_sources" in table:
            raise cfg.usage_error("[iroh] 'allowed_sources' is a server-only field. "
                                  "Clients use 'source' to specify what to request from server.")
        for key in ("max_sessions", "allowed_clients", "allowed_clients_file"):
            if key in table:
                raise cfg.usage_error(f"[iroh] '{key}' is a server-only field.")
    known = SERVER_KEYS if role == "server" else CLIENT_KEYS
    for key in table:
        if key not in known and key != "transport":
            raise config.parse_error(f"unknown field '{key}' in [iroh]")
    for inline, file in (("secret", "secret_file"), ("authorized_keys", "authorized_keys_file"),
                         ("private_key", "private_key_file")):
        if inline in table and file in table:
            raise cfg.usage_error(f"[iroh] Use only one of '{inline}' or '{file}'.")
    return IrohSection(values=dict(table), path=config.path)


def section_str(section: IrohSection, key: str) -> str | None:
    value = section.values.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise cfg.usage_error(f"Failed to parse config file: {section.path}: [iroh] '{key}' must be a string")
    return value.strip() or None


def section_list(
    section: IrohSection, key: str, table: Mapping[str, Any] | None = None, where: str = "iroh"
) -> tuple[str, ...]:
    source = section.values if table is None else table
    value = source.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise cfg.usage_error(
            f"Failed to parse config file: {section.path}: [{where}] '{key}' must be a list of strings"
        )
    return tuple(value)



def section_lines(section: IrohSection, key: str) -> str | None:
    """An inline key list: TOML/JSON list of lines (upstream's shape) or one multi-line string (a pasted file)."""
    value = section.values.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    raise cfg.usage_error(f"Failed to parse config file: {section.path}: [iroh] '{key}' must be a list of strings")


