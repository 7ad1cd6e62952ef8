"""iroh mode on the command line: ``tunnel server|client iroh``, the ``tunnel-rs`` entry point (iroh only), the
``[iroh]`` config section and the key tools ``generate-iroh-key`` / ``show-iroh-node-id``.

Kept apart from tunnel_cli.cli (which only asks ``claim`` whether a command line is ours) so the iroh flags,
their checks and their reference wording live in one place. Like the rest of the CLI, nothing here imports the
iroh binding: parsing and validation answer in milliseconds and print one line on failure.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from tunnel_cli import config as cfg
from tunnel_cli import iroh_env
from tunnel_cli.iroh_env import IrohEnv
from tunnel_cli.keyfiles import write_secret_file
from tunnel_core.options import ExitCode, TunnelError

if TYPE_CHECKING:
    from tunnel_core.iroh_session.options import IrohClientOptions, IrohNetwork, IrohServerOptions

# Everything heavier (cryptography through tunnel_core.keys, the policy, the iroh_session package) is imported
# inside the functions that need it: ``claim`` runs for every command line, and ``tunnel --help`` or a flag typo
# must stay fast (tests/test_cli.py checks what validation imports).
DEFAULT_MAX_SESSIONS = 100

KEY_TOOLS = ("generate-iroh-key", "show-iroh-node-id", "generate-auth-key")

SERVER_KEYS = frozenset({
    "secret", "secret_file", "relay_urls", "dns_server", "allowed_sources", "max_sessions", "allowed_clients",
    "allowed_clients_file", "socks5_proxy", "bind_addr", "protocol", "authorized_keys_file", "authorized_keys",
})
CLIENT_KEYS = frozenset({
    "secret", "secret_file", "relay_urls", "dns_server", "server_node_id", "node_id", "request_source", "source",
    "target", "socks5_proxy", "server_addrs", "bind_addr", "protocol", "private_key_file", "private_key",
})

AUTH_KEYS_REQUIRED = (
    f"Authentication requires --authorized-keys-file, {iroh_env.AUTHORIZED_KEYS_FILE}, [iroh].authorized_keys_file, "
    "or [iroh].authorized_keys."
)
PRIVATE_KEY_REQUIRED = (
    f"Authentication requires --private-key-file, {iroh_env.PRIVATE_KEY_FILE}, [iroh].private_key_file, "
    "or [iroh].private_key."
)

DNS_SERVER_UNSUPPORTED = (
    "--dns-server with a URL is not supported: the iroh binding (PyPI iroh) cannot use a custom pkarr/DNS server. "
    "Use --dns-server none (and --server-addr or --relay-url), or omit it for n0's public discovery"
)


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


IrohCommand = "IrohServerOptions | IrohClientOptions | GenerateKey | ShowNodeId | GenerateAuthKey"


def handles(options: object) -> bool:
    """True for the option values this module builds (the CLI core dispatches them here)."""
    if isinstance(options, GenerateKey | ShowNodeId | GenerateAuthKey):
        return True
    return type(options).__module__ == "tunnel_core.iroh_session.options"


# ---------------------------------------------------------------------------------------------- claiming


def _pre_parse_config(rest: Sequence[str]) -> tuple[str | None, bool]:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-c", "--config")
    pre.add_argument("--default-config", action="store_true")
    known, _ = pre.parse_known_args(list(rest))
    return known.config, bool(known.default_config)


def _config_says_iroh(role: str, rest: Sequence[str], ice: bool) -> bool:
    """A ``tunnel server -c f.toml`` run whose file says ``mode = "iroh"`` is ours; any load problem is not
    (the general path reports it)."""
    try:
        config_file, default = _pre_parse_config(rest)
        if config_file is not None:
            path = cfg.expand_path(config_file)
        elif default:
            path = cfg.default_config_path(role, ice=ice)
        else:
            return False
        loaded = cfg.load_config(path)
    except (TunnelError, SystemExit):
        return False
    return loaded.mode == "iroh"


def claim(
    argv: Sequence[str], *, program: Any, warn: Callable[[str], None] | None = None
) -> tuple[str, IrohCommand] | None:
    """Build the options when ``argv`` is an iroh-mode command (or a key tool) for ``program``, else None."""
    args = list(argv)
    iroh_only = getattr(program, "name", "") == "tunnel-rs"
    if getattr(program, "ice", False):
        return None
    first = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
    if first is None:
        if iroh_only:
            return _build(args, program, warn)
        return None
    word = args[first]
    if word in KEY_TOOLS:
        return _build(args, program, warn)
    if word not in ("server", "client"):
        return _build(args, program, warn) if iroh_only else None
    rest = args[first + 1 :]
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-c", "--config")
    pre.add_argument("--default-config", action="store_true")
    try:
        _known, leftover = pre.parse_known_args(rest)
    except SystemExit:
        return None
    # Only -c/--default-config may precede the mode word, so the first thing left is the mode word (or a flag).
    mode_word = leftover[0] if leftover and not leftover[0].startswith("-") else None
    if iroh_only or mode_word == "iroh" or (mode_word is None and _config_says_iroh(word, rest, ice=False)):
        return _build(args, program, warn)
    return None


# ---------------------------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise TunnelError(f"{message} (see '{self.prog} --help')", ExitCode.USAGE)


def _common(p: argparse.ArgumentParser, *, after_mode: bool) -> None:
    sup = argparse.SUPPRESS if after_mode else None
    p.add_argument("-c", "--config", metavar="FILE", default=sup, help="read settings from this TOML file ([iroh])")
    p.add_argument("--default-config", action="store_true", default=argparse.SUPPRESS if after_mode else False,
                   help="read ~/.config/tunnel-rs/<role>.toml")


def _network_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--secret", metavar="B64", help="this endpoint's secret key inline (base64 of 32 bytes)")
    p.add_argument("--secret-file", metavar="PATH", help="file with this endpoint's secret key (generate-iroh-key)")
    p.add_argument("--relay-url", metavar="URL", action="append", default=[],
                   help="relay server (repeatable); default: n0's public relays")
    p.add_argument("--no-relay", action="store_true",
                   help="use no relay at all: direct addresses only (LAN/offline; project extension)")
    p.add_argument("--dns-server", metavar="URL|none",
                   help="'none' disables internet discovery; a custom URL is not supported by the iroh binding")
    p.add_argument("--socks5-proxy", metavar="URL",
                   help="[Experimental] SOCKS5 proxy (Tor) used only for .onion relay URLs, e.g. socks5h://127.0.0.1:9050")
    p.add_argument("--bind-addr", metavar="IP:PORT",
                   help="local UDP address of the iroh endpoint, e.g. 127.0.0.1:0 (project extension)")
    p.add_argument("--protocol", metavar="e2|e4",
                   help="wire protocol: e2 (NodeId allowlist, ALPN multi-forward/1; default) or e4 (current "
                        "tunnel-rs: ALPN mf/4, Ed25519 challenge-response)")


def _server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allowed-tcp", metavar="CIDR", action="append", default=[],
                   help="networks clients may reach over TCP (repeatable), e.g. 127.0.0.0/8")
    p.add_argument("--allowed-udp", metavar="CIDR", action="append", default=[],
                   help="networks clients may reach over UDP (repeatable)")
    p.add_argument("--allowed-clients", metavar="NODE_ID", action="append", default=[],
                   help="client EndpointId allowed to connect (repeatable; 64 hex or 52 base32 chars)")
    p.add_argument("--allowed-clients-file", metavar="FILE",
                   help="file of allowed client EndpointIds, one per line, '#' comments allowed")
    p.add_argument("--max-sessions", metavar="N", help=f"concurrent forwarded streams (default {DEFAULT_MAX_SESSIONS})")
    p.add_argument("--authorized-keys-file", metavar="FILE",
                   help="--protocol e4: file of client public keys, 'ed25519-pub:<b64url>[ comment]' per line")
    _network_flags(p)


def _client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--server-node-id", metavar="ID", help="the server's EndpointId")
    p.add_argument("-s", "--source", metavar="URL", help="service on the server's side: tcp://host:port or udp://host:port")
    p.add_argument("-t", "--target", metavar="HOST:PORT", help="local address to listen on, e.g. 127.0.0.1:2222")
    p.add_argument("--server-addr", metavar="IP:PORT", action="append", default=[],
                   help="dial the server directly at this address (repeatable; LAN or offline use)")
    p.add_argument("--private-key-file", metavar="FILE",
                   help="--protocol e4: this client's Ed25519 key ('ed25519-sec:...', see generate-auth-key)")
    _network_flags(p)


def build_parser(program: Any) -> _Parser:
    name = getattr(program, "name", "tunnel")
    iroh_only = name == "tunnel-rs"
    parser = _Parser(prog=name, description="iroh mode: identity-addressed tunnels with relay fallback.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for role, flags in (("server", _server_flags), ("client", _client_flags)):
        role_parser = commands.add_parser(role, help=f"iroh {role}")
        _common(role_parser, after_mode=False)
        if iroh_only:
            flags(role_parser)
        modes = role_parser.add_subparsers(dest="mode", metavar="MODE", required=False, parser_class=_Parser)
        mode_parser = modes.add_parser("iroh", help=f"iroh {role}")
        _common(mode_parser, after_mode=True)
        flags(mode_parser)
        if iroh_only:
            for action in mode_parser._actions:
                if action.dest not in ("help", "config", "default_config"):
                    action.default = argparse.SUPPRESS
    gen = commands.add_parser("generate-iroh-key", help="create a secret key file and print its EndpointId")
    gen.add_argument("-o", "--output", metavar="PATH|-", required=True, help="key file to write, or - for stdout")
    gen.add_argument("--force", action="store_true", help="overwrite an existing file")
    show = commands.add_parser("show-iroh-node-id", help="print the EndpointId of a secret key file")
    show.add_argument("-s", "--secret-file", metavar="PATH", required=True, help="the secret key file")
    auth = commands.add_parser("generate-auth-key",
                               help="--protocol e4: create an Ed25519 client key file and print its public line")
    auth.add_argument("-o", "--output", metavar="PATH", required=True, help="private key file to write (0600)")
    auth.add_argument("--comment", metavar="TEXT", help="comment appended to the public key line")
    auth.add_argument("--force", action="store_true", help="overwrite an existing file")
    return parser


# ---------------------------------------------------------------------------------------------- the [iroh] section


@attrs.frozen
class IrohSection:
    values: Mapping[str, Any] = attrs.Factory(dict)
    path: Path | None = None


def _iroh_section(config: cfg.ConfigFile, role: str) -> IrohSection:
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


def _cfg_str(section: IrohSection, key: str) -> str | None:
    value = section.values.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise cfg.usage_error(f"Failed to parse config file: {section.path}: [iroh] '{key}' must be a string")
    return value.strip() or None


def _cfg_list(
    section: IrohSection, key: str, table: Mapping[str, Any] | None = None, where: str = "iroh"
) -> tuple[str, ...]:
    source = section.values if table is None else table
    value = source.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise cfg.usage_error(
            f"Failed to parse config file: {section.path}: [{where}] '{key}' must be a list of strings"
        )
    return tuple(value)


# ---------------------------------------------------------------------------------------------- building options


def _build(argv: Sequence[str], program: Any, warn: Callable[[str], None] | None) -> tuple[str, IrohCommand]:
    parser = build_parser(program)
    ns = parser.parse_args(list(argv))
    command = ns.command
    if command is None:
        parser.error("a command is required: server, client, generate-iroh-key or show-iroh-node-id")
    if command == "generate-iroh-key":
        return command, GenerateKey(output=ns.output, force=bool(ns.force))
    if command == "show-iroh-node-id":
        return command, ShowNodeId(secret_file=ns.secret_file)
    if command == "generate-auth-key":
        comment = _given(ns.comment)
        if comment is not None and ("\n" in comment or "\r" in comment):
            raise cfg.usage_error("--comment must be a single line")
        return command, GenerateAuthKey(output=ns.output, comment=comment, force=bool(ns.force))
    role = command
    config_file = getattr(ns, "config", None)
    if config_file is not None and getattr(ns, "default_config", False):
        raise cfg.usage_error("Cannot use both -c/--config and --default-config")
    path = None
    if config_file is not None:
        path = cfg.expand_path(config_file)
    elif getattr(ns, "default_config", False):
        path = cfg.default_config_path(role)
    section = IrohSection()
    if path is not None:
        config = cfg.load_config(path)
        cfg.check_role(config, role)
        if config.mode is not None and config.mode != "iroh":
            raise cfg.usage_error(f'Config file has mode = "{config.mode}", but running with iroh')
        section = _iroh_section(config, role)
    network = _network(ns, section)
    protocol = _protocol(ns, section)
    # The TUNNEL_RS_* variables belong to upstream's E4 CLI; an e2 run (the NodeId-allowlist generation, which
    # never had them) ignores them so a shell prepared for e4 cannot change what an e2 command means.
    env = IrohEnv.read() if protocol == "e4" else IrohEnv()
    if env.relay_auth_token is not None and warn is not None:
        warn(f"{iroh_env.RELAY_AUTH_TOKEN} is set but ignored: this implementation has no relay "
             "authentication (--relay-auth-token)")
    if role == "server":
        return "server iroh", _server(ns, section, network, warn, protocol, env)
    return "client iroh", _client(ns, section, network, protocol, env)


def _protocol(ns: argparse.Namespace, section: IrohSection) -> str:
    value = _given(_flag(ns, "protocol")) or _cfg_str(section, "protocol") or "e2"
    if value.lower() not in ("e2", "e4"):
        raise cfg.usage_error(f"Invalid --protocol '{value}'. Expected e2 or e4")
    return value.lower()


def _flag(ns: argparse.Namespace, name: str) -> Any:
    return getattr(ns, name, None)


def _given(value: str | None) -> str | None:
    return value.strip() if value is not None and value.strip() else None


def _check_ip_port(text: str, flag: str) -> str:
    error = cfg.usage_error(f"Invalid {flag} '{text}'. Expected IP:PORT, e.g. 127.0.0.1:4433 or [::1]:4433")
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or int(port) > 0xFFFF:
        raise error
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise error from None
    return text.strip()


def _check_relay_url(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
        _ = parts.port
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise cfg.usage_error(f"Invalid relay URL '{url}'. Expected http://host[:port] or https://host[:port]")
    return url.strip()


def _network(ns: argparse.Namespace, section: IrohSection) -> IrohNetwork:
    from tunnel_core.iroh_session.options import IrohNetwork
    from tunnel_core.iroh_session.socks import ProxyError, check_proxy_for_relays, parse_socks5_proxy

    cli_relays = [_check_relay_url(u) for u in (_flag(ns, "relay_url") or [])]
    relays = cfg.cli_or_config(cli_relays, [_check_relay_url(u) for u in _cfg_list(section, "relay_urls")])
    no_relay = bool(_flag(ns, "no_relay"))
    if no_relay and cli_relays:
        raise cfg.usage_error("Cannot combine --no-relay with --relay-url")
    dns = _given(_flag(ns, "dns_server")) or _cfg_str(section, "dns_server")
    discovery = True
    if dns is not None:
        if dns.lower() != "none":
            raise cfg.usage_error(DNS_SERVER_UNSUPPORTED)
        discovery = False
    proxy = _given(_flag(ns, "socks5_proxy")) or _cfg_str(section, "socks5_proxy")
    try:
        if proxy is not None:
            parse_socks5_proxy(proxy)
        check_proxy_for_relays(proxy, () if no_relay else relays)
    except ProxyError as exc:
        raise cfg.usage_error(str(exc)) from None
    bind = _given(_flag(ns, "bind_addr")) or _cfg_str(section, "bind_addr")
    if bind is not None:
        _check_ip_port(bind, "--bind-addr")
    return IrohNetwork(relay_urls=() if no_relay else relays, relays_disabled=no_relay, discovery=discovery,
                       bind_addr=bind, socks5_proxy=proxy)


def _read_text(path: str, missing: str) -> str:
    target = cfg.expand_path(path)
    try:
        return target.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise cfg.usage_error(missing) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise cfg.usage_error(f"Failed to read {target}: {getattr(exc, 'strerror', None) or exc}") from None


def load_secret_file(path: str) -> bytes:
    from tunnel_core.keys import KeyFormatError, parse_secret_key

    text = _read_text(path, f"Secret key file not found: {path}\nGenerate one with: "
                            f"tunnel generate-iroh-key --output {path}")
    if not text.strip():
        raise cfg.usage_error(f"Secret key file is empty: {path}")
    try:
        return parse_secret_key(text)
    except KeyFormatError as exc:
        raise cfg.usage_error(f"{exc} (in {path})") from None


def _secret(ns: argparse.Namespace, section: IrohSection, env_secret: str | None = None) -> bytes | None:
    """CLI pair, else ``TUNNEL_RS_SECRET`` (server, e4), else the config pair; one pair is never mixed with another."""
    from tunnel_core.keys import KeyFormatError, parse_secret_key

    cli_inline, cli_file = _flag(ns, "secret"), _given(_flag(ns, "secret_file"))
    if cli_inline is not None or cli_file is not None:
        inline, file = cli_inline, cli_file
    elif env_secret is not None:
        try:
            return parse_secret_key(env_secret)
        except KeyFormatError as exc:  # fixed wording: never the value itself
            raise cfg.usage_error(f"Invalid {iroh_env.SECRET}: {exc}") from None
    else:
        inline, file = section.values.get("secret"), _cfg_str(section, "secret_file")
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


def _server(
    ns: argparse.Namespace, section: IrohSection, network: IrohNetwork, warn: Callable[[str], None] | None,
    protocol: str = "e2", env: IrohEnv | None = None,
) -> IrohServerOptions:
    from tunnel_core.iroh_session.options import IrohServerOptions

    env = env or IrohEnv()
    secret = _secret(ns, section, env.secret)
    if secret is None:
        raise cfg.usage_error(
            "Server identity is required. Generate a key with:\n tunnel generate-iroh-key --output ./server.key\n"
            " Then pass --secret-file ./server.key or set [iroh].secret_file in server.toml."
        )
    sources = section.values.get("allowed_sources", {})
    if not isinstance(sources, Mapping):
        raise cfg.usage_error(f"Failed to parse config file: {section.path}: [iroh.allowed_sources] must be a table")
    tcp = cfg.cli_or_config(cfg.check_cli_cidrs(_flag(ns, "allowed_tcp") or [], "--allowed-tcp"),
                            cfg.check_cli_cidrs(_cfg_list(section, "tcp", sources, "iroh.allowed_sources"),
                                                "--allowed-tcp"))
    udp = cfg.cli_or_config(cfg.check_cli_cidrs(_flag(ns, "allowed_udp") or [], "--allowed-udp"),
                            cfg.check_cli_cidrs(_cfg_list(section, "udp", sources, "iroh.allowed_sources"),
                                                "--allowed-udp"))
    if not tcp and not udp:
        raise cfg.usage_error(
            "At least one --allowed-tcp or --allowed-udp network must be specified.\n"
            "Example: --allowed-tcp 127.0.0.0/8 --allowed-udp 10.0.0.0/8"
        )
    clients: tuple[bytes, ...] = ()
    keys: tuple[bytes, ...] = ()
    if protocol == "e4":
        keys = _authorized_keys(ns, section, env)
    else:
        if _given(_flag(ns, "authorized_keys_file")) is not None:  # a config value is just unused under e2
            raise cfg.usage_error("--authorized-keys-file needs --protocol e4 (e2 uses --allowed-clients)")
        clients = _allowed_clients(ns, section, warn)
    max_text = _flag(ns, "max_sessions")
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
                             authorized_keys=keys)


def _cfg_lines(section: IrohSection, key: str) -> str | None:
    """An inline key list: TOML/JSON list of lines (upstream's shape) or one multi-line string (a pasted file)."""
    value = section.values.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    raise cfg.usage_error(f"Failed to parse config file: {section.path}: [iroh] '{key}' must be a list of strings")


def _key_path(
    cli: Any, env_value: str | None, env_name: str, section: IrohSection, key: str
) -> tuple[str | None, str]:
    """CLI > environment > config for a key file path; the suffix names the variable so a "not found" error says
    where a path the user never typed came from."""
    cli_path = _given(cli)
    if cli_path is not None:
        return cli_path, ""
    if env_value is not None:
        return env_value, f" (from {env_name})"
    return _cfg_str(section, key), ""


def _authorized_keys(ns: argparse.Namespace, section: IrohSection, env: IrohEnv) -> tuple[bytes, ...]:
    """--authorized-keys-file > TUNNEL_RS_AUTHORIZED_KEYS_FILE > [iroh].authorized_keys_file / authorized_keys."""
    from tunnel_core.iroh_session.authkeys import parse_authorized_keys
    from tunnel_core.keys import KeyFormatError

    path, where = _key_path(
        _flag(ns, "authorized_keys_file"), env.authorized_keys_file, iroh_env.AUTHORIZED_KEYS_FILE,
        section, "authorized_keys_file",
    )
    if path is not None:
        text, origin = _read_text(path, f"Authorized keys file not found: {path}{where}"), path
    else:
        inline = _cfg_lines(section, "authorized_keys")
        if inline is None:
            raise cfg.usage_error(AUTH_KEYS_REQUIRED)
        text, origin = inline, "[iroh].authorized_keys"
    try:
        return parse_authorized_keys(text, origin)
    except KeyFormatError as exc:
        raise cfg.usage_error(str(exc)) from None


def _private_key(ns: argparse.Namespace, section: IrohSection, env: IrohEnv) -> bytes:
    """--private-key-file > TUNNEL_RS_PRIVATE_KEY_FILE > [iroh].private_key_file / private_key. Errors name where
    the key came from, never its content (authkeys' messages carry no key material)."""
    from tunnel_core.iroh_session.authkeys import parse_private_key
    from tunnel_core.keys import KeyFormatError

    path, where = _key_path(
        _flag(ns, "private_key_file"), env.private_key_file, iroh_env.PRIVATE_KEY_FILE, section, "private_key_file"
    )
    if path is not None:
        text = _read_text(path, f"Private key file not found: {path}{where}\nGenerate one with: "
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


def _allowed_clients(
    ns: argparse.Namespace, section: IrohSection, warn: Callable[[str], None] | None
) -> tuple[bytes, ...]:
    from tunnel_core.keys import KeyFormatError, parse_allowed_client, parse_allowed_clients

    cli_ids = [v for v in (_flag(ns, "allowed_clients") or []) if not v.strip().startswith("#")]
    cli_file = _given(_flag(ns, "allowed_clients_file"))
    if cli_ids or cli_file is not None:
        values, file = cli_ids, cli_file
    else:
        values, file = list(_cfg_list(section, "allowed_clients")), _cfg_str(section, "allowed_clients_file")
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
            text = _read_text(file, f"Allowed clients file not found: {file}")
            from_file = parse_allowed_clients(text, file)
            if not from_file and warn is not None:
                warn(f"Allowed clients file {file} lists no client: every client will be refused")
            ids.extend(from_file)
    except KeyFormatError as exc:
        raise cfg.usage_error(str(exc)) from None
    return tuple(dict.fromkeys(ids))


def _client(
    ns: argparse.Namespace, section: IrohSection, network: IrohNetwork, protocol: str = "e2",
    env: IrohEnv | None = None,
) -> IrohClientOptions:
    from tunnel_core.iroh_session.options import IrohClientOptions
    from tunnel_core.keys import KeyFormatError, parse_endpoint_id

    server_text = _given(_flag(ns, "server_node_id")) or _cfg_str(section, "server_node_id")
    if server_text is None and _cfg_str(section, "node_id") is not None:
        raise cfg.usage_error("[iroh] 'node_id' is no longer supported; rename it to 'server_node_id'.")
    if server_text is None:
        raise cfg.usage_error("server_node_id is required. Provide via --server-node-id or in config file.")
    try:
        server_id = parse_endpoint_id(server_text)
    except KeyFormatError as exc:
        raise cfg.usage_error(f"{exc} (got: {server_text})") from None
    cli_source = _given(_flag(ns, "source"))
    source = cli_source or _cfg_str(section, "request_source") or _cfg_str(section, "source")
    if source is None:
        raise cfg.usage_error("--source is required for iroh client mode. Specify the source to request from "
                              "server (e.g., --source tcp://127.0.0.1:22)")
    if cli_source is not None:
        cfg.check_cli_source(source)
    else:
        cfg.check_config_source(source)
    cli_target = _given(_flag(ns, "target"))
    target = cli_target or _cfg_str(section, "target")
    if target is None:
        raise cfg.usage_error("--target is required. Provide the local address to listen on "
                              "(e.g., --target 127.0.0.1:2222)")
    if cli_target is not None:
        cfg.check_cli_target(target)
    else:
        cfg.check_config_target(target)
    addrs = cfg.cli_or_config([_check_ip_port(a, "--server-addr") for a in (_flag(ns, "server_addr") or [])],
                              [_check_ip_port(a, "server_addrs") for a in _cfg_list(section, "server_addrs")])
    if not addrs and not network.discovery and (network.relays_disabled or not network.relay_urls):
        raise cfg.usage_error("No way to reach the server: give --server-addr or --relay-url "
                              "(discovery is off with --dns-server none)")
    seed = None
    if protocol == "e4":
        seed = _private_key(ns, section, env or IrohEnv())
    elif _given(_flag(ns, "private_key_file")) is not None:  # a config value is just unused under e2
        raise cfg.usage_error("--private-key-file needs --protocol e4 (e2 identifies clients by --secret-file)")
    return IrohClientOptions(server_id=server_id, source=source, target=target, secret_key=_secret(ns, section),
                             server_addrs=addrs, network=network, protocol=protocol, auth_seed=seed)


# ---------------------------------------------------------------------------------------------- key tools


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


# ---------------------------------------------------------------------------------------------- running


def dispatch(options: IrohCommand, runtime: str) -> None:
    """Key tools run anywhere; tunnels need asyncio (the binding is asyncio-only)."""
    if isinstance(options, GenerateKey):
        generate_key(options)
        return
    if isinstance(options, ShowNodeId):
        show_node_id(options)
        return
    if isinstance(options, GenerateAuthKey):
        generate_auth_key(options)
        return
    from tunnel_core.iroh_session.options import IrohServerOptions

    if runtime != "asyncio":
        raise TunnelError(f"iroh mode runs on asyncio only (the iroh binding has no {runtime} support)",
                          ExitCode.USAGE)
    import importlib

    runner = importlib.import_module("tunnel_iroh.runner")
    if isinstance(options, IrohServerOptions):
        runner.run_iroh_server(options)
    else:
        runner.run_iroh_client(options)
