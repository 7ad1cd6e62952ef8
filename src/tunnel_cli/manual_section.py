"""The ``[manual]`` (or ``[ice-manual]``) table of a config file, checked for the role being run.

Apart from the file loader (tunnel_cli.config) because each mode owns its section: nostr's lives in
tunnel_cli.nostr_cmd, iroh's in tunnel_cli.iroh_section.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import attrs

from tunnel_cli.checks import (
    CIDR_EXAMPLE,
    check_config_source,
    check_config_target,
    check_host_candidate,
    check_packet_size,
    check_stun_server,
    cidr_ok,
    parse_duration,
)
from tunnel_cli.config import (
    SECTION_NAMES,
    TOP_LEVEL_KEYS,
    ConfigFile,
    blank_is_none,
    read_congestion,
    read_udp_over,
    show_value,
    string_list,
    string_value,
    usage_error,
    warn_unknown_keys,
)
from tunnel_cli.turn_settings import read_turn_keys


@attrs.frozen
class ManualSection:
    """The ``[manual]`` table after type and value checks; None / empty means "not set in the file"."""

    section: str = "manual"
    #: None when the key is absent (defaults apply); an empty tuple when the file disables STUN.
    stun_servers: tuple[str, ...] | None = None
    allowed_tcp: tuple[str, ...] = ()
    allowed_udp: tuple[str, ...] = ()
    source: str | None = None
    target: str | None = None
    host_candidates: tuple[str, ...] = ()
    packet_size: int | None = None
    congestion: str | None = None
    udp_over: str | None = None
    turn_servers: tuple[str, ...] = ()
    turn_user: str | None = None
    turn_password: str | None = attrs.field(default=None, repr=False)
    turn_password_file: str | None = None
    #: issue 15 (docs/reconnect.md): seconds; None when the key is absent
    reconnect_timeout: float | None = None


ALLOWED_SOURCES_KEYS = frozenset({"tcp", "udp"})
_MANUAL_KEYS = frozenset({
    "stun_servers", "allowed_sources", "request_source", "source", "target", "host_candidates", "packet_size",
    "transport", "turn_servers", "turn_user", "turn_password", "turn_password_file",
    "congestion", "reconnect_timeout", "udp_over",
})


def manual_section(
    config: ConfigFile,
    role: str,
    *,
    warn: Callable[[str], None] | None = None,
    interfaces: Callable[[], Iterable[str]] | None = None,
) -> ManualSection:
    """Extract and check ``[manual]`` (or ``[ice-manual]``) for ``role``.

    Role-specific keys are rejected rather than ignored: a server file carrying ``target`` was almost
    certainly meant for the client, and running anyway would hide that. Unknown keys are ignored like the
    reference does, with a warning so typos do not go unnoticed.
    """
    data = config.data
    present = [name for name in SECTION_NAMES["manual"] if name in data]
    if len(present) > 1:
        raise usage_error(
            f"Config file has both [{present[0]}] and [{present[1]}] sections. Use only one."
        )
    name = present[0] if present else "manual"
    table = data.get(name, {})
    if not isinstance(table, Mapping):
        raise config.parse_error(f"'{name}' must be a table")

    if role == "server" and "source" in data:
        raise usage_error(
            f"Top-level 'source' is not allowed for {name} server mode. "
            f"Use [{name}.allowed_sources] to restrict what clients can request."
        )
    if role == "server" and any(key in table for key in ("source", "request_source", "target")):
        raise usage_error(
            f"[{name}] 'source' / 'request_source' / 'target' are client-only fields. "
            "Servers use 'allowed_sources' to restrict what clients can request."
        )
    if role == "server" and "forward" in data:
        raise usage_error("[[forward]] is a client-only list. Servers use 'allowed_sources'.")
    if role == "client" and "allowed_sources" in table:
        raise usage_error(
            f"[{name}] 'allowed_sources' is a server-only field. "
            "Clients use 'source' to specify what to request from server."
        )
    warn_unknown_keys(config, config.data, TOP_LEVEL_KEYS, "the top level", warn)
    warn_unknown_keys(config, table, _MANUAL_KEYS, f"[{name}]", warn)
    allowed_table = table.get("allowed_sources")
    if isinstance(allowed_table, Mapping):
        warn_unknown_keys(config, allowed_table, ALLOWED_SOURCES_KEYS, f"[{name}.allowed_sources]", warn)
    if warn is not None:
        if "transport" in table:
            warn(f"[{name}.transport] is not supported by this version and is ignored")

    stun = string_list(config, table, name, "stun_servers") if "stun_servers" in table else None
    if stun is not None:
        for server in stun:
            check_stun_server(server, f"[{name}] stun_servers")

    allowed_tcp: tuple[str, ...] = ()
    allowed_udp: tuple[str, ...] = ()
    if "allowed_sources" in table:
        allowed = table["allowed_sources"]
        if not isinstance(allowed, Mapping):
            raise config.parse_error(f"[{name}] 'allowed_sources' must be a table with 'tcp' and 'udp' lists")
        allowed_tcp = string_list(config, allowed, f"{name}.allowed_sources", "tcp")
        allowed_udp = string_list(config, allowed, f"{name}.allowed_sources", "udp")
        for proto, cidrs in (("TCP", allowed_tcp), ("UDP", allowed_udp)):
            for cidr in cidrs:
                if not cidr_ok(cidr):
                    raise usage_error(
                        f"Invalid {proto} allowed_sources: Invalid CIDR network '{cidr}'. "
                        f"Expected format: {CIDR_EXAMPLE}"
                    )

    if "request_source" in table and "source" in table:
        raise usage_error(f"[{name}] Use only one of 'request_source' or 'source'.")
    source_key = "request_source" if "request_source" in table else "source"
    source = blank_is_none(string_value(config, table, name, source_key))
    if source is not None:
        check_config_source(source)
    target = blank_is_none(string_value(config, table, name, "target"))
    if target is not None:
        check_config_target(target)

    hosts = string_list(config, table, name, "host_candidates")
    for host in hosts:
        check_host_candidate(host, f"[{name}] host_candidates", interfaces)

    packet_size: int | None = None
    if "packet_size" in table:
        value = table["packet_size"]
        if isinstance(value, bool) or not isinstance(value, int):
            raise config.parse_error(f"[{name}] 'packet_size' must be an integer (got {show_value(value)})")
        packet_size = check_packet_size(value, f"[{name}] packet_size")

    turn = read_turn_keys(config, table, name)

    return ManualSection(
        section=name,
        stun_servers=stun,
        turn_servers=turn.turn_servers,
        turn_user=turn.turn_user,
        turn_password=turn.turn_password,
        turn_password_file=turn.turn_password_file,
        allowed_tcp=allowed_tcp,
        allowed_udp=allowed_udp,
        source=source,
        target=target,
        host_candidates=hosts,
        packet_size=packet_size,
        congestion=read_congestion(config, table, name),
        reconnect_timeout=(parse_duration(table["reconnect_timeout"], f"[{name}] reconnect_timeout")
                           if "reconnect_timeout" in table else None),
        udp_over=read_udp_over(config, table, name),
    )


