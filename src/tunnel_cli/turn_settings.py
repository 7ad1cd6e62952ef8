"""TURN settings of the ICE modes: the section keys, the password file, and how CLI and config credentials combine.

One place for ``[manual]`` and ``[nostr]`` alike, so both modes check and resolve TURN credentials the same way and
the password never reaches a message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import attrs

from tunnel_cli.checks import check_turn_server
from tunnel_cli.config import (
    ConfigFile,
    blank_is_none,
    expand_path,
    read_bounded_text,
    string_list,
    string_value,
    usage_error,
)
from tunnel_cli.keyfiles import check_secret_file_mode


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
    turn_servers = string_list(config, table, name, "turn_servers")
    for server in turn_servers:
        check_turn_server(server, f"[{name}] turn_servers")
    turn_password = string_value(config, table, name, "turn_password")
    turn_password_file = blank_is_none(string_value(config, table, name, "turn_password_file"))
    if turn_password is not None and turn_password_file is not None:
        raise usage_error(f"[{name}] Use only one of 'turn_password' or 'turn_password_file'.")
    return TurnKeys(
        section=name,
        turn_servers=tuple(turn_servers),
        turn_user=blank_is_none(string_value(config, table, name, "turn_user")),
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
    def udp_over(self) -> str | None: ...

    @property
    def turn_servers(self) -> tuple[str, ...]: ...


def read_password_file(path: str, where: str) -> str:
    """The first line of ``path`` without its line ending; an unreadable or empty file is a usage error."""
    try:
        text = read_bounded_text(expand_path(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise usage_error(f"Cannot read {where} '{path}': {getattr(exc, 'strerror', None) or exc}") from None
    check_secret_file_mode(path)
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


