"""iroh-mode server and client options: the flags, the ``[iroh]`` section and the environment merged and checked."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from tunnel_cli import checks, precedence
from tunnel_cli import config as cfg
from tunnel_cli.forwards import allow_listen, config_forwards, parse_forward, reverse_forwards, socks_listen
from tunnel_cli.iroh_env import IrohEnv
from tunnel_cli.iroh_identity import allowed_clients, authorized_keys, private_key, secret_key
from tunnel_cli.iroh_network import check_ip_port
from tunnel_cli.iroh_section import IrohSection, section_list, section_str
from tunnel_cli.parser import flag, given
from tunnel_core.options import DEFAULT_RECONNECT_TIMEOUT

if TYPE_CHECKING:
    from tunnel_core.iroh_session.options import IrohClientOptions, IrohNetwork, IrohServerOptions

DEFAULT_MAX_SESSIONS = 100


def server_options(
    ns: argparse.Namespace, section: IrohSection, network: IrohNetwork, warn: Callable[[str], None] | None,
    protocol: str = "e2", env: IrohEnv | None = None, *, config: cfg.ConfigFile | None = None,
) -> IrohServerOptions:
    from tunnel_core.iroh_session.options import IrohServerOptions

    env = env or IrohEnv()
    secret = secret_key(ns, section, env.secret)
    if secret is None:
        raise cfg.usage_error(
            "Server identity is required. Generate a key with:\n tunnel-rs generate-server-key --output ./server.key\n"
            " Then pass --secret-file ./server.key or set [iroh].secret_file in server.toml."
        )
    sources = section.values.get("allowed_sources", {})
    if not isinstance(sources, Mapping):
        raise cfg.usage_error(f"Failed to parse config file: {section.path}: [iroh.allowed_sources] must be a table")
    tcp = precedence.cli_or_config(checks.check_cli_cidrs(flag(ns, "allowed_tcp") or [], "--allowed-tcp"),
                            checks.check_cli_cidrs(section_list(section, "tcp", sources, "iroh.allowed_sources"),
                                                "--allowed-tcp"))
    udp = precedence.cli_or_config(checks.check_cli_cidrs(flag(ns, "allowed_udp") or [], "--allowed-udp"),
                            checks.check_cli_cidrs(section_list(section, "udp", sources, "iroh.allowed_sources"),
                                                "--allowed-udp"))
    listen_allowed = allow_listen(ns, config)
    if not tcp and not udp and not listen_allowed:
        raise cfg.usage_error(
            "At least one --allowed-tcp or --allowed-udp network must be specified.\n"
            "Example: --allowed-tcp 127.0.0.0/8 --allowed-udp 10.0.0.0/8"
        )
    clients: tuple[bytes, ...] = ()
    keys: tuple[bytes, ...] = ()
    comments: tuple[tuple[bytes, str], ...] = ()
    if protocol == "e4":
        entries = authorized_keys(ns, section, env)
        keys, comments = tuple(entries), tuple(entries.items())
    else:
        if given(flag(ns, "authorized_keys_file")) is not None:  # a config value is just unused under e2
            raise cfg.usage_error("--authorized-keys-file needs --protocol e4 (e2 uses --allowed-clients)")
        clients = allowed_clients(ns, section, warn)
    max_text = flag(ns, "max_sessions")
    max_value: Any = max_text if max_text is not None else section.values.get("max_sessions", DEFAULT_MAX_SESSIONS)
    if isinstance(max_value, bool):
        max_value = None
    try:
        max_sessions = int(max_value) if isinstance(max_value, int | str) else 0
    except ValueError:
        max_sessions = 0
    if max_sessions < 1:
        raise cfg.usage_error(f"Invalid --max-sessions value '{max_value}': expected a whole number of at least 1")
    return IrohServerOptions(secret_key=secret, allowed_clients=clients, allowed_tcp=tcp, allowed_udp=udp,
                             max_sessions=max_sessions, network=network, protocol=protocol,
                             authorized_keys=keys, authorized_key_comments=comments, allow_listen=listen_allowed,
                             udp_over=_udp_over(ns, section))


def client_options(
    ns: argparse.Namespace, section: IrohSection, network: IrohNetwork, protocol: str = "e2",
    env: IrohEnv | None = None, *, config: cfg.ConfigFile | None = None,
) -> IrohClientOptions:
    from tunnel_core.iroh_session.options import IrohClientOptions
    from tunnel_core.keys import KeyFormatError, parse_endpoint_id

    server_text = given(flag(ns, "server_node_id")) or section_str(section, "server_node_id")
    if server_text is None and section_str(section, "node_id") is not None:
        raise cfg.usage_error("[iroh] 'node_id' is no longer supported; rename it to 'server_node_id'.")
    if server_text is None:
        raise cfg.usage_error("server_node_id is required. Provide via --server-node-id or in config file.")
    try:
        server_id = parse_endpoint_id(server_text)
    except KeyFormatError as exc:
        raise cfg.usage_error(f"{exc} (got: {server_text})") from None
    cli_source = given(flag(ns, "source"))
    source = cli_source or section_str(section, "request_source") or section_str(section, "source")
    cli_target = given(flag(ns, "target"))
    target = cli_target or section_str(section, "target")
    # --forward on the command line replaces the file's [[forward]] list; --source/--target stay the first one.
    cli_forwards = flag(ns, "forward") or []
    extra = tuple(parse_forward(spec) for spec in cli_forwards) if cli_forwards else config_forwards(config)
    socks = socks_listen(ns, config)
    reverse = reverse_forwards(ns, config)
    others = bool(extra) or socks is not None or bool(reverse)
    if source is None and (target is not None or not others):
        raise cfg.usage_error("--source is required for iroh client mode. Specify the source to request from "
                              "server (e.g., --source tcp://127.0.0.1:22)")
    if source is not None:
        if cli_source is not None:
            checks.check_cli_source(source)
        else:
            checks.check_config_source(source)
    if target is None and source is not None:
        raise cfg.usage_error("--target is required. Provide the local address to listen on "
                              "(e.g., --target 127.0.0.1:2222)")
    if target is not None:
        if cli_target is not None:
            checks.check_cli_target(target)
        else:
            checks.check_config_target(target)
    addrs = precedence.cli_or_config([check_ip_port(a, "--server-addr") for a in (flag(ns, "server_addr") or [])],
                              [check_ip_port(a, "server_addrs") for a in section_list(section, "server_addrs")])
    if not addrs and not network.discovery and (network.relays_disabled or not network.relay_urls):
        raise cfg.usage_error("No way to reach the server: give --server-addr or --relay-url "
                              "(discovery is off with --dns-server none)")
    seed = None
    if protocol == "e4":
        seed = private_key(ns, section, env or IrohEnv())
    elif given(flag(ns, "private_key_file")) is not None:  # a config value is just unused under e2
        raise cfg.usage_error("--private-key-file needs --protocol e4 (e2 identifies clients by --secret-file)")
    reconnect = given(flag(ns, "reconnect_timeout"))
    if reconnect is not None:
        reconnect_timeout = checks.parse_duration(reconnect, "--reconnect-timeout")
    elif "reconnect_timeout" in section.values:
        reconnect_timeout = checks.parse_duration(section.values["reconnect_timeout"], "[iroh] reconnect_timeout")
    else:
        reconnect_timeout = DEFAULT_RECONNECT_TIMEOUT
    return IrohClientOptions(server_id=server_id, source=source, target=target, secret_key=secret_key(ns, section),
                             server_addrs=addrs, network=network, protocol=protocol, auth_seed=seed,
                             extra_forwards=extra, socks5=socks, reverse=reverse,
                             reconnect_timeout=reconnect_timeout, udp_over=_udp_over(ns, section))




def _udp_over(ns: argparse.Namespace, section: IrohSection) -> str:
    """``--udp-over`` or ``[iroh] udp_over`` (docs/datagrams.md); "datagrams" when neither is given."""
    from tunnel_core.options import UDP_OVER

    return (given(flag(ns, "udp_over")) or cfg.read_choice(section.path, section.values, "iroh", "udp_over", UDP_OVER)
            or "datagrams")
