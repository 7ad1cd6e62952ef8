"""ice-nostr mode on the command line: ``tunnel server|client nostr`` (and ``ice-nostr``, and the same under
``tunnel-rs-ice``), the ``[nostr]`` / ``[ice-nostr]`` config section, and the key tools ``generate-nostr-key`` /
``show-npub``.

Kept apart from tunnel_cli.cli (which only asks ``claim`` whether a command line is ours) so the nostr flags,
their checks and the reference's wording live in one place. Parsing and validation import neither aioquic nor
the runtime, so errors answer in milliseconds with one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from tunnel_cli import checks, precedence, turn_settings
from tunnel_cli import config as cfg
from tunnel_cli.forwards import (
    add_client_extra_args,
    add_server_extra_args,
    allow_listen,
    check_extra_keys,
    config_forwards,
    parse_forward,
    reverse_forwards,
    socks_listen,
)
from tunnel_cli.ice_flags import add_ice_args, ice_options
from tunnel_cli.keyfiles import check_secret_file_mode, write_secret_file
from tunnel_cli.parser import Parser, add_config_args, config_file_mode, pre_parse_config
from tunnel_core.nostr.constants import EPHEMERAL_KINDS, KIND
from tunnel_core.nostr.options import (
    DEFAULT_CLIENT_REPUBLISH,
    DEFAULT_MAX_SESSIONS,
    DEFAULT_MAX_WAIT,
    DEFAULT_RELAYS,
    DEFAULT_SERVER_REPUBLISH,
    NostrClientOptions,
    NostrServerOptions,
)
from tunnel_core.options import DEFAULT_RECONNECT_TIMEOUT, ExitCode, IceOptions, TunnelError

KEY_TOOLS = ("generate-nostr-key", "show-npub")
MODE_WORDS = ("nostr", "ice-nostr")

_KEYS = frozenset({
    "relays", "nsec", "nsec_file", "peer_npub", "stun_servers", "max_sessions", "allowed_sources",
    "request_source", "source", "target", "transport", "host_candidates", "packet_size", "event_kind", "plaintext",
    "turn_servers", "turn_user", "turn_password", "turn_password_file", "congestion", "reconnect_timeout", "udp_over",
})


@attrs.frozen
class GenerateNostrKey:
    output: str
    force: bool = False


@attrs.frozen
class ShowNpub:
    nsec_file: str


NostrCommand = NostrServerOptions | NostrClientOptions | GenerateNostrKey | ShowNpub


def handles(options: object) -> bool:
    return isinstance(options, NostrServerOptions | NostrClientOptions | GenerateNostrKey | ShowNpub)


def _usage(message: str) -> TunnelError:
    return TunnelError(message, ExitCode.USAGE)


# ---------------------------------------------------------------------------------------------- claiming


def claim(
    argv: Sequence[str],
    *,
    program: Any,
    warn: Callable[[str], None] | None = None,
    interfaces: Callable[[], Iterable[str]] | None = None,
    stdin_config: cfg.ConfigFile | None = None,
) -> tuple[str, NostrCommand] | None:
    """Build the options when ``argv`` is a nostr-mode command or a nostr key tool for ``program``, else None."""
    args = list(argv)
    first = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
    if first is None:
        return None
    word = args[first]
    if word in KEY_TOOLS:
        return _key_tool(word, args[first + 1 :], program)
    if word not in ("server", "client"):
        return None
    rest = args[first + 1 :]
    try:
        _known, leftover = pre_parse_config(rest)
    except SystemExit:
        return None
    mode_word = leftover[0] if leftover and not leftover[0].startswith("-") else None
    if mode_word is None:
        mode = stdin_config.mode if stdin_config is not None else \
            config_file_mode(word, rest, ice=bool(getattr(program, "ice", False)))
        if mode is None or cfg.MODE_ALIASES.get(mode) != "nostr":
            return None
    elif mode_word not in MODE_WORDS:
        return None
    return _build(word, rest, mode_word, program, warn, interfaces, stdin_config)


# ---------------------------------------------------------------------------------------------- parser


def _parser(role: str, program: Any) -> Parser:
    name = getattr(program, "name", "tunnel")
    default_file = "~/.config/tunnel-rs/" + cfg.default_config_path(role, ice=bool(program.ice)).name
    p = Parser(
        prog=f"{name} {role} nostr",
        description="ICE + QUIC with automatic signaling over Nostr relays (NIP-44 encrypted, both sides pinned).",
        epilog=(f"Example:\n  {name} server nostr --nsec-file server.nsec --peer-npub npub1... "
                "--allowed-tcp 127.0.0.0/8\n" if role == "server" else
                f"Example:\n  {name} client nostr --nsec-file client.nsec --peer-npub npub1... "
                "--source tcp://127.0.0.1:22 --target 127.0.0.1:2222\n"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p, after_mode=False, default_file=default_file)
    if role == "server":
        p.add_argument("--allowed-tcp", metavar="CIDR", action="append", default=[],
                       help="networks clients may reach over TCP (repeatable), e.g. 127.0.0.0/8")
        p.add_argument("--allowed-udp", metavar="CIDR", action="append", default=[],
                       help="networks clients may reach over UDP (repeatable)")
        p.add_argument("--max-sessions", metavar="N",
                       help=f"concurrent sessions (default {DEFAULT_MAX_SESSIONS}; 0 = unlimited)")
        add_server_extra_args(p)
    else:
        p.add_argument("-s", "--source", metavar="URL",
                       help="service to request on the server's side: tcp://host:port or udp://host:port")
        p.add_argument("-t", "--target", metavar="HOST:PORT",
                       help="local address to listen on; udp://host:port selects UDP")
        p.add_argument("-L", "--forward", metavar="LISTEN=URL", action="append", default=[],
                       help="one more forward over the same tunnel (repeatable), e.g. "
                            "127.0.0.1:8080=tcp://127.0.0.1:80; see docs/forwards.md")
        add_client_extra_args(p)
        p.add_argument("--reconnect-timeout", metavar="DURATION",
                       help=f"when the tunnel is lost, re-establish it for up to this long, keeping the local "
                       f"listener (default {DEFAULT_RECONNECT_TIMEOUT:g}s; e.g. 90s, 5m; 0 = exit at once)")
    p.add_argument("--nsec", metavar="KEY", help="this side's Nostr secret key (nsec1... or 64 hex)")
    p.add_argument("--nsec-file", metavar="PATH", help="file holding this side's nsec (generate-nostr-key)")
    p.add_argument("--peer-npub", metavar="KEY", help="the other side's public key (npub1... or 64 hex)")
    p.add_argument("--relay", metavar="URL", action="append", default=[],
                   help="Nostr relay, ws:// or wss:// (repeatable; replaces the config list)")
    default_republish = DEFAULT_SERVER_REPUBLISH if role == "server" else DEFAULT_CLIENT_REPUBLISH
    p.add_argument("--republish-interval", metavar="SECS",
                   help=f"first wait before re-publishing the request (default {default_republish:g}; doubles)")
    p.add_argument("--max-wait", metavar="SECS", help=f"give up waiting for the peer after this (default "
                   f"{DEFAULT_MAX_WAIT:g})")
    p.add_argument("--event-kind", metavar="N",
                   help=f"ephemeral event kind used for signaling (default {KIND}, the reference's); both sides "
                   "must agree")
    p.add_argument("--plaintext-compat", action="store_true",
                   help="upstream tunnel-rs wire format: unencrypted content, no client certificate pinning")
    add_ice_args(p)
    return p


# ---------------------------------------------------------------------------------------------- config


@attrs.frozen
class NostrSection:
    name: str = "nostr"
    relays: tuple[str, ...] = ()
    nsec: str | None = None
    nsec_file: str | None = None
    peer_npub: str | None = None
    stun_servers: tuple[str, ...] | None = None
    max_sessions: int | None = None
    allowed_tcp: tuple[str, ...] = ()
    allowed_udp: tuple[str, ...] = ()
    source: str | None = None
    target: str | None = None
    host_candidates: tuple[str, ...] = ()
    packet_size: int | None = None
    congestion: str | None = None
    udp_over: str | None = None
    event_kind: int | None = None
    plaintext: bool = False
    # TURN keys, checked by tunnel_cli.config.read_turn_keys like [manual]'s; resolved by the CLI core
    turn_servers: tuple[str, ...] = ()
    turn_user: str | None = None
    turn_password: str | None = attrs.field(default=None, repr=False)
    turn_password_file: str | None = None
    reconnect_timeout: float | None = None

    @property
    def section(self) -> str:
        return self.name


def _strs(config: cfg.ConfigFile, table: Mapping[str, Any], where: str, key: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise config.parse_error(f"[{where}] '{key}' must be a list of strings")
    return tuple(value)


def _str(config: cfg.ConfigFile, table: Mapping[str, Any], where: str, key: str) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise config.parse_error(f"[{where}] '{key}' must be a string")
    if value is not None and not value.strip():
        return None
    return value


def _int(config: cfg.ConfigFile, table: Mapping[str, Any], where: str, key: str) -> int | None:
    value = table.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise config.parse_error(f"[{where}] '{key}' must be a non-negative integer")
    return value


def nostr_section(
    config: cfg.ConfigFile,
    role: str,
    *,
    warn: Callable[[str], None] | None = None,
    interfaces: Callable[[], Iterable[str]] | None = None,
) -> NostrSection:
    data = config.data
    present = [n for n in cfg.SECTION_NAMES["nostr"] if n in data]
    if len(present) > 1:
        raise _usage(f"Config file has both [{present[0]}] and [{present[1]}] sections. Use only one.")
    name = present[0] if present else "nostr"
    table = data.get(name, {})
    if not isinstance(table, Mapping):
        raise config.parse_error(f"'{name}' must be a table")
    if role == "server" and "forward" in data:
        raise _usage("[[forward]] is a client-only list. Servers use 'allowed_sources'.")
    if role == "server" and "source" in data:
        raise _usage(f"Top-level 'source' is not allowed for {name} server mode. "
                     f"Use [{name}.allowed_sources] to restrict what clients can request.")
    if role == "server" and any(k in table for k in ("source", "request_source", "target")):
        raise _usage(f"[{name}] 'source' / 'request_source' / 'target' are client-only fields. "
                     "Servers use 'allowed_sources' to restrict what clients can request.")
    if role == "client" and "allowed_sources" in table:
        raise _usage(f"[{name}] 'allowed_sources' is a server-only field. "
                     "Clients use 'source' to specify what to request from server.")
    if role == "client" and "max_sessions" in table:
        raise _usage(f"[{name}] 'max_sessions' is a server-only field.")
    if role == "server" and "reconnect_timeout" in table:
        raise _usage(f"[{name}] 'reconnect_timeout' is a client-only field.")
    if "nsec" in table and "nsec_file" in table:
        raise _usage(f"[{name}] Use only one of 'nsec' or 'nsec_file'.")
    cfg.warn_unknown_keys(config, data, cfg.TOP_LEVEL_KEYS, "the top level", warn)
    cfg.warn_unknown_keys(config, table, _KEYS, f"[{name}]", warn)
    if isinstance(table.get("allowed_sources"), Mapping):
        cfg.warn_unknown_keys(config, table["allowed_sources"], frozenset({"tcp", "udp"}),
                              f"[{name}.allowed_sources]", warn)
    if warn is not None:
        if "transport" in table:
            warn(f"[{name}.transport] is not supported by this version and is ignored")
    stun = _strs(config, table, name, "stun_servers") if "stun_servers" in table else None
    for server in stun or ():
        checks.check_stun_server(server, f"[{name}] stun_servers")
    allowed_tcp: tuple[str, ...] = ()
    allowed_udp: tuple[str, ...] = ()
    if "allowed_sources" in table:
        allowed = table["allowed_sources"]
        if not isinstance(allowed, Mapping):
            raise config.parse_error(f"[{name}] 'allowed_sources' must be a table with 'tcp' and 'udp' lists")
        allowed_tcp = checks.check_cli_cidrs(_strs(config, allowed, f"{name}.allowed_sources", "tcp"), "--allowed-tcp")
        allowed_udp = checks.check_cli_cidrs(_strs(config, allowed, f"{name}.allowed_sources", "udp"), "--allowed-udp")
    if "request_source" in table and "source" in table:
        raise _usage(f"[{name}] Use only one of 'request_source' or 'source'.")
    source = _str(config, table, name, "request_source" if "request_source" in table else "source")
    hosts = _strs(config, table, name, "host_candidates")
    for host in hosts:
        checks.check_host_candidate(host, f"[{name}] host_candidates", interfaces)
    packet_size = _int(config, table, name, "packet_size")
    if packet_size is not None:
        checks.check_packet_size(packet_size, f"[{name}] packet_size")
    plaintext = table.get("plaintext", False)
    if not isinstance(plaintext, bool):
        raise config.parse_error(f"[{name}] 'plaintext' must be a boolean")
    turn = turn_settings.read_turn_keys(config, table, name)
    return NostrSection(
        name=name,
        relays=_strs(config, table, name, "relays"),
        nsec=_str(config, table, name, "nsec"),
        nsec_file=_str(config, table, name, "nsec_file"),
        peer_npub=_str(config, table, name, "peer_npub"),
        stun_servers=stun,
        max_sessions=_int(config, table, name, "max_sessions"),
        allowed_tcp=allowed_tcp,
        allowed_udp=allowed_udp,
        source=source,
        target=_str(config, table, name, "target"),
        host_candidates=hosts,
        packet_size=packet_size,
        congestion=cfg.read_congestion(config, table, name),
        udp_over=cfg.read_udp_over(config, table, name),
        event_kind=_int(config, table, name, "event_kind"),
        plaintext=plaintext,
        reconnect_timeout=(checks.parse_duration(table["reconnect_timeout"], f"[{name}] reconnect_timeout")
                           if "reconnect_timeout" in table else None),
        turn_servers=turn.turn_servers,
        turn_user=turn.turn_user,
        turn_password=turn.turn_password,
        turn_password_file=turn.turn_password_file,
    )


# ---------------------------------------------------------------------------------------------- building


def _tool_name(program: Any) -> str:
    return "tunnel-rs-ice" if getattr(program, "ice", False) else getattr(program, "name", "tunnel")


def read_nsec_file(path: str) -> str:
    try:
        text = cfg.read_bounded_text(cfg.expand_path(path)).strip()
    except (OSError, UnicodeDecodeError):
        raise _usage(f"Failed to read nsec file: {path}") from None
    check_secret_file_mode(path)
    if not text:
        raise _usage(f"nsec file is empty: {path}")
    return text


def _resolve_nsec(namespace: argparse.Namespace, section: NostrSection, program: Any) -> str:
    cli_nsec, cli_file = namespace.nsec, namespace.nsec_file
    if cli_nsec is not None and cli_file is not None:
        raise _usage("Cannot combine --nsec with --nsec-file (or nsec and nsec_file in config).")
    if cli_nsec is not None or cli_file is not None:
        nsec, nsec_file = cli_nsec, cli_file
    else:
        nsec, nsec_file = section.nsec, section.nsec_file
    if nsec_file is not None:
        nsec = read_nsec_file(nsec_file)
    if nsec is None:
        raise _usage("nsec is required. Provide via --nsec/--nsec-file or in config file (nsec/nsec_file). "
                     f"Use '{_tool_name(program)} generate-nostr-key' to create one.")
    if not nsec.strip():
        raise _usage("nsec is empty. Provide a valid nsec or hex private key.")
    from tunnel_core.nostr.errors import NostrError
    from tunnel_core.nostr.keys import SecretKey

    try:
        SecretKey.parse(nsec)
    except NostrError as exc:
        raise _usage(str(exc)) from None
    return nsec.strip()


def _resolve_peer(namespace: argparse.Namespace, section: NostrSection) -> str:
    peer = namespace.peer_npub if namespace.peer_npub is not None else section.peer_npub
    if peer is None or not peer.strip():
        raise _usage("peer-npub is required. Provide via --peer-npub or in config file.")
    from tunnel_core.nostr.errors import NostrError
    from tunnel_core.nostr.keys import PublicKey

    try:
        PublicKey.parse(peer)
    except NostrError as exc:
        raise _usage(str(exc)) from None
    return peer.strip()


def _seconds(text: str | None, flag: str, default: float) -> float:
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value > 86400:
        raise _usage(f"Invalid {flag} '{text}'. Expected a number of seconds greater than 0")
    return value


def _relays(cli: Sequence[str], section: NostrSection) -> tuple[str, ...]:
    from tunnel_core.websocket import WebSocketError, parse_ws_url

    relays = precedence.cli_or_config(cli, section.relays) or DEFAULT_RELAYS
    for url in relays:
        try:
            parse_ws_url(url)
        except WebSocketError as exc:
            raise _usage(str(exc)) from None
    return tuple(dict.fromkeys(relays))


def _event_kind(text: str | None, section: NostrSection) -> int:
    if text is None:
        return section.event_kind if section.event_kind is not None else KIND
    if not text.isdigit() or not EPHEMERAL_KINDS[0] <= int(text) <= EPHEMERAL_KINDS[1]:
        raise _usage(f"Invalid --event-kind '{text}'. Expected an ephemeral kind "
                     f"{EPHEMERAL_KINDS[0]}..{EPHEMERAL_KINDS[1]}")
    return int(text)


def _ice(namespace: argparse.Namespace, section: NostrSection,
         interfaces: Callable[[], Iterable[str]] | None) -> IceOptions:
    """The same ICE flags as manual mode (STUN, host candidates, packet size, TURN)."""
    return ice_options(namespace, section, interfaces)


def _build(
    role: str,
    rest: Sequence[str],
    mode_word: str | None,
    program: Any,
    warn: Callable[[str], None] | None,
    interfaces: Callable[[], Iterable[str]] | None,
    stdin_config: cfg.ConfigFile | None = None,
) -> tuple[str, NostrCommand]:
    args = list(rest)
    if mode_word is not None:
        args.remove(mode_word)
    namespace = _parser(role, program).parse_args(args)
    config = cfg.choose_config(namespace.config, namespace.default_config, namespace.config_stdin, role,
                               ice=bool(program.ice), stdin_config=stdin_config)
    section = NostrSection()
    if config is not None:
        cfg.check_role(config, role)
        cfg.resolve_mode(mode_word, config, program.modes)
        section = nostr_section(config, role, warn=warn, interfaces=interfaces)
    check_extra_keys(config, role)
    ice = _ice(namespace, section, interfaces)
    nsec = _resolve_nsec(namespace, section, program)
    peer = _resolve_peer(namespace, section)
    relays = _relays(namespace.relay, section)
    kind = _event_kind(namespace.event_kind, section)
    plaintext = namespace.plaintext_compat or section.plaintext
    max_wait = _seconds(namespace.max_wait, "--max-wait", DEFAULT_MAX_WAIT)
    if role == "server":
        allowed_tcp = precedence.cli_or_config(checks.check_cli_cidrs(namespace.allowed_tcp, "--allowed-tcp"),
                                        section.allowed_tcp)
        allowed_udp = precedence.cli_or_config(checks.check_cli_cidrs(namespace.allowed_udp, "--allowed-udp"),
                                        section.allowed_udp)
        listen_allowed = allow_listen(namespace, config)
        if not allowed_tcp and not allowed_udp and not listen_allowed:
            raise _usage("At least one of --allowed-tcp or --allowed-udp must be specified for nostr server mode.")
        max_sessions = section.max_sessions if section.max_sessions is not None else DEFAULT_MAX_SESSIONS
        if namespace.max_sessions is not None:
            if not namespace.max_sessions.isdigit():
                raise _usage(f"Invalid --max-sessions '{namespace.max_sessions}'. Expected a number (0 = unlimited)")
            max_sessions = int(namespace.max_sessions)
        return "server nostr", NostrServerOptions(
            nsec=nsec, peer_npub=peer, allowed_tcp=allowed_tcp, allowed_udp=allowed_udp, relays=relays, ice=ice,
            max_sessions=max_sessions, max_wait=max_wait, plaintext=plaintext, event_kind=kind,
            allow_listen=listen_allowed,
            republish_interval=_seconds(namespace.republish_interval, "--republish-interval",
                                        DEFAULT_SERVER_REPUBLISH),
        )
    target = namespace.target if namespace.target and namespace.target.strip() else section.target
    source = namespace.source if namespace.source and namespace.source.strip() else section.source
    socks = socks_listen(namespace, config)
    reverse = reverse_forwards(namespace, config)
    # --forward on the command line replaces the file's [[forward]] list; --source/--target stay the first one.
    extra = tuple(parse_forward(spec) for spec in namespace.forward) if namespace.forward else \
        config_forwards(config)
    # Without --source/--target the other forwards are the whole list ([[forward]], SOCKS5, reverse; docs/forwards.md).
    if not (source is None and target is None and (socks is not None or reverse or extra)):
        if target is None:
            raise _usage("target is required. Provide via --target or in config file.")
        if source is None:
            raise _usage("--source is required for nostr client mode. Specify the source to request from server "
                         "(e.g., --source tcp://127.0.0.1:22)")
        from tunnel_core.nostr.target import client_protocol
        from tunnel_core.policy import PolicyError, parse_target

        _src, bare_target = client_protocol(source.strip(), target.strip())
        try:
            parse_target(bare_target)
        except PolicyError:
            raise _usage("Invalid listen address format. Use format like localhost:2222, 127.0.0.1:2222 or "
                         "[::]:2222") from None
    reconnect_timeout = section.reconnect_timeout
    if namespace.reconnect_timeout is not None:
        reconnect_timeout = checks.parse_duration(namespace.reconnect_timeout, "--reconnect-timeout")
    return "client nostr", NostrClientOptions(
        nsec=nsec, peer_npub=peer, source=source.strip() if source else None,
        target=target.strip() if target else None, relays=relays, ice=ice,
        extra_forwards=extra, socks5=socks, reverse=reverse,
        max_wait=max_wait, plaintext=plaintext, event_kind=kind,
        reconnect_timeout=DEFAULT_RECONNECT_TIMEOUT if reconnect_timeout is None else reconnect_timeout,
        republish_interval=_seconds(namespace.republish_interval, "--republish-interval", DEFAULT_CLIENT_REPUBLISH),
    )


# ---------------------------------------------------------------------------------------------- key tools


def _key_tool(word: str, rest: Sequence[str], program: Any) -> tuple[str, NostrCommand]:
    name = _tool_name(program)
    p = Parser(prog=f"{name} {word}")
    if word == "generate-nostr-key":
        p.description = "Generate a Nostr key pair: the nsec goes to PATH (0600), the npub to stdout."
        p.add_argument("-o", "--output", metavar="PATH", required=True, help="file for the nsec, or - for stdout")
        p.add_argument("--force", action="store_true", help="overwrite an existing file")
        ns = p.parse_args(list(rest))
        return word, GenerateNostrKey(output=ns.output, force=ns.force)
    p.description = "Print the npub of an nsec file."
    p.add_argument("-n", "--nsec-file", metavar="PATH", required=True, help="file holding an nsec or hex key")
    ns = p.parse_args(list(rest))
    return word, ShowNpub(nsec_file=ns.nsec_file)


def generate_key(cmd: GenerateNostrKey) -> None:
    from tunnel_core.nostr.keys import SecretKey

    key = SecretKey.generate(os.urandom)
    npub = key.public_key.npub
    if cmd.output == "-":
        print(key.nsec, flush=True)
        print(f"npub: {npub}", file=sys.stderr, flush=True)
        return
    write_secret_file(cmd.output, key.nsec, force=cmd.force)
    print(f"nsec saved to: {Path(cmd.output)}", file=sys.stderr, flush=True)
    print(f"npub: {npub}", flush=True)


def show_npub(cmd: ShowNpub) -> None:
    from tunnel_core.nostr.errors import NostrError
    from tunnel_core.nostr.keys import SecretKey

    text = read_nsec_file(cmd.nsec_file)
    try:
        key = SecretKey.parse(text)
    except NostrError as exc:
        raise _usage(str(exc)) from None
    print(key.public_key.npub, flush=True)


def dispatch(options: NostrCommand, runtime: str) -> None:
    if isinstance(options, GenerateNostrKey):
        generate_key(options)
        return
    if isinstance(options, ShowNpub):
        show_npub(options)
        return
    import importlib

    try:
        module = importlib.import_module(f"tunnel_{runtime}.nostr")
    except ModuleNotFoundError:
        raise TunnelError(f"nostr mode is not available on {runtime} yet", ExitCode.USAGE) from None
    if isinstance(options, NostrServerOptions):
        module.run_nostr_server(options)
    else:
        module.run_nostr_client(options)
