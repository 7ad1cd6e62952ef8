"""tunnel_io: the runtime-neutral I/O layer between the sans-IO core and the runtimes (docs/architecture.md).

Its submodules are written once against a small callback reactor (tunnel_io.reactor): the Peer's driver, local
forwarding, happy eyeballs, Nostr relay connections and the flow interpreter. This package module holds what every
piece does with the operating system the same way: plain-socket helpers (bind a host-candidate UDP socket, list
interfaces), minting a fresh QUIC certificate (OS randomness and the wall clock), deduplicating resolver answers,
and the Console that splits copy-paste blocks (stdout) from everything else (stderr).
"""

from __future__ import annotations

import datetime
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

import ifaddr
from cryptography.hazmat.primitives.asymmetric import ec

from tunnel_core.hostaddr import HostCandidateError, select_host_addresses
from tunnel_core.options import ExitCode, TunnelError
from tunnel_core.quic.identity import QuicIdentity, make_identity
from tunnel_core.types import Address

#: Large enough for QUIC bursts at 16 KB packets; the kernel clamps it to net.core.[rw]mem_max.
SOCKET_BUFFER = 4 * 1024 * 1024


SocketFactory = Callable[[int, int], Any]


class Console:
    """stdout carries only the blocks a person copies; everything else goes to stderr (upstream's split).

    Embedding programs pass their own text streams (``io.StringIO`` and friends) to supply or capture the blocks.
    """

    def __init__(self, stdin: TextIO | None = None, stdout: TextIO | None = None,
                 stderr: TextIO | None = None) -> None:
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr

    def say(self, line: str) -> None:
        print(line, file=self.stderr, flush=True)

    def block(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()


class PrefixConsole(Console):
    """A server session's console: the parent's streams, every progress line tagged with the session.

    Why here: each runtime's nostr server runs sessions as child runners that share one terminal, and the lines of
    concurrent sessions must stay attributable in the same way on asyncio, trio and gevent.
    """

    def __init__(self, parent: Console, prefix: str) -> None:
        super().__init__(parent.stdin, parent.stdout, parent.stderr)
        self.parent = parent
        self.prefix = prefix

    def say(self, line: str) -> None:
        self.parent.say(self.prefix + line)


def bind_udp(ip: str, port: int = 0, *, make_socket: SocketFactory = socket.socket) -> Any:
    """A non-blocking UDP socket with large buffers; IPv6 sockets IPv6-only, as upstream binds per family."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = make_socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            except OSError:
                pass
        sock.bind((ip, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def local_address(sock: Any) -> Address:
    name = sock.getsockname()
    return (name[0], name[1])


def list_interfaces() -> list[tuple[str, list[str]]]:
    result = []
    for adapter in ifaddr.get_adapters():
        ips = [ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip for ip in adapter.ips]
        result.append((adapter.nice_name, ips))
    return result


def bind_host_sockets(wanted: Sequence[str], *, make_socket: SocketFactory = socket.socket) -> dict[Address, Any]:
    """One UDP socket per chosen host address (tunnel_core.hostaddr decides which); unbindable ones are skipped."""
    try:
        addresses = select_host_addresses(list_interfaces(), wanted)
    except HostCandidateError as exc:
        raise TunnelError(str(exc), ExitCode.USAGE) from None
    sockets: dict[Address, Any] = {}
    for ip in addresses:
        try:
            sock = bind_udp(ip, make_socket=make_socket)
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


def unique_addresses(infos: Iterable[Any]) -> list[str]:
    """IP literals from getaddrinfo() results, in order, without duplicates or IPv6 zone ids."""
    seen: list[str] = []
    for info in infos:
        ip = str(info[4][0]).split("%")[0]
        if ip not in seen:
            seen.append(ip)
    return seen
