"""``tunnel relay``: flags and config file of the relay server, validated into a RelayOptions value.

Kept apart from the peer CLI (cli.py) because the relay is a different kind of program (a long-running
service with its own config file) and shares nothing with the tunnel modes except the one-line error
contract: every problem is ``Error: <message>`` with exit code 2 before a socket is opened.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tunnel_cli import output
from tunnel_cli.config import read_bounded_text
from tunnel_cli.keyfiles import check_secret_file_mode
from tunnel_cli.parser import Parser
from tunnel_core.errors import RemoteProtocolError
from tunnel_core.iroh_relay.config import DEV_BIND, RelayOptions, RelayPolicy
from tunnel_core.keys import parse_allowed_clients, parse_endpoint_id
from tunnel_core.options import ExitCode, TunnelError

__all__ = ["build_relay_options", "build_relay_parser", "run"]

DEFAULT_TLS_BIND = ("0.0.0.0", 443)

#: Keys a relay config file may hold (top level, or inside a ``[relay]`` table), with their TOML types.
CONFIG_KEYS: Mapping[str, type | tuple[type, ...]] = {
    "dev": bool,
    "bind": str,
    "tls_cert": str,
    "tls_key": str,
    "tokens": list,
    "token_file": str,
    "allowed_endpoints": list,
    "allowed_endpoints_file": str,
    "rate_limit": (int, str),
    "rate_burst": (int, str),
    "queue_depth": int,
    "shutdown_grace": (int, float),
}

EPILOG = """\
Examples:
  tunnel relay --dev                                   plain HTTP on 127.0.0.1:3340 (testing)
  tunnel relay --tls-cert cert.pem --tls-key key.pem   HTTPS on 0.0.0.0:443
  tunnel relay --bind 127.0.0.1:8080 --token-file t    plain HTTP behind a reverse proxy
Clients use the printed URL as their relay URL (iroh RelayConfig url, tunnel --relay-url).
See docs/relay.md for the config file and reverse-proxy setups.
"""


def _usage(message: str) -> TunnelError:
    return TunnelError(message, ExitCode.USAGE)


def build_relay_parser(prog: str = "tunnel relay") -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog, description="Run an iroh-compatible relay server (HTTP/1.1 + WebSocket, optional TLS).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", metavar="FILE", help="read settings from this TOML file (flags override)")
    parser.add_argument("--dev", action="store_true", default=None,
                        help=f"plain HTTP on {DEV_BIND[0]}:{DEV_BIND[1]} unless --bind says otherwise "
                        "(like iroh-relay --dev)")
    parser.add_argument("--bind", metavar="ADDR:PORT", help="listen address, e.g. 0.0.0.0:443 or [::]:8080")
    parser.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain; enables HTTPS")
    parser.add_argument("--tls-key", metavar="FILE", help="PEM private key for --tls-cert")
    parser.add_argument("--token", action="append", default=None, metavar="TOKEN",
                        help="accept clients presenting 'Authorization: Bearer TOKEN' (repeatable)")
    parser.add_argument("--token-file", metavar="FILE", help="accepted tokens, one per line (# comments)")
    parser.add_argument("--allowed-endpoints-file", metavar="FILE",
                        help="only these endpoint ids may connect: one hex id per line (# comments)")
    parser.add_argument("--rate-limit", metavar="BYTES_PER_S",
                        help="per-client limit on bytes sent to the relay, e.g. 2000000 or 2M")
    return parser


# ---------------------------------------------------------------------------------------------- values

_SIZE = re.compile(r"\s*(\d+)\s*([kKmMgG]?)\s*")
_SCALE = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3}


def parse_rate(value: Any, origin: str) -> int:
    """Bytes per second, plain or with a decimal k/M/G suffix; must be positive."""
    if isinstance(value, bool):
        raise _usage(f"Invalid {origin}: expected a number of bytes per second")
    if isinstance(value, int):
        number = value
    else:
        match = _SIZE.fullmatch(str(value))
        if match is None:
            raise _usage(f"Invalid {origin}: {value!r} (expected bytes per second, e.g. 2000000 or 2M)")
        number = int(match.group(1)) * _SCALE[match.group(2).lower()]
    if number <= 0:
        raise _usage(f"Invalid {origin}: must be positive")
    return number


def parse_bind(value: str, origin: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; the host must be an IP literal (a relay binds, it does not resolve)."""
    text = value.strip()
    match = re.fullmatch(r"\[([^\]]+)\]:(\d+)", text) or re.fullmatch(r"([^:\[\]]+):(\d+)", text)
    if match is None:
        raise _usage(f"Invalid {origin}: {value!r} (expected ADDR:PORT, e.g. 0.0.0.0:443 or [::]:443)")
    host, port_text = match.group(1), match.group(2)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise _usage(f"Invalid {origin}: {host!r} is not an IP address") from None
    port = int(port_text)
    if port > 65535:
        raise _usage(f"Invalid {origin}: port {port} out of range")
    return host, port


def _read(path: str, what: str) -> str:
    try:
        return read_bounded_text(Path(path).expanduser())
    except (OSError, UnicodeDecodeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise _usage(f"Failed to read {what}: {path}: {detail}") from None


def parse_token_lines(text: str, origin: str) -> list[str]:
    tokens = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not tokens:
        raise _usage(f"No tokens in {origin}")
    for token in tokens:
        _check_token(token, origin)
    return tokens


def _check_token(token: str, origin: str) -> None:
    # Header values cannot carry spaces or control characters; catching it here beats a silent mismatch later.
    if not token or any(ch.isspace() or ord(ch) < 0x21 or ord(ch) > 0x7E for ch in token):
        raise _usage(f"Invalid token in {origin}: tokens must be printable ASCII without spaces")


#: iroh-relay's own config keys (the file format of upstream's relay-prod.toml.example) that mean something here.
IROH_RELAY_KEYS = frozenset({"http_bind_addr", "enable_metrics", "metrics_bind_addr", "enable_quic_addr_discovery",
                             "access", "enable_relay"})


def _from_iroh_relay(data: dict[str, Any], path: str) -> dict[str, Any]:
    """Translate an iroh-relay config (``http_bind_addr``, ``access.shared_token`` / ``access.allowlist``, ...) into
    ours, so an operator's existing relay file works. What we cannot serve (QUIC address discovery, metrics, TLS
    managed by iroh-relay) is refused when switched on, never silently dropped."""
    if not IROH_RELAY_KEYS & set(data):
        return data
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "http_bind_addr":
            out["bind"] = value
        elif key in ("enable_metrics", "enable_quic_addr_discovery"):
            if value is not False:
                raise _usage(f"'{key}' in config file {path}: this relay has no "
                             f"{'metrics server' if key == 'enable_metrics' else 'QUIC address discovery'}; "
                             "set it to false")
        elif key == "metrics_bind_addr":
            continue  # only used with enable_metrics, refused above
        elif key == "enable_relay":
            if value is not True:
                raise _usage(f"'enable_relay' in config file {path}: a relay that does not relay has nothing to do")
        elif key == "access":
            if isinstance(value, dict):
                for name, item in value.items():
                    if name == "shared_token":
                        out["tokens"] = item if isinstance(item, list) else [item]
                    elif name == "allowlist":
                        out["allowed_endpoints"] = item
                    else:
                        raise _usage(f"Unknown key in config file {path}: access.{name}")
            elif value != "everyone":
                raise _usage(f"Invalid value for 'access' in config file {path}")
        else:
            raise _usage(f"Unknown key in config file {path}: {key} (TLS for an iroh-relay file: use --tls-cert "
                         "and --tls-key)" if key == "tls" else f"Unknown key in config file {path}: {key}")
    return out


def _load_config(path: str) -> dict[str, Any]:
    text = _read(path, "config file")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _usage(f"Failed to parse config file {path}: {exc}") from None
    except RecursionError:
        raise _usage(f"Failed to parse config file {path}: tables or arrays nested too deeply") from None
    data = _from_iroh_relay(data, path)
    table = data.get("relay", data) if isinstance(data.get("relay"), dict) else data
    extra = set(data) - {"relay"} if table is not data else set()
    if extra:
        raise _usage(f"Unknown key in config file {path}: {sorted(extra)[0]} (relay settings go in [relay])")
    for key, value in table.items():
        expected = CONFIG_KEYS.get(key)
        if expected is None:
            raise _usage(f"Unknown key in config file {path}: {key}")
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            raise _usage(f"Invalid value for '{key}' in config file {path}")
    return dict(table)


def build_relay_options(argv: Sequence[str]) -> RelayOptions:
    """Flags over config over defaults; raises TunnelError (exit 2) for every usage or config problem."""
    namespace = build_relay_parser().parse_args(list(argv))
    config = _load_config(namespace.config) if namespace.config else {}
    origin_cfg = f"config file {namespace.config}"

    def pick(flag: Any, key: str) -> tuple[Any, str]:
        if flag is not None:
            return flag, f"--{key.replace('_', '-')}"
        return config.get(key), f"'{key}' in {origin_cfg}"

    dev = bool(namespace.dev if namespace.dev is not None else config.get("dev", False))
    cert, _ = pick(namespace.tls_cert, "tls_cert")
    key, _ = pick(namespace.tls_key, "tls_key")
    if (cert is None) != (key is None):
        raise _usage("--tls-cert and --tls-key must be given together")
    if dev and cert is not None:
        raise _usage("--dev serves plain HTTP; drop --dev to use --tls-cert/--tls-key")
    for path, what in ((cert, "TLS certificate"), (key, "TLS key")):
        if path is not None:
            _read(path, what)
    bind_value, bind_origin = pick(namespace.bind, "bind")
    if bind_value is not None:
        bind = parse_bind(bind_value, bind_origin)
    elif dev:
        bind = DEV_BIND
    elif cert is not None:
        bind = DEFAULT_TLS_BIND
    else:
        raise _usage("Plain HTTP needs --dev (127.0.0.1:3340) or an explicit --bind (e.g. behind a reverse proxy); "
                     "for HTTPS give --tls-cert and --tls-key")

    tokens: list[str] = []
    if namespace.token is not None:
        for token in namespace.token:
            _check_token(token, "--token")
        tokens.extend(namespace.token)
    elif "tokens" in config:
        for token in config["tokens"]:
            if not isinstance(token, str):
                raise _usage(f"Invalid value for 'tokens' in {origin_cfg}")
            _check_token(token, origin_cfg)
        tokens.extend(config["tokens"])
    token_file, _ = pick(namespace.token_file, "token_file")
    if token_file is not None:
        tokens.extend(parse_token_lines(_read(token_file, "token file"), token_file))
        check_secret_file_mode(token_file)

    allowed: frozenset[bytes] | None = None
    allow_file, _ = pick(namespace.allowed_endpoints_file, "allowed_endpoints_file")
    try:
        if allow_file is not None:
            allowed = frozenset(parse_allowed_clients(_read(allow_file, "allowed endpoints file"), allow_file))
        if namespace.allowed_endpoints_file is None and "allowed_endpoints" in config:
            ids = config["allowed_endpoints"]
            if not all(isinstance(i, str) for i in ids):
                raise _usage(f"Invalid value for 'allowed_endpoints' in {origin_cfg}")
            allowed = (allowed or frozenset()) | frozenset(parse_endpoint_id(i) for i in ids)
    except RemoteProtocolError as exc:
        raise _usage(str(exc)) from None

    rate_value, rate_origin = pick(namespace.rate_limit, "rate_limit")
    rate = parse_rate(rate_value, rate_origin) if rate_value is not None else None
    burst = parse_rate(config["rate_burst"], f"'rate_burst' in {origin_cfg}") if "rate_burst" in config else None
    depth = config.get("queue_depth", 512)
    if depth < 1:
        raise _usage(f"Invalid 'queue_depth' in {origin_cfg}: must be at least 1")
    grace = float(config.get("shutdown_grace", 1.0))
    if grace < 0:
        raise _usage(f"Invalid 'shutdown_grace' in {origin_cfg}: must not be negative")
    policy = RelayPolicy(tokens=frozenset(tokens), allowed_endpoints=allowed, rate_limit=rate, rate_burst=burst,
                         queue_depth=depth)
    return RelayOptions(bind=bind, tls_cert=cert, tls_key=key, policy=policy, shutdown_grace=grace)


def run(argv: Sequence[str]) -> int:
    """The ``tunnel relay`` command: never raises, never prints a traceback."""
    try:
        options = build_relay_options(argv)
        output.configure_logging()
        from tunnel_iroh_relay import run_relay

        run_relay(options)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except TunnelError as exc:
        output.error(exc.message)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("Interrupted; relay stopped.", file=sys.stderr, flush=True)
        return int(ExitCode.OK)
    except Exception as exc:
        output.error(f"internal error: {type(exc).__name__}: {exc}")
        return int(ExitCode.GENERAL)
    return int(ExitCode.OK)
