"""A client's forwards from the command line (``--forward LISTEN=URL``, repeatable) and the config file
(``[[forward]]`` tables), merged with the seed's ``--source``/``--target`` (docs/forwards.md).

Precedence, as everywhere: the command line wins. Here the forward list is one value, so any ``--forward`` on the
command line replaces every forward of the file (its ``[[forward]]`` list and its ``source``/``target``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tunnel_cli.checks import check_cli_source, check_cli_target, check_config_source, check_config_target
from tunnel_cli.config import ConfigFile, string_value, usage_error
from tunnel_core.options import Forward

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


def config_forwards(config: ConfigFile | None) -> tuple[Forward, ...]:
    """The file's ``[[forward]]`` list: each table has ``listen`` and ``source``, both required."""
    if config is None or "forward" not in config.data:
        return ()
    items = config.data["forward"]
    if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
        raise config.parse_error("'forward' must be a list of tables ([[forward]] with listen and source)")
    out = []
    for number, item in enumerate(items, 1):
        where = f"forward #{number}"
        unknown = sorted(set(item) - _FORWARD_KEYS)
        if unknown:
            raise usage_error(f"[[forward]] #{number}: unknown key '{unknown[0]}' (use 'listen' and 'source')")
        listen = string_value(config, item, where, "listen")
        source = string_value(config, item, where, "source")
        if not listen or not source:
            raise usage_error(f"[[forward]] #{number} needs both 'listen' and 'source'")
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
