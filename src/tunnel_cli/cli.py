"""The ``tunnel`` and ``tunnel-rs-ice`` command lines.

Parsing, config loading and every validation happen here, before the runner is imported: ``tunnel --help``
and a typo in a flag must answer in milliseconds and never load aioquic. Every failure is one line on stderr
(``Error: <message>``) with a documented exit code (tunnel_core.options.ExitCode), never a traceback: users
paste these lines into issues and scripts branch on the codes.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

import attrs

from tunnel_cli import config as cfg
from tunnel_cli.fdlimit import raise_open_files_limit
from tunnel_core.errors import RemoteProtocolError
from tunnel_core.options import (
    CONGESTION_CONTROLLERS,
    DEFAULT_CONGESTION,
    ExitCode,
    IceOptions,
    ManualClientOptions,
    ManualServerOptions,
    TunnelError,
)

Options = ManualServerOptions | ManualClientOptions


@attrs.frozen
class Program:
    """What differs between the two entry points: the name users see, the modes offered, the default files."""

    name: str
    ice: bool
    #: Canonical modes this binary knows (implemented or not), in the order error messages list them.
    modes: tuple[str, ...]
    #: Subcommand words per canonical mode (E3 name first, then the E2 ``ice-`` spelling).
    words: tuple[tuple[str, tuple[str, ...]], ...]


TUNNEL = Program(
    name="tunnel",
    ice=False,
    modes=("iroh", "manual", "nostr"),
    words=(("manual", ("ice-manual",)), ("nostr", ("ice-nostr",)), ("iroh", ())),
)
TUNNEL_RS_ICE = Program(
    name="tunnel-rs-ice",
    ice=True,
    modes=("manual", "nostr"),
    words=(("manual", ("ice-manual",)), ("nostr", ("ice-nostr",))),
)

MANUAL_STEPS = """\
Manual signaling (copy/paste, client first):
  1. Start the client: it prints an OFFER block (BEGIN/END markers included).
  2. Paste the client's OFFER into the server.
  3. The server prints an ANSWER block.
  4. Paste the server's ANSWER into the client; the tunnel comes up.
"""


# ---------------------------------------------------------------------------------------------- argparse


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so its errors get our one-line format."""

    def error(self, message: str) -> NoReturn:
        raise TunnelError(f"{message} (see '{self.prog} --help')", ExitCode.USAGE)


class _VersionAction(argparse.Action):
    """``--version`` that reads package metadata only when asked (importlib.metadata costs start-up time)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("tunnel")
        except PackageNotFoundError:
            text = "unknown"
        print(f"{parser.prog} {text}")
        parser.exit(0)


def _add_config_args(parser: argparse.ArgumentParser, *, after_mode: bool, default_file: str) -> None:
    """-c/--default-config are global on server/client: accepted before and after the mode word.

    The copy on the mode parser defaults to SUPPRESS so that, when absent, it does not overwrite a value given
    before the mode word (argparse copies every sub-parser default onto the shared namespace).
    """
    parser.add_argument(
        "-c", "--config", metavar="FILE", default=argparse.SUPPRESS if after_mode else None,
        help="read settings from this TOML file (a leading ~/ is expanded); the command line overrides it",
    )
    parser.add_argument(
        "--default-config", action="store_true", default=argparse.SUPPRESS if after_mode else False,
        help=f"read the default config file, {default_file}",
    )


def _add_ice_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stun-server", metavar="HOST:PORT", action="append", default=[],
        help="STUN server for the server-reflexive candidate (repeatable; replaces the config list)",
    )
    parser.add_argument(
        "--no-stun", action="store_true",
        help="host candidates only: no STUN traffic at all (LAN or offline use)",
    )
    parser.add_argument(
        "--host-candidate", metavar="IP|IFACE", action="append", default=[],
        help="offer only this local address or interface as host candidate (repeatable); "
        "default: every non-loopback interface, loopback only when there is nothing else",
    )
    parser.add_argument(
        "--turn-server", metavar="turn:HOST:PORT", action="append", default=[],
        help="TURN server for relay candidates (repeatable; replaces the config list); needs --turn-user and "
        "--turn-password or --turn-password-file",
    )
    parser.add_argument("--turn-user", metavar="USER", help="TURN long-term credential user name")
    parser.add_argument(
        "--turn-password", metavar="PASSWORD",
        help="TURN password (visible to other local users in the process list: prefer --turn-password-file)",
    )
    parser.add_argument(
        "--turn-password-file", metavar="PATH", help="read the TURN password from the first line of this file",
    )
    parser.add_argument(
        "--packet-size", metavar="N",
        help=f"QUIC datagram size in bytes, {cfg.PACKET_SIZE_MIN}..{cfg.PACKET_SIZE_MAX} "
        "(default: large on loopback, 1350 elsewhere)",
    )
    parser.add_argument(  # issue 13; docs/congestion.md
        "--congestion", choices=CONGESTION_CONTROLLERS,
        help=f"QUIC congestion controller (default: {DEFAULT_CONGESTION}; bbr tolerates random loss)",
    )


def build_parser(program: Program) -> tuple[_Parser, dict[tuple[str, str | None], _Parser]]:
    """The parser plus each (role, mode word) sub-parser, so late errors can name the right ``--help``."""
    name = program.name
    default_dir = "~/.config/tunnel-rs/"
    parser = _Parser(
        prog=name,
        description="Secure peer-to-peer TCP/UDP port forwarding with NAT traversal (ICE + QUIC).",
        epilog=f"Run '{name} server --help' or '{name} client --help' for the modes and their flags."
        + ("\nRun 'tunnel relay --help' to run an iroh-compatible relay server." if not program.ice else "")
        + f"\nKey tools: {program.name} generate-nostr-key --output PATH, {program.name} show-npub --nsec-file PATH"
        + (f", {program.name} generate-iroh-key --output PATH, {program.name} show-iroh-node-id --secret-file PATH"
           if not program.ice else ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    roles = parser.add_subparsers(dest="role", metavar="COMMAND", parser_class=_Parser)
    parsers: dict[tuple[str, str | None], _Parser] = {}
    for role in ("server", "client"):
        default_file = default_dir + cfg.default_config_path(role, ice=program.ice).name
        if role == "server":
            role_help = "serve: let a client reach allowed TCP/UDP services on this side"
            epilog = (
                f"Examples:\n  {name} server -c server{'_ice' if program.ice else ''}.toml\n"
                f"  {name} server manual --allowed-tcp 127.0.0.0/8\n"
            )
        else:
            role_help = "connect: expose a service of the server's side on a local port"
            epilog = (
                "Manual mode prints an OFFER; paste the server's ANSWER to continue.\n\n"
                f"Example:\n  {name} client manual --source tcp://127.0.0.1:22 --target 127.0.0.1:2222\n"
            )
        role_parser = roles.add_parser(
            role, help=role_help,
            description=f"{role_help[0].upper()}{role_help[1:]}.\nThe mode may come from the config's "
            "'mode' field instead of a subcommand.",
            epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_config_args(role_parser, after_mode=False, default_file=default_file)
        parsers[(role, None)] = role_parser
        modes = role_parser.add_subparsers(dest="mode", metavar="MODE", required=False)
        for mode, aliases in program.words:
            if mode == "manual":
                mode_parser = modes.add_parser(
                    mode, aliases=list(aliases),
                    help="ICE + QUIC with copy/paste signaling",
                    description="ICE + QUIC with copy/paste signaling: the client's OFFER and the server's\n"
                    "ANSWER are pasted by hand, no server in between.",
                    epilog=MANUAL_STEPS, formatter_class=argparse.RawDescriptionHelpFormatter,
                )
                _add_config_args(mode_parser, after_mode=True, default_file=default_file)
                if role == "server":
                    mode_parser.add_argument(
                        "--allowed-tcp", metavar="CIDR", action="append", default=[],
                        help="networks clients may reach over TCP (repeatable), e.g. 127.0.0.0/8",
                    )
                    mode_parser.add_argument(
                        "--allowed-udp", metavar="CIDR", action="append", default=[],
                        help="networks clients may reach over UDP (repeatable), e.g. 10.0.0.0/8",
                    )
                else:
                    mode_parser.add_argument(
                        "-s", "--source", metavar="URL",
                        help="service to request on the server's side: tcp://host:port or udp://host:port",
                    )
                    mode_parser.add_argument(
                        "-t", "--target", metavar="HOST:PORT",
                        help="local address to listen on, e.g. 127.0.0.1:2222",
                    )
                _add_ice_args(mode_parser)
            else:
                mode_parser = modes.add_parser(
                    mode, aliases=list(aliases), help=f"{mode} mode (see '{mode} --help')",
                )
            for word in (mode, *aliases):
                parsers[(role, word)] = mode_parser
    return parser, parsers


# ---------------------------------------------------------------------------------------------- options


def build_options(
    argv: Sequence[str],
    *,
    program: Program = TUNNEL,
    warn: Callable[[str], None] | None = None,
    interfaces: Callable[[], Iterable[str]] | None = None,
) -> tuple[str, Options]:
    """Parse, load the config, validate and merge: everything that happens before the runner starts.

    Returns ``("server manual" | "client manual", options)``. ``--help``/``--version`` raise SystemExit(0)
    as argparse does; every other problem raises TunnelError. ``interfaces`` replaces the OS interface list.
    """
    from tunnel_cli import iroh_cmd  # iroh mode and its key tools parse their own flags (tunnel_cli.iroh_cmd)

    claimed = iroh_cmd.claim(argv, program=program, warn=warn)
    if claimed is not None:
        return claimed  # type: ignore[return-value]
    from tunnel_cli import nostr_cmd  # ice-nostr mode and its key tools parse their own flags (tunnel_cli.nostr_cmd)

    claimed_nostr = nostr_cmd.claim(argv, program=program, warn=warn, interfaces=interfaces)
    if claimed_nostr is not None:
        return claimed_nostr  # type: ignore[return-value]
    parser, parsers = build_parser(program)
    namespace, extras = parser.parse_known_args(list(argv))
    role: str | None = namespace.role
    if role is None:
        parser.error("a command is required: server or client")
    word: str | None = namespace.mode
    if extras:
        parsers[(role, word)].error(f"unrecognized arguments: {' '.join(extras)}")

    config_file = namespace.config
    if config_file is not None and namespace.default_config:
        raise cfg.usage_error("Cannot use both -c/--config and --default-config")
    path = None
    if config_file is not None:
        path = cfg.expand_path(config_file)
    elif namespace.default_config:
        path = cfg.default_config_path(role, ice=program.ice)
    config = cfg.load_config(path) if path is not None else None
    if config is not None:
        cfg.check_role(config, role)
    mode = cfg.resolve_mode(word, config, program.modes)
    if mode != "manual":  # nostr and iroh command lines were claimed above by their own modules
        raise cfg.usage_error(f"Unknown mode '{mode}'. Valid modes: {', '.join(program.modes)}")

    section = (
        cfg.manual_section(config, role, warn=warn, interfaces=interfaces)
        if config is not None else cfg.ManualSection()
    )
    ice = _ice_options(namespace, section, interfaces)
    if role == "server":
        return "server manual", _server_options(namespace, section, ice)
    return "client manual", _client_options(namespace, section, ice)


def _ice_options(
    namespace: argparse.Namespace, section: cfg.IceSection, interfaces: Callable[[], Iterable[str]] | None
) -> IceOptions:
    cli_stun: list[str] = getattr(namespace, "stun_server", [])
    no_stun: bool = getattr(namespace, "no_stun", False)
    stun = cfg.resolve_stun_servers(no_stun=no_stun, cli=cli_stun, config=section.stun_servers)
    for server in cli_stun:
        cfg.check_stun_server(server, "--stun-server")
    cli_hosts = [cfg.check_host_candidate(host, "--host-candidate", interfaces)
                 for host in getattr(namespace, "host_candidate", [])]
    packet_text: str | None = getattr(namespace, "packet_size", None)
    packet_size = cfg.parse_cli_packet_size(packet_text) if packet_text is not None else section.packet_size
    cli_turn = [cfg.check_turn_server(server, "--turn-server") for server in getattr(namespace, "turn_server", [])]
    turn_servers = cfg.cli_or_config(cli_turn, section.turn_servers)
    turn_user, turn_password = cfg.resolve_turn_credentials(
        servers=turn_servers,
        cli_user=_given(getattr(namespace, "turn_user", None)),
        cli_password=getattr(namespace, "turn_password", None),
        cli_password_file=_given(getattr(namespace, "turn_password_file", None)),
        section=section,
    )
    return IceOptions(
        stun_servers=stun,
        host_candidates=cfg.cli_or_config(cli_hosts, section.host_candidates),
        packet_size=packet_size,
        congestion=getattr(namespace, "congestion", None) or section.congestion,
        turn_servers=turn_servers,
        turn_user=turn_user,
        turn_password=turn_password,
    )


def _server_options(
    namespace: argparse.Namespace, section: cfg.ManualSection, ice: IceOptions
) -> ManualServerOptions:
    cli_tcp = cfg.check_cli_cidrs(getattr(namespace, "allowed_tcp", []), "--allowed-tcp")
    cli_udp = cfg.check_cli_cidrs(getattr(namespace, "allowed_udp", []), "--allowed-udp")
    allowed_tcp = cfg.cli_or_config(cli_tcp, section.allowed_tcp)
    allowed_udp = cfg.cli_or_config(cli_udp, section.allowed_udp)
    if not allowed_tcp and not allowed_udp:
        raise cfg.usage_error(
            "At least one of --allowed-tcp or --allowed-udp is required for custom-manual server"
        )
    return ManualServerOptions(allowed_tcp=allowed_tcp, allowed_udp=allowed_udp, ice=ice)


def _client_options(
    namespace: argparse.Namespace, section: cfg.ManualSection, ice: IceOptions
) -> ManualClientOptions:
    cli_source = _given(getattr(namespace, "source", None))
    cli_target = _given(getattr(namespace, "target", None))
    source = cli_source or section.source
    target = cli_target or section.target
    if source is None:
        raise cfg.usage_error(
            "--source is required for manual client. Specify the source to request from server "
            "(e.g., --source tcp://127.0.0.1:22)"
        )
    if target is None:
        raise cfg.usage_error(
            "--target is required. Specify local address to listen on (e.g., --target 127.0.0.1:2222)"
        )
    if cli_source is not None:
        cfg.check_cli_source(cli_source)
    if cli_target is not None:
        cfg.check_cli_target(cli_target)
    return ManualClientOptions(source=source, target=target, ice=ice)


def _given(value: str | None) -> str | None:
    """Whitespace-only flags count as absent (reference 1.5), letting the config fill them."""
    if value is None or not value.strip():
        return None
    return value.strip()


# ---------------------------------------------------------------------------------------------- running


def _one_line(message: str) -> str:
    """Some reference messages span lines; ours must not, so grep and log scrapers see the whole error."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def _error(message: str) -> None:
    print(f"Error: {_one_line(message)}", file=sys.stderr, flush=True)


def _warn(message: str) -> None:
    print(f"Warning: {_one_line(message)}", file=sys.stderr, flush=True)


def configure_logging() -> None:
    """Status goes to stderr through logging (stdout carries only the OFFER/ANSWER blocks people paste).

    ``TUNNEL_LOG`` (debug, info, warning, error) sets our loggers' level, like upstream's RUST_LOG; other
    libraries stay at warning so aioquic/asyncio chatter does not bury the tunnel's own messages.
    """
    import logging

    level_name = os.environ.get("TUNNEL_LOG", "info").strip().upper()
    level = logging.getLevelName(level_name)
    if not isinstance(level, int):
        level = logging.INFO
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    for name in ("tunnel_core", "tunnel_asyncio", "tunnel_trio", "tunnel_gevent", "tunnel_cli"):
        logging.getLogger(name).setLevel(level)


RUNTIMES = ("asyncio", "trio", "gevent")


def _dispatch(options: Options, runtime: str) -> None:
    """Import the runner only now: aioquic and friends cost a few hundred milliseconds to load."""
    import importlib

    from tunnel_cli import iroh_cmd

    if iroh_cmd.handles(options):
        iroh_cmd.dispatch(options, runtime)  # type: ignore[arg-type]
        return
    from tunnel_cli import nostr_cmd

    if nostr_cmd.handles(options):
        nostr_cmd.dispatch(options, runtime)  # type: ignore[arg-type]
        return
    manual = importlib.import_module(f"tunnel_{runtime}.manual")
    if isinstance(options, ManualServerOptions):
        manual.run_manual_server(options)
    else:
        manual.run_manual_client(options)


def run(argv: Sequence[str] | None = None, *, program: Program = TUNNEL, runtime: str = "asyncio") -> int:
    """Run one command and return its exit code; never raises, never prints a traceback."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["relay"] and program is TUNNEL:
        # The relay server is its own program with its own flags (tunnel_cli.relay_cmd); asyncio only.
        from tunnel_cli import relay_cmd

        raise_open_files_limit()  # a relay holds one connection per client
        return relay_cmd.run(args[1:])
    try:
        _command, options = build_options(args, program=program, warn=_warn)
        configure_logging()
        raise_open_files_limit()
        _dispatch(options, runtime)
    except SystemExit as exc:  # --help / --version (argparse), or a runner that exits on purpose
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        _error(str(exc.code))
        return int(ExitCode.GENERAL)
    except TunnelError as exc:
        _error(exc.message)
        return int(exc.exit_code)
    except RemoteProtocolError as exc:
        # Bad outside input (a pasted block, a peer's message): the core words these for users already.
        _error(str(exc))
        return int(ExitCode.GENERAL)
    except KeyboardInterrupt:
        # Ctrl+C is how a user stops a tunnel: a normal stop, not a failure.
        print("Interrupted; tunnel stopped.", file=sys.stderr, flush=True)
        return int(ExitCode.OK)
    except Exception as exc:
        _error(f"internal error: {type(exc).__name__}: {exc}")
        return int(ExitCode.GENERAL)
    return int(ExitCode.OK)
