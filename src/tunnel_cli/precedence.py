"""How a command-line value and a config value combine (reference section 2): the CLI replaces, lists never merge."""

from __future__ import annotations

from collections.abc import Sequence

from tunnel_cli.config import usage_error
from tunnel_core.options import DEFAULT_STUN_SERVERS


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
