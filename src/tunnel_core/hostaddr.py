"""Which local addresses become ICE host candidates.

The adapter lists interfaces (that is I/O); the choice is policy and lives here so every runtime makes the same one:
explicit ``--host-candidate`` values win (IP literals or interface names); otherwise every usable unicast address
except loopback and IPv6 link-local (which needs a scope id nobody can paste); and only when nothing is left,
loopback - so the tool and its demo still work in a bare container.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from tunnel_core.errors import LocalProtocolError

#: (interface name, [ip literal, ...]) as an adapter reads it from the OS.
Interface = tuple[str, Sequence[str]]


class HostCandidateError(LocalProtocolError):
    """A --host-candidate value names neither an IP literal nor an existing interface."""


def _usable(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if addr.is_multicast or addr.is_unspecified:
        return False
    return not (addr.version == 6 and addr.is_link_local)


def select_host_addresses(interfaces: Iterable[Interface], wanted: Sequence[str] = ()) -> list[str]:
    interfaces = [(name, [ip.split("%")[0] for ip in ips]) for name, ips in interfaces]
    chosen: list[str] = []
    if wanted:
        by_name = dict(interfaces)
        for item in wanted:
            try:
                ipaddress.ip_address(item)
            except ValueError:
                if item not in by_name:
                    raise HostCandidateError(
                        f"Invalid --host-candidate '{item}': not an IP address or a local interface name"
                    ) from None
                chosen.extend(ip for ip in by_name[item] if _usable(ip))
            else:
                chosen.append(str(ipaddress.ip_address(item)))
    else:
        everything = [ip for _name, ips in interfaces for ip in ips if _usable(ip)]
        chosen = [ip for ip in everything if not ipaddress.ip_address(ip).is_loopback]
        if not chosen:
            chosen = [ip for ip in everything if ipaddress.ip_address(ip).is_loopback]
    seen: set[str] = set()
    unique = []
    for ip in chosen:
        if ip not in seen:
            seen.add(ip)
            unique.append(ip)
    # IPv4 first: upstream prefers it, and it keeps candidate order stable across runs.
    unique.sort(key=lambda ip: ipaddress.ip_address(ip).version)
    return unique
