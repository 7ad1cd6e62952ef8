"""Which destinations a server may dial for a client: source/target parsing, CIDR allowlists, and the
resolve-then-check decision (reference 1.5).

Deliberately stricter than upstream (reference 8.3):

* an empty allowlist for a protocol denies that protocol instead of allowing every destination;
* a hostname is allowed only if EVERY address it resolves to is allowed, and the decision carries exactly those
  addresses so the server dials what was checked (no second resolution, no DNS time-of-check/time-of-use gap);
* an IPv4-mapped IPv6 address is judged as the IPv4 address it reaches, so ``::/0`` cannot smuggle in IPv4;
* IPv6 literal sources (``tcp://[::1]:22``) work.

Resolution itself is I/O, so the policy never does it: ``decide`` returns ``NeedsResolution`` and the adapter
calls ``decide_resolved`` with what getaddrinfo said.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Literal

import attrs

from tunnel_core.errors import LocalProtocolError, RemoteProtocolError
from tunnel_core.peertext import quote_peer
from tunnel_core.types import Address
from tunnel_core.wire import truncate_reason

__all__ = [
    "AccessPolicy",
    "Decision",
    "NeedsResolution",
    "Network",
    "PolicyError",
    "Source",
    "parse_cidr",
    "parse_source",
    "parse_target",
]


class PolicyError(RemoteProtocolError):
    """A source, target or CIDR text is malformed (the wording is upstream's, so users see familiar errors)."""


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Protocol = Literal["tcp", "udp"]

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)
_PORT = re.compile(r"[0-9]{1,5}")
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")
_CIDR = re.compile(r"([0-9A-Fa-f:.]+)/([0-9]{1,3})")
_MAX_HOSTNAME = 253


@attrs.frozen
class Source:
    """A destination the client asks the server to forward to. ``host`` is a hostname or a bare IP literal."""

    protocol: Protocol
    host: str
    port: int

    def url(self) -> str:
        """The canonical text form, with IPv6 literals bracketed (what goes on the wire and in messages)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.protocol}://{host}:{self.port}"


def _ip_literal(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if "%" in text:  # zone ids have no meaning on the peer's machine
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _parse_host(text: str) -> str | None:
    """A host as it appears in ``host:port`` (IPv6 in brackets); the normalised bare host, or None if invalid."""
    if text.startswith("["):
        if not text.endswith("]"):
            return None
        inner = _ip_literal(text[1:-1])
        if not isinstance(inner, ipaddress.IPv6Address):
            return None
        return str(inner)
    literal = _ip_literal(text)
    if isinstance(literal, ipaddress.IPv4Address):
        return str(literal)
    if literal is not None:  # an unbracketed IPv6 literal cannot be told apart from host:port
        return None
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > _MAX_HOSTNAME:
        return None
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return None
    # A name whose last label is numeric would be read as a (malformed) IPv4 address by URL parsers and
    # resolvers (e.g. "1.2.3.999", "0x7f.1"); refuse it rather than guess.
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        return None
    return name.lower()


def _split_host_port(text: str) -> tuple[str, str] | None:
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            return None
        return text[: close + 1], text[close + 2 :]
    host, sep, port = text.rpartition(":")
    if not sep:
        return None
    return host, port


def _parse_port(text: str, *, allow_zero: bool) -> int | None:
    if not _PORT.fullmatch(text):
        return None
    port = int(text)
    if port > 0xFFFF or (port == 0 and not allow_zero):
        return None
    return port


def parse_source(text: str) -> Source:
    """``tcp://host:port`` or ``udp://host:port`` (scheme case-insensitive) to a normalised Source."""

    def invalid() -> PolicyError:
        return PolicyError(
            f"Invalid source '{quote_peer(text)}'. Expected format: tcp://host:port or udp://host:port")

    match = _SCHEME.fullmatch(text.strip())
    if not match:
        raise invalid()
    scheme = match.group(1).lower()
    if scheme not in ("tcp", "udp"):
        raise invalid()
    parts = _split_host_port(match.group(2))
    if parts is None:
        raise invalid()
    host = _parse_host(parts[0])
    port = _parse_port(parts[1], allow_zero=False)
    if host is None or port is None:
        raise invalid()
    protocol: Protocol = "tcp" if scheme == "tcp" else "udp"
    return Source(protocol=protocol, host=host, port=port)


def parse_target(text: str) -> tuple[str, int]:
    """A local listen address ``host:port`` or ``[v6]:port``; the host comes back without brackets.

    Port 0 is accepted: it asks the OS for a free port, which tests and scripts rely on.
    """

    def invalid() -> PolicyError:
        return PolicyError(
            f"Invalid target '{quote_peer(text)}'. Expected format: host:port (e.g., localhost:2222 or 127.0.0.1:2222)"
        )

    parts = _split_host_port(text.strip())
    if parts is None:
        raise invalid()
    host = _parse_host(parts[0])
    port = _parse_port(parts[1], allow_zero=True)
    if host is None or port is None:
        raise invalid()
    return host, port


def parse_cidr(text: str, option: str = "--allowed-tcp") -> Network:
    """``addr/prefix`` for IPv4 or IPv6; host bits are allowed (``10.1.2.3/8`` means ``10.0.0.0/8``)."""
    error = PolicyError(f"Invalid CIDR '{quote_peer(text)}' in {option}. Expected format: 192.168.0.0/16 or ::1/128")
    match = _CIDR.fullmatch(text.strip())
    if not match:
        raise error
    address = _ip_literal(match.group(1))
    prefix = int(match.group(2))
    if address is None or prefix > address.max_prefixlen:
        raise error
    return ipaddress.ip_network(f"{address}/{prefix}", strict=False)


@attrs.frozen
class NeedsResolution:
    """The policy cannot decide before the adapter resolves ``host`` (getaddrinfo) and calls decide_resolved."""

    host: str
    port: int


@attrs.frozen
class Decision:
    """The verdict. When allowed, ``addresses`` are exactly the checked addresses: dial those and nothing else."""

    allowed: bool
    addresses: tuple[Address, ...] = ()
    reason: str | None = None


def _effective(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _format_networks(networks: Sequence[Network]) -> str:
    # Rust's Debug rendering of a Vec<String>, which is what upstream users see.
    return "[" + ", ".join(f'"{network}"' for network in networks) + "]"


@attrs.frozen
class AccessPolicy:
    """The server's allowlists, one per protocol. Empty means that protocol is refused."""

    tcp: tuple[Network, ...] = attrs.field(default=(), converter=tuple)
    udp: tuple[Network, ...] = attrs.field(default=(), converter=tuple)

    @classmethod
    def from_strings(cls, tcp: Sequence[str], udp: Sequence[str]) -> AccessPolicy:
        return cls(
            tcp=tuple(parse_cidr(c, "--allowed-tcp") for c in tcp),
            udp=tuple(parse_cidr(c, "--allowed-udp") for c in udp),
        )

    def _networks(self, protocol: Protocol) -> tuple[Network, ...]:
        return self.tcp if protocol == "tcp" else self.udp

    def _not_configured(self, source: Source) -> Decision:
        return Decision(
            allowed=False,
            reason=truncate_reason(
                f"Source '{source.url()}': {source.protocol} forwarding is not allowed by this server "
                f"(no --allowed-{source.protocol} networks configured)"
            ),
        )

    def decide(self, source: Source) -> Decision | NeedsResolution:
        """Decide at once for an IP literal (or an unconfigured protocol); otherwise ask for resolution."""
        if not self._networks(source.protocol):
            return self._not_configured(source)
        if _ip_literal(source.host) is None:
            return NeedsResolution(host=source.host, port=source.port)
        return self.decide_resolved(source, [source.host])

    def decide_resolved(self, source: Source, addresses: Sequence[str]) -> Decision:
        """Allow only if every resolved address lies in some allowed network of the source's protocol."""
        networks = self._networks(source.protocol)
        if not networks:
            return self._not_configured(source)
        checked: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        for text in addresses:
            try:
                # Zone ids (fe80::1%eth0) from getaddrinfo are dropped: containment ignores them anyway.
                parsed = ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError as exc:
                raise LocalProtocolError(f"resolver returned a non-address {text!r}") from exc
            effective = _effective(parsed)
            if effective not in checked:
                checked.append(effective)
        if not checked:
            return Decision(
                allowed=False,
                reason=truncate_reason(f"Source '{source.url()}': DNS resolution returned no addresses"),
            )
        wildcard = next((address for address in checked if address.is_unspecified), None)
        if wildcard is not None:
            # Issue 18 item 8: connecting to 0.0.0.0 / :: reaches this machine's own services (the kernel treats
            # it as localhost), whatever the allowlist meant by containing the wildcard address.
            return Decision(
                allowed=False,
                reason=truncate_reason(
                    f"Source '{source.url()}': the unspecified address {wildcard} is not a destination "
                    "(it would reach this machine itself)"
                ),
            )
        if all(any(address in network for network in networks) for address in checked):
            return Decision(allowed=True, addresses=tuple((str(address), source.port) for address in checked))
        resolved = ", ".join(str(address) for address in checked)
        return Decision(
            allowed=False,
            reason=truncate_reason(
                f"Source '{source.url()}' (resolved to {resolved}) not in allowed networks "
                f"{_format_networks(networks)}"
            ),
        )

    def resolution_failed(self, source: Source, error: str) -> Decision:
        """The adapter's resolver failed; the rejection carries its message as upstream's does."""
        return Decision(
            allowed=False, reason=truncate_reason(f"Source '{source.url()}': DNS resolution failed: {error}")
        )
