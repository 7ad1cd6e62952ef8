"""Checks of single user-supplied values (CIDRs, sources, targets, STUN/TURN servers, host candidates, packet
sizes), with the reference's wording; each raises a usage error (exit 2) before anything runs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from tunnel_cli.config import usage_error
from tunnel_core.turn import parse_turn_url

#: QUIC datagram size bounds: below 1200 QUIC itself refuses to run (RFC 9000 14.1); above 16000 no real path
#: (even loopback with jumbo MTU) carries the datagram unfragmented.
PACKET_SIZE_MIN = 1200
PACKET_SIZE_MAX = 16000

STUN_EXAMPLE = "host:port (e.g., stun.l.google.com:19302)"
TURN_EXAMPLE = "turn:HOST:PORT (e.g., turn:turn.example.org:3478)"
CIDR_EXAMPLE = "192.168.0.0/16 or ::1/128"


def cidr_ok(text: str) -> bool:
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
        raise usage_error(f"Invalid STUN server '{server}' in {where}. Expected format: {STUN_EXAMPLE}")
    return server


def check_turn_server(server: str, where: str) -> str:
    try:
        parse_turn_url(server)
    except ValueError:
        raise usage_error(f"Invalid TURN server '{server}' in {where}. Expected format: {TURN_EXAMPLE}") from None
    return server.strip()



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


def parse_cli_packet_size(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise usage_error(
            f"Invalid --packet-size '{text}'. "
            f"Expected an integer between {PACKET_SIZE_MIN} and {PACKET_SIZE_MAX}"
        ) from None
    return check_packet_size(value, "--packet-size")




#: Units ``--reconnect-timeout`` understands, in seconds.
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
#: A day: longer is a typo, not a plan (the tunnel would hold listeners for a peer that is not coming back).
MAX_DURATION = 86400.0


def parse_duration(value: object, where: str) -> float:
    """``--reconnect-timeout`` / ``reconnect_timeout``: seconds as a number, or text like ``90``, ``90s``, ``5m``,
    ``1h``; 0 is allowed (it turns reconnecting off)."""
    text = str(value).strip().lower() if not isinstance(value, bool) else ""
    number, unit = text, ""
    if text and text[-1] in "smh":
        number, unit = text[:-1], text[-1]
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_DURATION or seconds != seconds:
        raise usage_error(f"Invalid {where} '{value}'. Expected a duration such as 0, 90, 90s, 5m or 1h "
                          "(at most 24h)")
    return seconds
