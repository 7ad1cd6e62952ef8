"""The ``[iroh]`` table of a config file: which keys each role may use, and typed reads of its values."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from tunnel_cli import config as cfg
from tunnel_cli.forwards import EXTRA_KEYS, check_extra_keys

SERVER_KEYS = frozenset({
    "secret", "secret_file", "relay_urls", "dns_server", "allowed_sources", "max_sessions", "allowed_clients",
    "allowed_clients_file", "socks5_proxy", "bind_addr", "protocol", "authorized_keys_file", "authorized_keys",
    "relay_auth_token", "transport", "udp_over",
})
CLIENT_KEYS = frozenset({
    "secret", "secret_file", "relay_urls", "dns_server", "server_node_id", "node_id", "request_source", "source",
    "target", "socks5_proxy", "server_addrs", "bind_addr", "protocol", "private_key_file", "private_key",
    "relay_auth_token", "transport", "reconnect_timeout", "udp_over",
})
#: Top-level keys of an iroh config: upstream v0.6 refuses any other (serde ``deny_unknown_fields``); ``mode`` is
#: the E2/E3 routing key, still read by us.
#: Ours, added deliberately (docs/forwards.md): ``[[forward]]``, ``socks5``/``socks5_user``/``socks5_password_file``,
#: ``[[reverse]]`` (clients) and ``allow_listen`` (servers), at the top level as in the ICE modes' files.
TOP_LEVEL_KEYS = frozenset({"role", "mode", "source", "iroh"}) | EXTRA_KEYS
ALLOWED_SOURCES_KEYS = frozenset({"tcp", "udp"})
#: ``[iroh.transport]`` keys and the ranges upstream accepts (quinn tuning; the Python binding cannot apply them).
TRANSPORT_RANGES: Mapping[str, tuple[int, int]] = {
    "receive_window": (1024, 64 * 1024 * 1024),
    "send_window": (1024, 64 * 1024 * 1024),
    "ack_eliciting_threshold": (0, 65535),
}
CONGESTION_CONTROLLERS = ("cubic", "bbr", "newreno", "new_reno")


@attrs.frozen
class IrohSection:
    values: Mapping[str, Any] = attrs.Factory(dict)
    path: Path | None = None
    #: True for a ``--config-stdin`` JSON config, the only place upstream allows inline keys and secrets.
    from_stdin: bool = False


def read_iroh_section(config: cfg.ConfigFile, role: str, *, from_stdin: bool = False) -> IrohSection:
    for key in config.data:
        if key not in TOP_LEVEL_KEYS:
            raise config.parse_error(f"unknown field '{key}'")
    check_extra_keys(config, role)
    if "forward" in config.data and role == "server":
        raise cfg.usage_error("[[forward]] is a client-only list. Servers use 'allowed_sources'.")
    if "source" in config.data and role == "server":
        raise cfg.usage_error("Top-level 'source' is not allowed for iroh server mode. "
                              "Use [iroh.allowed_sources] to restrict what clients can request.")
    table = config.data.get("iroh", {})
    if not isinstance(table, Mapping):
        raise config.parse_error("[iroh] must be a table")
    if role == "server" and ("private_key" in table or "private_key_file" in table):
        raise cfg.usage_error("[iroh] 'private_key' / 'private_key_file' are client-only fields.")
    if role == "client" and ("authorized_keys" in table or "authorized_keys_file" in table):
        raise cfg.usage_error("[iroh] 'authorized_keys' / 'authorized_keys_file' are server-only fields.")
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
        if key not in known:
            raise config.parse_error(f"unknown field '{key}' in [iroh]")
    for inline, file in (("secret", "secret_file"), ("authorized_keys", "authorized_keys_file"),
                         ("private_key", "private_key_file")):
        if inline in table and file in table:
            raise cfg.usage_error(f"[iroh] Use only one of '{inline}' or '{file}'.")
    if table.get("authorized_keys") == []:
        raise cfg.usage_error("[iroh] 'authorized_keys' is empty. List at least one public key.")
    sources = table.get("allowed_sources", {})
    if isinstance(sources, Mapping):
        for key in sources:
            if key not in ALLOWED_SOURCES_KEYS:
                raise config.parse_error(f"unknown field '{key}' in [iroh.allowed_sources]")
    _check_transport(config, table.get("transport", {}))
    return IrohSection(values=dict(table), path=config.path, from_stdin=from_stdin)


def _check_transport(config: cfg.ConfigFile, transport: Any) -> None:
    """``[iroh.transport]`` as upstream validates it; the values themselves cannot be applied (docs/iroh.md)."""
    if not isinstance(transport, Mapping):
        raise config.parse_error("[iroh.transport] must be a table")
    for key, value in transport.items():
        if key == "congestion_controller":
            if value not in CONGESTION_CONTROLLERS:
                raise config.parse_error(
                    f"[iroh.transport] unknown congestion_controller {value!r}, expected cubic, bbr or newreno")
            continue
        bounds = TRANSPORT_RANGES.get(key)
        if bounds is None:
            raise config.parse_error(f"unknown field '{key}' in [iroh.transport]")
        if isinstance(value, bool) or not isinstance(value, int):
            raise config.parse_error(f"[iroh.transport] '{key}' must be an integer")
        low, high = bounds
        if not low <= value <= high:
            raise cfg.usage_error(f"[iroh] {key} value {value} is outside {low}..{high}")


def reject_inline_keys(section: IrohSection) -> None:
    """Upstream v0.6 keeps secrets out of config files (VCS, backups): inline values only via --config-stdin."""
    if section.from_stdin:
        return
    if "secret" in section.values:
        raise cfg.usage_error("[iroh] Plaintext 'secret' is not allowed in config files. "
                              "Use 'secret_file' or set TUNNEL_RS_SECRET.")
    if "private_key" in section.values:
        raise cfg.usage_error("[iroh] Inline 'private_key' is not allowed in config files. "
                              "Use 'private_key_file', or pass it in a --config-stdin JSON config.")
    if "authorized_keys" in section.values:
        raise cfg.usage_error("[iroh] Inline 'authorized_keys' is not allowed in config files. "
                              "Use 'authorized_keys_file', or pass them in a --config-stdin JSON config.")


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


