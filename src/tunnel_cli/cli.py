"""The ``tunnel`` and ``tunnel-rs-ice`` command lines.

Parsing, config loading and every validation happen here, before the runner is imported: ``tunnel --help``
and a typo in a flag must answer in milliseconds and never load aioquic. Every failure is one line on stderr
(``Error: <message>``) with a documented exit code (tunnel_core.options.ExitCode), never a traceback: users
paste these lines into issues and scripts branch on the codes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence

import attrs

from tunnel_cli import checks, output, precedence
from tunnel_cli import config as cfg
from tunnel_cli.fdlimit import raise_open_files_limit
from tunnel_cli.forwards import (
    add_client_extra_args,
    add_server_extra_args,
    allow_listen,
    check_extra_keys,
    client_forwards,
    reverse_forwards,
    socks_listen,
)
from tunnel_cli.ice_flags import add_ice_args, ice_options
from tunnel_cli.manual_section import ManualSection, manual_section
from tunnel_cli.parser import (
    Parser,
    VersionAction,
    add_config_args,
    config_file_mode,
    given,
    insert_mode_word,
    stdin_config_wanted,
)
from tunnel_cli.program import TUNNEL, TUNNEL_RS, TUNNEL_RS_ICE, Program
from tunnel_core.errors import RemoteProtocolError
from tunnel_core.options import (
    DEFAULT_RECONNECT_TIMEOUT,
    ExitCode,
    IceOptions,
    ManualClientOptions,
    ManualServerOptions,
    TunnelError,
)

__all__ = ["TUNNEL", "TUNNEL_RS", "TUNNEL_RS_ICE", "Program", "build_options", "run"]

Options = ManualServerOptions | ManualClientOptions


MANUAL_STEPS = """\
Manual signaling (copy/paste, client first):
  1. Start the client: it prints an OFFER block (BEGIN/END markers included).
  2. Paste the client's OFFER into the server.
  3. The server prints an ANSWER block.
  4. Paste the server's ANSWER into the client; the tunnel comes up.
"""


# ---------------------------------------------------------------------------------------------- argparse


def build_parser(program: Program) -> tuple[Parser, dict[tuple[str, str | None], Parser]]:
    """The parser plus each (role, mode word) sub-parser, so late errors can name the right ``--help``."""
    name = program.name
    default_dir = "~/.config/tunnel-rs/"
    parser = Parser(
        prog=name,
        description="Secure peer-to-peer TCP/UDP port forwarding with NAT traversal (ICE + QUIC).",
        epilog=f"Run '{name} server --help' or '{name} client --help' for the modes and their flags."
        + ("\nRun 'tunnel relay --help' to run an iroh-compatible relay server." if not program.ice else "")
        + f"\nKey tools: {program.name} generate-nostr-key --output PATH, {program.name} show-npub --nsec-file PATH"
        + (f", {program.name} generate-iroh-key --output PATH, {program.name} show-iroh-node-id --secret-file PATH"
           if not program.ice else ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=VersionAction, help="print the version and exit")
    roles = parser.add_subparsers(dest="role", metavar="COMMAND", parser_class=Parser)
    parsers: dict[tuple[str, str | None], Parser] = {}
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
        add_config_args(role_parser, after_mode=False, default_file=default_file)
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
                add_config_args(mode_parser, after_mode=True, default_file=default_file)
                if role == "server":
                    mode_parser.add_argument(
                        "--allowed-tcp", metavar="CIDR", action="append", default=[],
                        help="networks clients may reach over TCP (repeatable), e.g. 127.0.0.0/8",
                    )
                    mode_parser.add_argument(
                        "--allowed-udp", metavar="CIDR", action="append", default=[],
                        help="networks clients may reach over UDP (repeatable), e.g. 10.0.0.0/8",
                    )
                    add_server_extra_args(mode_parser)
                else:
                    mode_parser.add_argument(
                        "-s", "--source", metavar="URL",
                        help="service to request on the server's side: tcp://host:port or udp://host:port",
                    )
                    mode_parser.add_argument(
                        "-t", "--target", metavar="HOST:PORT",
                        help="local address to listen on, e.g. 127.0.0.1:2222",
                    )
                    mode_parser.add_argument(
                        "-L", "--forward", metavar="LISTEN=URL", action="append", default=[],
                        help="one more forward over the same tunnel (repeatable), e.g. "
                             "127.0.0.1:8080=tcp://127.0.0.1:80; see docs/forwards.md",
                    )
                    add_client_extra_args(mode_parser)
                mode_parser.add_argument(  # issue 15; docs/reconnect.md
                    "--reconnect-timeout", metavar="DURATION",
                    help=f"when the peer stops answering, hold the tunnel (QUIC and its streams) and look for a "
                         f"path again for up to this long (default {DEFAULT_RECONNECT_TIMEOUT:g}s, at most the "
                         f"QUIC idle limit of 300s; e.g. 90s, 5m; 0 = exit 11 when ICE consent is lost)",
                )
                add_ice_args(mode_parser)
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

    # --config-stdin is read once, before routing: the JSON's "mode" says which mode's module builds the options.
    stdin_config = None
    if stdin_config_wanted(argv):
        from tunnel_cli.stdin_config import read_stdin_config

        stdin_config = read_stdin_config()
    claimed = iroh_cmd.claim(argv, program=program, warn=warn, stdin_config=stdin_config)
    if claimed is not None:
        return claimed  # type: ignore[return-value]
    from tunnel_cli import nostr_cmd  # ice-nostr mode and its key tools parse their own flags (tunnel_cli.nostr_cmd)

    claimed_nostr = nostr_cmd.claim(argv, program=program, warn=warn, interfaces=interfaces,
                                    stdin_config=stdin_config)
    if claimed_nostr is not None:
        return claimed_nostr  # type: ignore[return-value]
    parser, parsers = build_parser(program)
    argv = list(argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    if first in ("server", "client"):
        rest = argv[argv.index(first) + 1:]
        file_mode = stdin_config.mode if stdin_config is not None else config_file_mode(first, rest, program.ice)
        if file_mode is not None and cfg.MODE_ALIASES.get(file_mode) == "manual":
            argv = insert_mode_word(argv, "manual")  # the file names the mode: its flags may follow without it
    namespace, extras = parser.parse_known_args(argv)
    role: str | None = namespace.role
    if role is None:
        parser.error("a command is required: server or client")
    word: str | None = namespace.mode
    if extras:
        parsers[(role, word)].error(f"unrecognized arguments: {' '.join(extras)}")

    config = cfg.choose_config(namespace.config, namespace.default_config, namespace.config_stdin, role,
                               ice=program.ice, stdin_config=stdin_config)
    if config is not None:
        cfg.check_role(config, role)
    mode = cfg.resolve_mode(word, config, program.modes)
    if mode != "manual":  # nostr and iroh command lines were claimed above by their own modules
        raise cfg.usage_error(f"Unknown mode '{mode}'. Valid modes: {', '.join(program.modes)}")

    section = (
        manual_section(config, role, warn=warn, interfaces=interfaces)
        if config is not None else ManualSection()
    )
    ice = ice_options(namespace, section, interfaces)
    check_extra_keys(config, role)
    if role == "server":
        return "server manual", _server_options(namespace, section, ice, config)
    return "client manual", _client_options(namespace, section, ice, config)



def _server_options(
    namespace: argparse.Namespace, section: ManualSection, ice: IceOptions, config: cfg.ConfigFile | None
) -> ManualServerOptions:
    cli_tcp = checks.check_cli_cidrs(getattr(namespace, "allowed_tcp", []), "--allowed-tcp")
    cli_udp = checks.check_cli_cidrs(getattr(namespace, "allowed_udp", []), "--allowed-udp")
    allowed_tcp = precedence.cli_or_config(cli_tcp, section.allowed_tcp)
    allowed_udp = precedence.cli_or_config(cli_udp, section.allowed_udp)
    listen_allowed = allow_listen(namespace, config)
    if not allowed_tcp and not allowed_udp and not listen_allowed:
        raise cfg.usage_error(
            "At least one of --allowed-tcp or --allowed-udp is required for custom-manual server"
        )
    return ManualServerOptions(allowed_tcp=allowed_tcp, allowed_udp=allowed_udp, ice=ice,
                               allow_listen=listen_allowed, reconnect_timeout=_reconnect_timeout(namespace, section))


def _reconnect_timeout(namespace: argparse.Namespace, section: ManualSection) -> float:
    text = given(getattr(namespace, "reconnect_timeout", None))
    if text is not None:
        return checks.parse_duration(text, "--reconnect-timeout")
    return DEFAULT_RECONNECT_TIMEOUT if section.reconnect_timeout is None else section.reconnect_timeout


def _client_options(
    namespace: argparse.Namespace, section: ManualSection, ice: IceOptions, config: cfg.ConfigFile | None
) -> ManualClientOptions:
    options = _client_forwards(namespace, section, ice, config)
    # A config read from stdin shares it with the blocks: no fresh paste there (docs/reconnect.md).
    return attrs.evolve(options, reconnect_timeout=_reconnect_timeout(namespace, section),
                        fresh_paste=not getattr(namespace, "config_stdin", False))


def _client_forwards(
    namespace: argparse.Namespace, section: ManualSection, ice: IceOptions, config: cfg.ConfigFile | None
) -> ManualClientOptions:
    cli_source = given(getattr(namespace, "source", None))
    cli_target = given(getattr(namespace, "target", None))
    source = cli_source or section.source
    target = cli_target or section.target
    if cli_source is not None:
        checks.check_cli_source(cli_source)
    if cli_target is not None:
        checks.check_cli_target(cli_target)
    forwards = client_forwards(cli_source, cli_target, source, target, getattr(namespace, "forward", []), config)
    socks = socks_listen(namespace, config)
    reverse = reverse_forwards(namespace, config)
    if forwards:
        first, *rest = forwards
        return ManualClientOptions(source=first.source, target=first.listen, ice=ice, extra_forwards=tuple(rest),
                                   socks5=socks, reverse=reverse)
    if (socks is not None or reverse) and source is None and target is None:
        return ManualClientOptions(source=None, target=None, ice=ice, socks5=socks, reverse=reverse)
    if source is None:
        raise cfg.usage_error(
            "--source is required for manual client. Specify the source to request from server "
            "(e.g., --source tcp://127.0.0.1:22)"
        )
    if target is None:
        raise cfg.usage_error(
            "--target is required. Specify local address to listen on (e.g., --target 127.0.0.1:2222)"
        )
    return ManualClientOptions(source=source, target=target, ice=ice)



# ---------------------------------------------------------------------------------------------- running


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
        _command, options = build_options(args, program=program, warn=output.warn)
        output.configure_logging()
        raise_open_files_limit()
        _dispatch(options, runtime)
    except SystemExit as exc:  # --help / --version (argparse), or a runner that exits on purpose
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        output.error(str(exc.code))
        return int(ExitCode.GENERAL)
    except TunnelError as exc:
        output.error(exc.message)
        return int(exc.exit_code)
    except RemoteProtocolError as exc:
        # Bad outside input (a pasted block, a peer's message): the core words these for users already.
        output.error(str(exc))
        return int(ExitCode.GENERAL)
    except KeyboardInterrupt:
        # Ctrl+C is how a user stops a tunnel: a normal stop, not a failure.
        print("Interrupted; tunnel stopped.", file=sys.stderr, flush=True)
        return int(ExitCode.OK)
    except Exception as exc:
        output.error(f"internal error: {type(exc).__name__}: {exc}")
        return int(ExitCode.GENERAL)
    return int(ExitCode.OK)
