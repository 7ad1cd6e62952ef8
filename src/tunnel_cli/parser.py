"""The argparse pieces every command shares: the one parser class, ``--version``, ``-c``/``--default-config``.

One ``Parser`` for all commands, so a usage error reads the same everywhere: one ``Error:`` line with exit 2,
never argparse's usage block and exit code.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn

from tunnel_core.options import ExitCode, TunnelError


class Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so its errors get our one-line format."""

    def error(self, message: str) -> NoReturn:
        raise TunnelError(f"{message} (see '{self.prog} --help')", ExitCode.USAGE)


class VersionAction(argparse.Action):
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


def add_config_args(parser: argparse.ArgumentParser, *, after_mode: bool, default_file: str) -> None:
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
    parser.add_argument(
        "--config-stdin", action="store_true", default=argparse.SUPPRESS if after_mode else False,
        help="read one JSON config object from stdin first (automation); a pasted block may follow it",
    )


def given(value: str | None) -> str | None:
    """Whitespace-only flags count as absent (reference 1.5), letting the config fill them."""
    if value is None or not value.strip():
        return None
    return value.strip()



def flag(namespace: argparse.Namespace, name: str) -> Any:
    """A flag's value, or None when this parser does not define it (role parsers differ in their flags)."""
    return getattr(namespace, name, None)


def pre_parse_config(rest: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """-c / --default-config / --config-stdin and what is left, before the full parser runs: the command modules
    use it to decide whose command line this is (``server -c f.toml`` with a mode inside the file)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-c", "--config")
    pre.add_argument("--default-config", action="store_true")
    pre.add_argument("--config-stdin", action="store_true")
    known, leftover = pre.parse_known_args(list(rest))
    return known, leftover


def config_file_mode(role: str, rest: Sequence[str], ice: bool) -> str | None:
    """The ``mode`` of the file ``-c``/``--default-config`` names (None without one, or when it does not load:
    the full parser reports that)."""
    from tunnel_cli import config as cfg

    try:
        known, _ = pre_parse_config(rest)
        if known.config is not None:
            path = cfg.expand_path(known.config)
        elif known.default_config:
            path = cfg.default_config_path(role, ice=ice)
        else:
            return None
        return cfg.load_config(path).mode
    except (TunnelError, SystemExit):
        return None


def insert_mode_word(argv: Sequence[str], word: str) -> list[str]:
    """``tunnel client -c FILE --flag V`` whose file names the mode: put the left-out mode word back right after
    the role (``-c`` may stand on either side of it), so the mode's own flags parse instead of ``V`` being taken
    for a mode word. A command line that has its mode word is returned as it is."""
    args = list(argv)
    first = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
    if first is None or args[first] not in ("server", "client"):
        return args
    rest = args[first + 1:]
    try:
        _known, leftover = pre_parse_config(rest)
    except SystemExit:
        return args
    if not leftover or not leftover[0].startswith("-"):
        return args  # nothing to parse, or a mode word is there
    return [*args[: first + 1], word, *rest]


def stdin_config_wanted(argv: Sequence[str]) -> bool:
    """True when a ``server``/``client`` command line asks for ``--config-stdin`` (read once, before routing)."""
    args = list(argv)
    first = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
    if first is None or args[first] not in ("server", "client"):
        return False
    try:
        known, _ = pre_parse_config(args[first + 1:])
    except SystemExit:
        return False
    if known.config_stdin and (known.config is not None or known.default_config):
        from tunnel_cli.config import ONLY_ONE_SOURCE

        raise TunnelError(ONLY_ONE_SOURCE, ExitCode.USAGE)  # checked before stdin is read, as upstream does
    return bool(known.config_stdin)
