"""Config files: loading and parsing, the role and mode they name, and typed reads of their tables.

The reference tool (tunnel-rs) reads TOML files with a top-level ``role``/``mode`` and one section per mode;
this module reads the same files (``[manual]`` and the older ``[ice-manual]`` spelling), checks them with the
reference's messages, and merges them under the command line (CLI > config > built-in default). Everything
here raises :class:`~tunnel_core.options.TunnelError` with exit code 2, so the CLI can print one line and stop
before a socket is opened or aioquic is imported.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from tunnel_core.options import ExitCode, TunnelError

ROLES: tuple[str, ...] = ("server", "client")

#: Every mode spelling we accept (E3 names and the E2 ``ice-`` names), mapped to its canonical name.
MODE_ALIASES: Mapping[str, str] = {
    "manual": "manual",
    "ice-manual": "manual",
    "nostr": "nostr",
    "ice-nostr": "nostr",
    "iroh": "iroh",
}

#: Section names of each mode in a config file, E3 spelling first (E2 used ``ice-manual``).
SECTION_NAMES: Mapping[str, tuple[str, ...]] = {
    "manual": ("manual", "ice-manual"),
    "nostr": ("nostr", "ice-nostr"),
    "iroh": ("iroh",),
}


def usage_error(message: str) -> TunnelError:
    """Configuration and usage problems share exit code 2 (reference 1.4)."""
    return TunnelError(message, ExitCode.USAGE)


# ------------------------------------------------------------------------------------------- modes and roles


def canonical_mode(name: str, valid: Sequence[str]) -> str:
    """Map a mode spelling from a config file to its canonical name, or reject it in the reference's words."""
    mode = MODE_ALIASES.get(name)
    if mode is None or mode not in valid:
        raise usage_error(f"Unknown mode '{name}'. Valid modes: {', '.join(valid)}")
    return mode


def default_config_path(role: str, *, ice: bool = False) -> Path:
    """Where ``--default-config`` looks: the reference's per-binary file names under ~/.config/tunnel-rs."""
    name = f"{role}_ice.toml" if ice else f"{role}.toml"
    return Path("~/.config/tunnel-rs").expanduser() / name


def expand_path(path: str) -> Path:
    """Accept a leading ``~/`` as the reference does (E3/E4), so configs and scripts can be shared."""
    return Path(path).expanduser()


# ---------------------------------------------------------------------------------------------- the file


@attrs.frozen(eq=False)
class ConfigFile:
    """A parsed config file: the two routing keys plus the raw tables, checked once the mode is known."""

    path: Path
    role: str | None
    mode: str | None
    data: Mapping[str, Any]

    def parse_error(self, detail: str) -> TunnelError:
        return parse_error(self.path, detail)


def parse_error(path: Path | None, detail: str) -> TunnelError:
    """Type errors read like the reference's serde failures, reason on the same line (anyhow's ``{:#}``)."""
    return usage_error(f"Failed to parse config file: {path}: {detail}")


#: Larger config, key and password files are refused: no real one comes near, and ``-c /dev/zero`` must not eat
#: the machine's memory.
MAX_FILE_BYTES = 1 << 20


class FileTooLarge(OSError):
    """A file above MAX_FILE_BYTES (an OSError so every reader's error path reports it)."""

    def __init__(self) -> None:
        super().__init__(f"larger than {MAX_FILE_BYTES // 1024} KiB")


def read_bounded(path: Path) -> bytes:
    """The bytes of ``path``, at most MAX_FILE_BYTES; raises OSError (FileTooLarge above the cap)."""
    with open(path, "rb") as handle:
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise FileTooLarge()
    return data


def read_bounded_text(path: Path) -> str:
    """UTF-8 text of a bounded file; raises OSError or UnicodeDecodeError."""
    return read_bounded(path).decode("utf-8")


def load_config(path: Path) -> ConfigFile:
    """Read and parse one TOML config file; read and syntax errors carry the reference's messages."""
    try:
        raw = read_bounded(path)
    except OSError as exc:
        raise usage_error(f"Failed to read config file: {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise parse_error(path, str(exc)) from None
    except RecursionError:  # tomllib recurses per nesting level; a hostile file must not end in a traceback
        raise parse_error(path, "tables or arrays nested too deeply") from None
    return parse_config(data, path)


def parse_config(data: Mapping[str, Any], path: Path) -> ConfigFile:
    """Check the top-level keys' types; role/mode *values* are judged later against what is being run.

    The reference's role is an enum, so an unknown role is a parse error there too.
    """
    role = data.get("role")
    mode = data.get("mode")
    if role is not None and role not in ROLES:
        raise parse_error(path, f"unknown role {show_value(role)}, expected \"server\" or \"client\"")
    if mode is not None and not isinstance(mode, str):
        raise parse_error(path, f"'mode' must be a string (got {show_value(mode)})")
    return ConfigFile(path=path, role=role, mode=mode, data=data)


def check_role(config: ConfigFile, role: str) -> None:
    """A client file passed to a server (or the reverse) is the commonest config mistake; name it exactly."""
    if config.role is None:
        raise usage_error(f"Config file missing required 'role' field. Add: role = \"{role}\"")
    if config.role != role:
        raise usage_error(f'Config file has role = "{config.role}", but running as {role}')


def resolve_mode(cli_mode: str | None, config: ConfigFile | None, valid: Sequence[str]) -> str:
    """The mode to run: the CLI subcommand, else the config's ``mode``; both given must agree.

    A loaded config must name its mode (the reference requires it), which also stops a server file written for
    one mode from being silently reused by another.
    """
    config_mode: str | None = None
    if config is not None:
        if config.mode is None:
            raise usage_error(
                "Config file missing required 'mode' field. Add: mode = \"iroh\" (or \"manual\", \"nostr\")"
            )
        config_mode = canonical_mode(config.mode, valid)
    if cli_mode is None:
        if config_mode is None:
            raise usage_error(
                "No mode specified. Either use a subcommand (manual, nostr) "
                "or provide a config file with 'mode' field."
            )
        return config_mode
    mode = MODE_ALIASES[cli_mode]
    if config is not None and config_mode != mode:
        raise usage_error(f'Config file has mode = "{config.mode}", but running with {cli_mode}')
    return mode




# ---------------------------------------------------------------------------------------------- table values


def string_value(config: ConfigFile, table: Mapping[str, Any], where: str, key: str) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise config.parse_error(f"[{where}] '{key}' must be a string (got {show_value(value)})")
    return value


def string_list(config: ConfigFile, table: Mapping[str, Any], where: str, key: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise config.parse_error(f"[{where}] '{key}' must be a list of strings (got {show_value(value)})")
    return tuple(value)


def show_value(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def blank_is_none(value: str | None) -> str | None:
    """Whitespace-only values count as "not given" (reference 1.5), so the other layer can fill them."""
    if value is None or not value.strip():
        return None
    return value.strip()



#: Top-level keys an ICE-mode config may hold: routing keys, the server's (refused) ``source``, and the sections of
#: every mode (a file may carry several; the one being run is read, the others are left alone).
TOP_LEVEL_KEYS = frozenset({"role", "mode", "source", "forward", "manual", "ice-manual", "nostr", "ice-nostr", "iroh"})


def warn_unknown_keys(
    config: ConfigFile, table: Mapping[str, Any], known: frozenset[str], where: str,
    warn: Callable[[str], None] | None,
) -> None:
    """ICE-mode files keep upstream 0.2.4's leniency (unknown keys ignored) but say so, so a typo such as
    ``[manul]`` or ``tpc = [...]`` does not pass silently; iroh files refuse instead (upstream v0.6)."""
    if warn is None:
        return
    for key in sorted(set(table) - known):
        warn(f"unknown key '{key}' in {where} of {config.path} ignored")


ONLY_ONE_SOURCE = "Only one of -c/--config, --default-config, or --config-stdin may be used"


def choose_config(
    config_file: str | None, default: bool, stdin: bool, role: str, *, ice: bool, stdin_config: ConfigFile | None,
) -> ConfigFile | None:
    """The config of a run: ``-c FILE``, ``--default-config`` or the JSON read from stdin, at most one of them."""
    if (config_file is not None) + bool(default) + bool(stdin) > 1:
        raise usage_error(ONLY_ONE_SOURCE)
    if stdin:
        if stdin_config is None:
            raise usage_error("--config-stdin: no JSON config was read from stdin")
        return stdin_config
    if config_file is not None:
        return load_config(expand_path(config_file))
    if default:
        return load_config(default_config_path(role, ice=ice))
    return None


def read_congestion(config: ConfigFile, table: Mapping[str, Any], name: str) -> str | None:
    """The optional ``congestion`` key of an ICE-mode section (issue 13): one of CONGESTION_CONTROLLERS."""
    from tunnel_core.options import CONGESTION_CONTROLLERS

    return read_choice(config.path, table, name, "congestion", CONGESTION_CONTROLLERS)


def read_udp_over(config: ConfigFile, table: Mapping[str, Any], name: str) -> str | None:
    """The optional ``udp_over`` key of a mode's section (issue 14): "datagrams" or "stream"."""
    from tunnel_core.options import UDP_OVER

    return read_choice(config.path, table, name, "udp_over", UDP_OVER)


def read_choice(path: Path | None, table: Mapping[str, Any], name: str, key: str,
                choices: tuple[str, ...]) -> str | None:
    """An optional key of section ``name`` of the config file at ``path`` whose value must be one of ``choices``;
    None when absent."""
    if key not in table:
        return None
    value = table[key]
    if not isinstance(value, str) or value not in choices:
        raise parse_error(path, f"[{name}] '{key}' must be one of {', '.join(choices)} (got {show_value(value)})")
    return value
