"""iroh mode on the command line: ``tunnel server|client iroh``, the ``tunnel-rs`` entry point (iroh only), the
``[iroh]`` config section and the key tools ``generate-iroh-key`` / ``show-iroh-node-id``.

Kept apart from tunnel_cli.cli (which only asks ``claim`` whether a command line is ours) so the iroh flags,
their checks and their reference wording live in one place. Like the rest of the CLI, nothing here imports the
iroh binding: parsing and validation answer in milliseconds and print one line on failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from tunnel_cli import config as cfg
from tunnel_cli.iroh_env import IrohEnv
from tunnel_cli.iroh_keytools import (
    GenerateAuthKey,
    GenerateKey,
    GenerateServerKey,
    KeyTool,
    ShowAuthKey,
    ShowNodeId,
    ShowServerId,
    run_key_tool,
)
from tunnel_cli.iroh_network import network_options
from tunnel_cli.iroh_options import client_options, server_options
from tunnel_cli.iroh_parser import build_parser
from tunnel_cli.iroh_section import IrohSection, read_iroh_section, reject_inline_keys, section_str
from tunnel_cli.parser import flag, given, insert_mode_word, pre_parse_config
from tunnel_core.options import ExitCode, TunnelError

# Everything heavier (cryptography through tunnel_core.keys, the policy, the iroh_session package) is imported
# inside the functions that need it: ``claim`` runs for every command line, and ``tunnel --help`` or a flag typo
# must stay fast (tests/test_cli.py checks what validation imports).

KEY_TOOLS = ("generate-iroh-key", "show-iroh-node-id", "generate-auth-key", "show-auth-key", "generate-server-key",
             "show-server-id")
KEY_TOOL_TYPES = (GenerateKey, ShowNodeId, GenerateAuthKey, ShowAuthKey, GenerateServerKey, ShowServerId)

IrohCommand = "IrohServerOptions | IrohClientOptions | KeyTool"


def handles(options: object) -> bool:
    """True for the option values this module builds (the CLI core dispatches them here)."""
    if isinstance(options, KEY_TOOL_TYPES):
        return True
    return type(options).__module__ == "tunnel_core.iroh_session.options"


# ---------------------------------------------------------------------------------------------- claiming




def _config_says_iroh(role: str, rest: Sequence[str], ice: bool) -> bool:
    """A ``tunnel server -c f.toml`` run whose file says ``mode = "iroh"`` is ours; any load problem is not
    (the general path reports it)."""
    try:
        known, _ = pre_parse_config(rest)
        config_file, default = known.config, bool(known.default_config)
        if config_file is not None:
            path = cfg.expand_path(config_file)
        elif default:
            path = cfg.default_config_path(role, ice=ice)
        else:
            return False
        loaded = cfg.load_config(path)
    except (TunnelError, SystemExit):
        return False
    # An upstream v0.6 file has no ``mode`` key (iroh is its only mode): an [iroh] table says it all.
    return loaded.mode == "iroh" or (loaded.mode is None and "iroh" in loaded.data)


def claim(
    argv: Sequence[str], *, program: Any, warn: Callable[[str], None] | None = None,
    stdin_config: cfg.ConfigFile | None = None,
) -> tuple[str, IrohCommand] | None:
    """Build the options when ``argv`` is an iroh-mode command (or a key tool) for ``program``, else None."""
    args = list(argv)
    iroh_only = getattr(program, "name", "") == "tunnel-rs"
    if getattr(program, "ice", False):
        return None
    first = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
    if first is None:
        if iroh_only:
            return _build(args, program, warn, stdin_config)
        return None
    word = args[first]
    if word in KEY_TOOLS:
        return _build(args, program, warn)
    if word not in ("server", "client"):
        return _build(args, program, warn, stdin_config) if iroh_only else None
    rest = args[first + 1 :]
    try:
        known, leftover = pre_parse_config(rest)
    except SystemExit:
        return None
    # Only -c/--default-config may precede the mode word, so the first thing left is the mode word (or a flag).
    mode_word = leftover[0] if leftover and not leftover[0].startswith("-") else None
    # A JSON config read from stdin routes by its "mode" like a file does (none, as in upstream v0.6: iroh).
    if known.config_stdin and stdin_config is not None:
        stdin_iroh = stdin_config.mode is None or stdin_config.mode == "iroh"
    else:
        stdin_iroh = bool(known.config_stdin)
    says_iroh = mode_word is None and (stdin_iroh or _config_says_iroh(word, rest, ice=False))
    if says_iroh and not iroh_only:  # the file names the mode: its flags may follow without the word
        return _build(insert_mode_word(args, "iroh"), program, warn, stdin_config)
    if iroh_only or mode_word == "iroh" or says_iroh:
        return _build(args, program, warn, stdin_config)
    return None


# ---------------------------------------------------------------------------------------------- building options


def _key_tool(command: str, ns: argparse.Namespace) -> KeyTool:
    """The key tools' options; clap's conflicts and requirements keep their meaning (a usage error, exit 2)."""
    if command == "generate-iroh-key":
        return GenerateKey(output=ns.output, force=bool(ns.force))
    if command == "show-iroh-node-id":
        return ShowNodeId(secret_file=ns.secret_file)
    if command == "show-server-id":
        return ShowServerId(secret_file=ns.secret_file, json=bool(ns.json))
    if command == "show-auth-key":
        comment = None if ns.comment is None else _comment(ns.comment)
        return ShowAuthKey(private_key_file=ns.private_key_file, comment=comment, json=bool(ns.json))
    if ns.json and ns.output is not None:
        raise cfg.usage_error("the argument '--output <OUTPUT>' cannot be used with '--json'")
    if ns.force and ns.output is None:
        raise cfg.usage_error("--force requires --output <OUTPUT>")
    if command == "generate-server-key":
        return GenerateServerKey(output=ns.output, force=bool(ns.force), json=bool(ns.json))
    if ns.comment is not None and ns.comment_arg is not None:
        raise cfg.usage_error("Give the comment either as COMMENT or as --comment, not both")
    text = ns.comment if ns.comment is not None else ns.comment_arg
    comment = None if text is None else _comment(text)
    return GenerateAuthKey(output=ns.output, comment=comment or None, force=bool(ns.force), json=bool(ns.json))


def _comment(text: str) -> str:
    from tunnel_core.iroh_session.authkeys import check_comment
    from tunnel_core.keys import KeyFormatError

    try:
        return check_comment(text)
    except KeyFormatError:
        raise cfg.usage_error("--comment must be a single line") from None


def _build(argv: Sequence[str], program: Any, warn: Callable[[str], None] | None,
           stdin_config: cfg.ConfigFile | None = None) -> tuple[str, IrohCommand]:
    parser = build_parser(program)
    args = list(argv)
    if getattr(program, "name", "") == "tunnel-rs" and args in (["server"], ["client"]):
        # clap's arg_required_else_help: a bare role prints its help (stderr) and exits 2, as upstream does.
        _print_role_help(parser, args[0])
    ns = parser.parse_args(args)
    command = ns.command
    if command is None:
        parser.error("a command is required: server, client, generate-server-key or show-server-id")
    if command in KEY_TOOLS:
        return command, _key_tool(command, ns)
    role = command
    from_stdin = bool(getattr(ns, "config_stdin", False))
    if from_stdin and stdin_config is None:  # called directly, not through cli.build_options
        from tunnel_cli.stdin_config import read_stdin_config

        stdin_config = read_stdin_config()
    config = cfg.choose_config(getattr(ns, "config", None), bool(getattr(ns, "default_config", False)), from_stdin,
                               role, ice=False, stdin_config=stdin_config)
    section = IrohSection()
    if config is not None:
        cfg.check_role(config, role)
        if config.mode is not None and config.mode != "iroh":
            raise cfg.usage_error(f'Config file has mode = "{config.mode}", but running with iroh')
        section = read_iroh_section(config, role, from_stdin=from_stdin)
    env = IrohEnv.read()
    protocol = _protocol(ns, section, env, role, program=program, mode_less=config is not None and config.mode is None)
    if protocol == "e4":
        reject_inline_keys(section)
    else:
        # The TUNNEL_RS_* variables belong to upstream's E4 CLI; an e2 run (the NodeId-allowlist generation, which
        # never had them) ignores them so a shell prepared for e4 cannot change what an e2 command means.
        env = IrohEnv()
    network = network_options(ns, section, protocol=protocol, env_relay_token=env.relay_auth_token)
    if role == "server":
        return "server iroh", server_options(ns, section, network, warn, protocol, env, config=config)
    return "client iroh", client_options(ns, section, network, protocol, env, config=config)


def _print_role_help(parser: argparse.ArgumentParser, role: str) -> None:
    import contextlib
    import io

    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):
        parser.parse_args([role, "--help"])
    sys.stderr.write(text.getvalue())
    sys.stderr.flush()
    raise SystemExit(int(ExitCode.USAGE))


def _protocol(
    ns: argparse.Namespace, section: IrohSection, env: IrohEnv, role: str, *, program: Any, mode_less: bool
) -> str:
    """e4 or e2. An explicit --protocol / ``protocol`` wins; else the options say it: a NodeId allowlist means e2,
    an Ed25519 key option (flag, environment or config key) means e4, and so does a config in upstream v0.6's shape
    (no ``mode`` key, or --config-stdin). With no hint at all, ``tunnel-rs`` follows its current upstream (e4) and
    ``tunnel ... iroh`` keeps the seed's e2."""
    value = given(flag(ns, "protocol")) or section_str(section, "protocol")
    if value is not None:
        if value.lower() not in ("e2", "e4"):
            raise cfg.usage_error(f"Invalid --protocol '{value}'. Expected e2 or e4")
        return value.lower()
    values = section.values
    if role == "server":
        if flag(ns, "allowed_clients") or given(flag(ns, "allowed_clients_file")) is not None \
                or "allowed_clients" in values or "allowed_clients_file" in values:
            return "e2"
        keyed = given(flag(ns, "authorized_keys_file")) is not None or env.authorized_keys_file is not None \
            or "authorized_keys_file" in values or "authorized_keys" in values
    else:
        keyed = given(flag(ns, "private_key_file")) is not None or env.private_key_file is not None \
            or "private_key_file" in values or "private_key" in values
    if keyed or section.from_stdin or mode_less:
        return "e4"
    return "e4" if getattr(program, "name", "") == "tunnel-rs" else "e2"


# ---------------------------------------------------------------------------------------------- running


def dispatch(options: IrohCommand, runtime: str) -> None:
    """Key tools run anywhere; tunnels need asyncio (the binding is asyncio-only)."""
    if isinstance(options, KEY_TOOL_TYPES):
        run_key_tool(options)  # type: ignore[arg-type]
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
