"""iroh mode on the command line: ``tunnel server|client iroh``, the ``tunnel-rs`` entry point (iroh only), the
``[iroh]`` config section and the key tools ``generate-iroh-key`` / ``show-iroh-node-id``.

Kept apart from tunnel_cli.cli (which only asks ``claim`` whether a command line is ours) so the iroh flags,
their checks and their reference wording live in one place. Like the rest of the CLI, nothing here imports the
iroh binding: parsing and validation answer in milliseconds and print one line on failure.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from tunnel_cli import config as cfg
from tunnel_cli import iroh_env
from tunnel_cli.iroh_env import IrohEnv
from tunnel_cli.iroh_keytools import (
    GenerateAuthKey,
    GenerateKey,
    ShowNodeId,
    generate_auth_key,
    generate_key,
    show_node_id,
)
from tunnel_cli.iroh_network import network_options
from tunnel_cli.iroh_options import client_options, server_options
from tunnel_cli.iroh_parser import build_parser
from tunnel_cli.iroh_section import IrohSection, read_iroh_section, section_str
from tunnel_cli.parser import flag, given
from tunnel_core.options import ExitCode, TunnelError

# Everything heavier (cryptography through tunnel_core.keys, the policy, the iroh_session package) is imported
# inside the functions that need it: ``claim`` runs for every command line, and ``tunnel --help`` or a flag typo
# must stay fast (tests/test_cli.py checks what validation imports).

KEY_TOOLS = ("generate-iroh-key", "show-iroh-node-id", "generate-auth-key")

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
        comment = given(ns.comment)
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
        section = read_iroh_section(config, role)
    network = network_options(ns, section)
    protocol = _protocol(ns, section)
    # The TUNNEL_RS_* variables belong to upstream's E4 CLI; an e2 run (the NodeId-allowlist generation, which
    # never had them) ignores them so a shell prepared for e4 cannot change what an e2 command means.
    env = IrohEnv.read() if protocol == "e4" else IrohEnv()
    if env.relay_auth_token is not None and warn is not None:
        warn(f"{iroh_env.RELAY_AUTH_TOKEN} is set but ignored: this implementation has no relay "
             "authentication (--relay-auth-token)")
    if role == "server":
        return "server iroh", server_options(ns, section, network, warn, protocol, env)
    return "client iroh", client_options(ns, section, network, protocol, env)


def _protocol(ns: argparse.Namespace, section: IrohSection) -> str:
    value = given(flag(ns, "protocol")) or section_str(section, "protocol") or "e2"
    if value.lower() not in ("e2", "e4"):
        raise cfg.usage_error(f"Invalid --protocol '{value}'. Expected e2 or e4")
    return value.lower()


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

    runner = importlib.import_module("tunnel_asyncio.iroh.runner")
    if isinstance(options, IrohServerOptions):
        runner.run_iroh_server(options)
    else:
        runner.run_iroh_client(options)
