"""A client's forwards from the command line (``--forward LISTEN=URL``, repeatable) and the config file
(``[[forward]]`` tables), merged with the seed's ``--source``/``--target`` (docs/forwards.md).

Precedence, as everywhere: the command line wins. Here the forward list is one value, so any ``--forward`` on the
command line replaces every forward of the file (its ``[[forward]]`` list and its ``source``/``target``).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

from tunnel_cli.checks import check_cli_source, check_cli_target, check_config_source, check_config_target
from tunnel_cli.config import ConfigFile, string_list, string_value, usage_error
from tunnel_cli.turn_settings import read_password_file
from tunnel_core.options import Forward, SocksListen

FORWARD_EXAMPLE = "LISTEN=URL, e.g. 127.0.0.1:2222=tcp://127.0.0.1:22 or 0.0.0.0:51820=udp://127.0.0.1:51820"
_FORWARD_KEYS = frozenset({"listen", "source"})


def parse_forward(spec: str) -> Forward:
    """One ``--forward`` value: the local listen address, '=', the source on the server's side."""
    listen, sep, source = spec.partition("=")
    if not sep or not listen.strip() or not source.strip():
        raise usage_error(f"Invalid forward '{spec}'. Expected format: {FORWARD_EXAMPLE}")
    listen, source = listen.strip(), source.strip()
    check_cli_target(listen)
    check_cli_source(source)
    return Forward(listen=listen, source=source)


def config_forwards(config: ConfigFile | None, key: str = "forward") -> tuple[Forward, ...]:
    """The file's ``[[forward]]`` (or ``[[reverse]]``) list: each table has ``listen`` and ``source``, both
    required."""
    if config is None or key not in config.data:
        return ()
    items = config.data[key]
    if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
        raise config.parse_error(f"'{key}' must be a list of tables ([[{key}]] with listen and source)")
    out = []
    for number, item in enumerate(items, 1):
        where = f"{key} #{number}"
        unknown = sorted(set(item) - _FORWARD_KEYS)
        if unknown:
            raise usage_error(f"[[{key}]] #{number}: unknown key '{unknown[0]}' (use 'listen' and 'source')")
        listen = string_value(config, item, where, "listen")
        source = string_value(config, item, where, "source")
        if not listen or not source:
            raise usage_error(f"[[{key}]] #{number} needs both 'listen' and 'source'")
        check_config_target(listen)
        check_config_source(source)
        out.append(Forward(listen=listen, source=source))
    return tuple(out)


def client_forwards(
    cli_source: str | None, cli_target: str | None, source: str | None, target: str | None,
    cli: Sequence[str], config: ConfigFile | None,
) -> list[Forward]:
    """Every forward of the client, first one first; empty when the seed's own checks must speak (a missing
    ``--source`` or ``--target``). ``source``/``target`` are the seed flags merged with the file."""
    parsed = [parse_forward(spec) for spec in cli]
    if parsed:  # the command line replaces every forward of the file
        if (cli_source is None) != (cli_target is None):
            return []
        seed = [Forward(listen=cli_target, source=cli_source)] if cli_source and cli_target else []
        return seed + parsed
    file_forwards = config_forwards(config)
    if source is not None and target is not None:
        return [Forward(listen=target, source=source), *file_forwards]
    if source is None and target is None:
        return list(file_forwards)
    return []


#: Top-level config keys of the dynamic and reverse forwards (every mode; docs/forwards.md).
CLIENT_EXTRA_KEYS = frozenset({"socks5", "socks5_user", "socks5_password_file", "reverse"})
SERVER_EXTRA_KEYS = frozenset({"allow_listen"})
EXTRA_KEYS = CLIENT_EXTRA_KEYS | SERVER_EXTRA_KEYS | {"forward"}


def add_client_extra_args(parser: argparse.ArgumentParser) -> None:
    """The dynamic and reverse forwards' flags, the same in every mode (docs/forwards.md)."""
    parser.add_argument("--socks5", metavar="HOST:PORT",
                        help="also listen here as a SOCKS5 proxy (socks5h: the server resolves names and checks "
                             "every target with its allowlist), e.g. 127.0.0.1:1080")
    parser.add_argument("--socks5-user", metavar="USER", help="require this username on the SOCKS5 listener")
    parser.add_argument("--socks5-password-file", metavar="PATH",
                        help="file whose first line is the SOCKS5 password (with --socks5-user)")
    parser.add_argument("-R", "--reverse", metavar="LISTEN=URL", action="append", default=[],
                        help="reverse forward (repeatable): the server listens on LISTEN and carries each "
                             "connection to URL (tcp://) on this side; needs the server's --allow-listen")


def add_server_extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-listen", metavar="IP:PORT", action="append", default=[],
                        help="let clients' reverse forwards listen here (repeatable, exact address); "
                             "see docs/forwards.md")


def check_extra_keys(config: ConfigFile | None, role: str) -> None:
    """A server file with a client's forward keys, or the reverse, is refused (exit 2), as ``[[forward]]`` is."""
    if config is None:
        return
    if role == "server":
        wrong = sorted(k for k in config.data if k in CLIENT_EXTRA_KEYS)
        if wrong:
            raise usage_error(f"'{wrong[0]}' is a client-only key. Servers use 'allow_listen' for reverse forwards.")
    else:
        if "allow_listen" in config.data:
            raise usage_error("'allow_listen' is a server-only key. Clients use [[reverse]] to ask for one.")


def _config_str(config: ConfigFile | None, key: str) -> str | None:
    if config is None:
        return None
    value = string_value(config, config.data, "top level", key)
    return value.strip() if value is not None and value.strip() else None


def socks_listen(namespace: argparse.Namespace, config: ConfigFile | None = None) -> SocksListen | None:
    """The --socks5 listener (flag, else the file's ``socks5``), checked; None without one. Each of the three
    values is taken from the command line when given there, else from the file."""
    cli_listen = getattr(namespace, "socks5", None)
    listen = cli_listen if cli_listen is not None else _config_str(config, "socks5")
    user = getattr(namespace, "socks5_user", None)
    user = user if user is not None else _config_str(config, "socks5_user")
    password_file = getattr(namespace, "socks5_password_file", None)
    password_file = password_file if password_file is not None else _config_str(config, "socks5_password_file")
    if listen is None:
        if user is not None or password_file is not None:
            raise usage_error("--socks5-user and --socks5-password-file need --socks5")
        return None
    if cli_listen is not None:
        check_cli_target(listen.strip())
    else:
        check_config_target(listen.strip())
    if (user is None) != (password_file is None):
        raise usage_error("--socks5-user and --socks5-password-file go together")
    credentials = None
    if user is not None and password_file is not None:
        password = read_password_file(password_file, "--socks5-password-file")
        if not user or len(user.encode()) > 255 or len(password.encode()) > 255:
            raise usage_error("SOCKS5 username and password must be 1..255 bytes")
        credentials = (user, password)
    return SocksListen(listen=listen.strip(), credentials=credentials)


def reverse_forwards(namespace: argparse.Namespace, config: ConfigFile | None = None) -> tuple[Forward, ...]:
    """``--reverse`` (repeatable), else the file's ``[[reverse]]`` list (``listen`` on the server, ``source`` the
    client-side tcp:// target); the command line's list replaces the file's."""
    cli = getattr(namespace, "reverse", None) or []
    if cli:
        return tuple(parse_forward(spec) for spec in cli)
    return config_forwards(config, "reverse")


def allow_listen(namespace: argparse.Namespace, config: ConfigFile | None = None) -> tuple[str, ...]:
    """The server's ``--allow-listen`` list, else the file's ``allow_listen``; each one checked."""
    cli = getattr(namespace, "allow_listen", None) or []
    if cli:
        return tuple(check_allow_listen(text) for text in cli)
    if config is None or "allow_listen" not in config.data:
        return ()
    return tuple(check_allow_listen(text) for text in string_list(config, config.data, "top level", "allow_listen"))


def check_allow_listen(text: str) -> str:
    """One ``--allow-listen``: an IP literal and a port 1..65535 (a name or port 0 could match more than meant)."""
    import ipaddress

    from tunnel_core.policy import PolicyError, parse_target

    try:
        host, port = parse_target(text.strip())
        ipaddress.ip_address(host)
    except (PolicyError, ValueError):
        raise usage_error(f"Invalid --allow-listen '{text}'. Expected format: IP:PORT (e.g. 127.0.0.1:8080)") from None
    if port == 0:
        raise usage_error(f"Invalid --allow-listen '{text}': port 0 is not an address a client can ask for")
    return text.strip()
