"""Config files and the validation of every user-supplied value, before anything runs.

The reference tool (tunnel-rs) reads TOML files with a top-level ``role``/``mode`` and one section per mode;
this module reads the same files (``[manual]`` and the older ``[ice-manual]`` spelling), checks them with the
reference's messages, and merges them under the command line (CLI > config > built-in default). Everything
here raises :class:`~tunnel_core.options.TunnelError` with exit code 2, so the CLI can print one line and stop
before a socket is opened or aioquic is imported.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs

from tunnel_core.options import CONGESTION_CONTROLLERS, DEFAULT_STUN_SERVERS, ExitCode, TunnelError
from tunnel_core.turn import parse_turn_url

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

#: QUIC datagram size bounds: below 1200 QUIC itself refuses to run (RFC 9000 14.1); above 16000 no real path
#: (even loopback with jumbo MTU) carries the datagram unfragmented.
PACKET_SIZE_MIN = 1200
PACKET_SIZE_MAX = 16000

_STUN_EXAMPLE = "host:port (e.g., stun.l.google.com:19302)"
_TURN_EXAMPLE = "turn:HOST:PORT (e.g., turn:turn.example.org:3478)"
_CIDR_EXAMPLE = "192.168.0.0/16 or ::1/128"


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


def parse_error(path: Path, detail: str) -> TunnelError:
    """Type errors read like the reference's serde failures, reason on the same line (anyhow's ``{:#}``)."""
    return usage_error(f"Failed to parse config file: {path}: {detail}")


def load_config(path: Path) -> ConfigFile:
    """Read and parse one TOML config file; read and syntax errors carry the reference's messages."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise usage_error(f"Failed to read config file: {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise parse_error(path, str(exc)) from None
    return parse_config(data, path)


def parse_config(data: Mapping[str, Any], path: Path) -> ConfigFile:
    """Check the top-level keys' types; role/mode *values* are judged later against what is being run.

    The reference's role is an enum, so an unknown role is a parse error there too.
    """
    role = data.get("role")
    mode = data.get("mode")
    if role is not None and role not in ROLES:
        raise parse_error(path, f"unknown role {_show(role)}, expected \"server\" or \"client\"")
    if mode is not None and not isinstance(mode, str):
        raise parse_error(path, f"'mode' must be a string (got {_show(mode)})")
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


# ---------------------------------------------------------------------------------------------- [manual]


@attrs.frozen
class ManualSection:
    """The ``[manual]`` table after type and value checks; None / empty means "not set in the file"."""

    section: str = "manual"
    #: None when the key is absent (defaults apply); an empty tuple when the file disables STUN.
    stun_servers: tuple[str, ...] | None = None
    allowed_tcp: tuple[str, ...] = ()
    allowed_udp: tuple[str, ...] = ()
    source: str | None = None
    target: str | None = None
    host_candidates: tuple[str, ...] = ()
    packet_size: int | None = None
    congestion: str | None = None
    turn_servers: tuple[str, ...] = ()
    turn_user: str | None = None
    turn_password: str | None = attrs.field(default=None, repr=False)
    turn_password_file: str | None = None


_MANUAL_KEYS = frozenset({
    "stun_servers", "allowed_sources", "request_source", "source", "target", "host_candidates", "packet_size",
    "transport", "turn_servers", "turn_user", "turn_password", "turn_password_file", "congestion",
})


def manual_section(
    config: ConfigFile,
    role: str,
    *,
    warn: Callable[[str], None] | None = None,
    interfaces: Callable[[], Iterable[str]] | None = None,
) -> ManualSection:
    """Extract and check ``[manual]`` (or ``[ice-manual]``) for ``role``.

    Role-specific keys are rejected rather than ignored: a server file carrying ``target`` was almost
    certainly meant for the client, and running anyway would hide that. Unknown keys are ignored like the
    reference does, with a warning so typos do not go unnoticed.
    """
    data = config.data
    present = [name for name in SECTION_NAMES["manual"] if name in data]
    if len(present) > 1:
        raise usage_error(
            f"Config file has both [{present[0]}] and [{present[1]}] sections. Use only one."
        )
    name = present[0] if present else "manual"
    table = data.get(name, {})
    if not isinstance(table, Mapping):
        raise config.parse_error(f"'{name}' must be a table")

    if role == "server" and "source" in data:
        raise usage_error(
            f"Top-level 'source' is not allowed for {name} server mode. "
            f"Use [{name}.allowed_sources] to restrict what clients can request."
        )
    if role == "server" and any(key in table for key in ("source", "request_source", "target")):
        raise usage_error(
            f"[{name}] 'source' / 'request_source' / 'target' are client-only fields. "
            "Servers use 'allowed_sources' to restrict what clients can request."
        )
    if role == "client" and "allowed_sources" in table:
        raise usage_error(
            f"[{name}] 'allowed_sources' is a server-only field. "
            "Clients use 'source' to specify what to request from server."
        )
    if warn is not None:
        for key in sorted(set(table) - _MANUAL_KEYS):
            warn(f"unknown key '{key}' in [{name}] of {config.path} ignored")
        if "transport" in table:
            warn(f"[{name}.transport] is not supported by this version and is ignored")

    stun = _string_list(config, table, name, "stun_servers") if "stun_servers" in table else None
    if stun is not None:
        for server in stun:
            check_stun_server(server, f"[{name}] stun_servers")

    allowed_tcp: tuple[str, ...] = ()
    allowed_udp: tuple[str, ...] = ()
    if "allowed_sources" in table:
        allowed = table["allowed_sources"]
        if not isinstance(allowed, Mapping):
            raise config.parse_error(f"[{name}] 'allowed_sources' must be a table with 'tcp' and 'udp' lists")
        allowed_tcp = _string_list(config, allowed, f"{name}.allowed_sources", "tcp")
        allowed_udp = _string_list(config, allowed, f"{name}.allowed_sources", "udp")
        for proto, cidrs in (("TCP", allowed_tcp), ("UDP", allowed_udp)):
            for cidr in cidrs:
                if not _cidr_ok(cidr):
                    raise usage_error(
                        f"Invalid {proto} allowed_sources: Invalid CIDR network '{cidr}'. "
                        f"Expected format: {_CIDR_EXAMPLE}"
                    )

    if "request_source" in table and "source" in table:
        raise usage_error(f"[{name}] Use only one of 'request_source' or 'source'.")
    source_key = "request_source" if "request_source" in table else "source"
    source = _blank_is_none(_string(config, table, name, source_key))
    if source is not None:
        check_config_source(source)
    target = _blank_is_none(_string(config, table, name, "target"))
    if target is not None:
        check_config_target(target)

    hosts = _string_list(config, table, name, "host_candidates")
    for host in hosts:
        check_host_candidate(host, f"[{name}] host_candidates", interfaces)

    packet_size: int | None = None
    if "packet_size" in table:
        value = table["packet_size"]
        if isinstance(value, bool) or not isinstance(value, int):
            raise config.parse_error(f"[{name}] 'packet_size' must be an integer (got {_show(value)})")
        packet_size = check_packet_size(value, f"[{name}] packet_size")

    turn = read_turn_keys(config, table, name)
    congestion = read_congestion(config, table, name)

    return ManualSection(
        section=name,
        stun_servers=stun,
        turn_servers=turn.turn_servers,
        turn_user=turn.turn_user,
        turn_password=turn.turn_password,
        turn_password_file=turn.turn_password_file,
        allowed_tcp=allowed_tcp,
        allowed_udp=allowed_udp,
        source=source,
        target=target,
        host_candidates=hosts,
        packet_size=packet_size,
        congestion=congestion,
    )


@attrs.frozen
class TurnKeys:
    """The TURN keys of any ICE mode's section (``[manual]``, ``[nostr]``), checked the same way everywhere."""

    section: str
    turn_servers: tuple[str, ...] = ()
    turn_user: str | None = None
    turn_password: str | None = attrs.field(default=None, repr=False)
    turn_password_file: str | None = None


def read_turn_keys(config: ConfigFile, table: Mapping[str, Any], name: str) -> TurnKeys:
    """``turn_servers`` / ``turn_user`` / ``turn_password`` / ``turn_password_file`` of section ``name``."""
    turn_servers = _string_list(config, table, name, "turn_servers")
    for server in turn_servers:
        check_turn_server(server, f"[{name}] turn_servers")
    turn_password = _string(config, table, name, "turn_password")
    turn_password_file = _blank_is_none(_string(config, table, name, "turn_password_file"))
    if turn_password is not None and turn_password_file is not None:
        raise usage_error(f"[{name}] Use only one of 'turn_password' or 'turn_password_file'.")
    return TurnKeys(
        section=name,
        turn_servers=tuple(turn_servers),
        turn_user=_blank_is_none(_string(config, table, name, "turn_user")),
        turn_password=turn_password,
        turn_password_file=turn_password_file,
    )


class TurnSettings(Protocol):
    """What credential resolution needs from a mode's config section (ManualSection, the nostr section, ...)."""

    @property
    def section(self) -> str: ...

    @property
    def turn_user(self) -> str | None: ...

    @property
    def turn_password(self) -> str | None: ...

    @property
    def turn_password_file(self) -> str | None: ...


class IceSection(TurnSettings, Protocol):
    """The ICE keys every ICE mode's section carries, so the CLI core builds IceOptions for any of them."""

    @property
    def stun_servers(self) -> tuple[str, ...] | None: ...

    @property
    def host_candidates(self) -> tuple[str, ...]: ...

    @property
    def packet_size(self) -> int | None: ...

    @property
    def congestion(self) -> str | None: ...

    @property
    def turn_servers(self) -> tuple[str, ...]: ...


def _string(config: ConfigFile, table: Mapping[str, Any], where: str, key: str) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise config.parse_error(f"[{where}] '{key}' must be a string (got {_show(value)})")
    return value


def _string_list(config: ConfigFile, table: Mapping[str, Any], where: str, key: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise config.parse_error(f"[{where}] '{key}' must be a list of strings (got {_show(value)})")
    return tuple(value)


def _show(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _blank_is_none(value: str | None) -> str | None:
    """Whitespace-only values count as "not given" (reference 1.5), so the other layer can fill them."""
    if value is None or not value.strip():
        return None
    return value.strip()


# ---------------------------------------------------------------------------------------------- value checks


def _cidr_ok(text: str) -> bool:
    from tunnel_core.policy import PolicyError, parse_cidr

    try:
        parse_cidr(text)
    except PolicyError:
        return False
    return True


def check_cli_cidrs(cidrs: Iterable[str], flag: str) -> tuple[str, ...]:
    """Reject a bad CIDR up front (upstream only noticed at request time, by panicking)."""
    from tunnel_core.policy import PolicyError, parse_cidr

    checked = tuple(cidrs)
    for cidr in checked:
        try:
            parse_cidr(cidr, flag)
        except PolicyError as exc:
            raise usage_error(str(exc)) from None
    return checked


def check_cli_source(source: str) -> str:
    """The policy's message is the reference's CLI wording: ``Invalid source '<s>'. Expected format: ...``."""
    from tunnel_core.policy import PolicyError, parse_source

    try:
        parse_source(source)
    except PolicyError as exc:
        raise usage_error(str(exc)) from None
    return source


def check_config_source(source: str) -> str:
    from tunnel_core.policy import PolicyError, parse_source

    try:
        parse_source(source)
    except PolicyError:
        raise usage_error(
            f"Invalid request_source '{source}'. Expected format: tcp://host:port or udp://host:port"
        ) from None
    return source


def check_cli_target(target: str) -> str:
    from tunnel_core.policy import PolicyError, parse_target

    try:
        parse_target(target)
    except PolicyError as exc:
        raise usage_error(str(exc)) from None
    return target


def check_config_target(target: str) -> str:
    """The reference's config checker names the exact defect (missing port / host / bad port number)."""
    if ":" not in target:
        raise usage_error(f"target '{target}' missing port. Expected format: host:port")
    host, _, port = target.rpartition(":")
    if not host.strip("[]"):
        raise usage_error(f"target '{target}' missing host")
    if not port.isdigit() or int(port) > 65535:
        raise usage_error(f"target '{target}' has invalid port number")
    return check_cli_target(target)


def split_host_port(text: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` with a port in 1..65535; None when it is neither."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    if host.startswith("["):
        if not host.endswith("]"):
            return None
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    elif ":" in host or any(ch.isspace() or ch in "/@?#" for ch in host):
        return None
    return host, int(port)


def check_stun_server(server: str, where: str) -> str:
    if split_host_port(server) is None:
        raise usage_error(f"Invalid STUN server '{server}' in {where}. Expected format: {_STUN_EXAMPLE}")
    return server


def check_turn_server(server: str, where: str) -> str:
    try:
        parse_turn_url(server)
    except ValueError:
        raise usage_error(f"Invalid TURN server '{server}' in {where}. Expected format: {_TURN_EXAMPLE}") from None
    return server.strip()


def read_password_file(path: str, where: str) -> str:
    """The first line of ``path`` without its line ending; an unreadable or empty file is a usage error."""
    try:
        text = expand_path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise usage_error(f"Cannot read {where} '{path}': {getattr(exc, 'strerror', None) or exc}") from None
    lines = text.splitlines()
    password = lines[0] if lines else ""
    if not password:
        raise usage_error(f"{where} '{path}' is empty")
    return password


def resolve_turn_credentials(
    *, servers: Sequence[str], cli_user: str | None, cli_password: str | None, cli_password_file: str | None,
    section: TurnSettings,
) -> tuple[str | None, str | None]:
    """CLI user/password (inline or file) replace the config's; TURN servers need both, credentials need a server.

    The password is only ever returned, never put into a message."""
    if cli_password is not None and cli_password_file is not None:
        raise usage_error("Cannot use both --turn-password and --turn-password-file")
    user = cli_user or section.turn_user
    if cli_password is not None:
        password: str | None = cli_password
    elif cli_password_file is not None:
        password = read_password_file(cli_password_file, "--turn-password-file")
    elif section.turn_password is not None:
        password = section.turn_password
    elif section.turn_password_file is not None:
        password = read_password_file(section.turn_password_file, f"[{section.section}] turn_password_file")
    else:
        password = None
    if servers and (not user or not password):
        raise usage_error(
            "--turn-server requires credentials: give --turn-user and --turn-password or --turn-password-file "
            "(or turn_user and turn_password / turn_password_file in the config)"
        )
    if not servers and (cli_user is not None or cli_password is not None or cli_password_file is not None):
        raise usage_error("--turn-user/--turn-password need at least one --turn-server")
    return (user, password) if servers else (None, None)


def local_interfaces() -> list[str]:
    """Interface names of this machine; empty where the platform cannot list them (names go unchecked)."""
    import socket

    try:
        return [name for _index, name in socket.if_nameindex()]
    except (OSError, AttributeError):
        return []


def check_host_candidate(
    value: str, where: str, interfaces: Callable[[], Iterable[str]] | None = None
) -> str:
    """An IP literal or the name of an existing interface: a typo must not silently mean "no candidates"."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return value
    names = list((interfaces or local_interfaces)())
    if not value or any(ch.isspace() for ch in value) or (names and value not in names):
        raise usage_error(f"Invalid {where} '{value}': not an IP address or a local interface name")
    return value


def check_packet_size(value: int, where: str) -> int:
    if not PACKET_SIZE_MIN <= value <= PACKET_SIZE_MAX:
        raise usage_error(
            f"Invalid {where} {value}. Expected an integer between {PACKET_SIZE_MIN} and {PACKET_SIZE_MAX}"
        )
    return value


def read_congestion(config: ConfigFile, table: Mapping[str, Any], name: str) -> str | None:
    """The optional ``congestion`` key of an ICE-mode section (issue 13): one of CONGESTION_CONTROLLERS."""
    if "congestion" not in table:
        return None
    value = table["congestion"]
    if not isinstance(value, str) or value not in CONGESTION_CONTROLLERS:
        raise config.parse_error(
            f"[{name}] 'congestion' must be one of {', '.join(CONGESTION_CONTROLLERS)} (got {_show(value)})"
        )
    return value


def parse_cli_packet_size(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise usage_error(
            f"Invalid --packet-size '{text}'. "
            f"Expected an integer between {PACKET_SIZE_MIN} and {PACKET_SIZE_MAX}"
        ) from None
    return check_packet_size(value, "--packet-size")


# ---------------------------------------------------------------------------------------------- precedence


def resolve_stun_servers(
    *, no_stun: bool, cli: Sequence[str], config: Sequence[str] | None
) -> tuple[str, ...]:
    """Reference 1.1: --no-stun, else a non-empty CLI list, else the config list ([] = none), else default."""
    if no_stun and cli:
        raise usage_error("Cannot combine --no-stun with --stun-server")
    if no_stun:
        return ()
    if cli:
        return tuple(cli)
    if config is not None:
        return tuple(config)
    return DEFAULT_STUN_SERVERS


def cli_or_config(cli: Sequence[str], config: Sequence[str]) -> tuple[str, ...]:
    """A non-empty CLI list replaces the config list; lists are never merged (reference 2)."""
    return tuple(cli) if cli else tuple(config)
