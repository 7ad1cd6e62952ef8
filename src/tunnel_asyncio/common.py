"""asyncio-side helpers the runners share: host sockets, name resolution, a fresh QUIC identity."""

from __future__ import annotations

import asyncio
import datetime
import socket
from collections.abc import Sequence

import ifaddr
from cryptography.hazmat.primitives.asymmetric import ec

from tunnel_asyncio.driver import bind_udp, local_address
from tunnel_core.hostaddr import HostCandidateError, select_host_addresses
from tunnel_core.options import ExitCode, TunnelError
from tunnel_core.quic.identity import QuicIdentity, make_identity
from tunnel_core.types import Address


def list_interfaces() -> list[tuple[str, list[str]]]:
    result = []
    for adapter in ifaddr.get_adapters():
        ips = []
        for ip in adapter.ips:
            ips.append(ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip)
        result.append((adapter.nice_name, ips))
    return result


def bind_host_sockets(wanted: Sequence[str]) -> dict[Address, socket.socket]:
    try:
        addresses = select_host_addresses(list_interfaces(), wanted)
    except HostCandidateError as exc:
        raise TunnelError(str(exc), ExitCode.USAGE) from None
    sockets: dict[Address, socket.socket] = {}
    for ip in addresses:
        try:
            sock = bind_udp(ip)
        except OSError:
            continue  # upstream skips addresses it cannot bind
        sockets[local_address(sock)] = sock
    if not sockets:
        raise TunnelError("Failed to determine local IP for ICE", ExitCode.CONNECT_FAILED)
    return sockets


def new_identity() -> QuicIdentity:
    """A fresh ECDSA P-256 self-signed certificate per session, as upstream's rcgen default."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    return make_identity(key, not_before=now - datetime.timedelta(days=1), not_after=now + datetime.timedelta(days=30))


async def resolve_all(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    seen: list[str] = []
    for info in infos:
        ip = str(info[4][0]).split("%")[0]
        if ip not in seen:
            seen.append(ip)
    return seen
