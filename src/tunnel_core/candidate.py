"""ICE candidate strings, priorities and foundations (upstream-spec.md 4.4 and 4.5).

Candidate strings arrive inside pasted offers and Nostr events, so ``Candidate.from_sdp`` treats them as
hostile and raises only ``CandidateError``, worded as the reference does (``Invalid ICE candidate: <text>``).
It reads str0m's ``candidate:`` form (what tunnel-rs peers send), the ``a=candidate:`` SDP line and aioice's
prefix-less form, so interop tests can feed either implementation's output straight in.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from enum import StrEnum

import attrs

from tunnel_core.errors import LocalProtocolError, RemoteProtocolError
from tunnel_core.peertext import quote_peer
from tunnel_core.types import Address

__all__ = [
    "TYPE_PREFERENCE",
    "Candidate",
    "CandidateError",
    "CandidateType",
    "compute_foundation",
    "compute_priority",
    "local_preference",
]


class CandidateError(RemoteProtocolError):
    """A candidate string from the peer cannot be used."""


class CandidateType(StrEnum):
    HOST = "host"
    SRFLX = "srflx"
    PRFLX = "prflx"
    RELAY = "relay"


#: RFC 8445 5.1.2.2 type preferences, as str0m uses them (relay 0: only when nothing else works).
TYPE_PREFERENCE: dict[CandidateType, int] = {
    CandidateType.HOST: 126,
    CandidateType.PRFLX: 110,
    CandidateType.SRFLX: 100,
    CandidateType.RELAY: 0,
}

#: Upstream's local-preference override starts (spec 4.5); IPv4 is preferred by giving IPv6 one less.
_LOCAL_PREFERENCE_START: dict[CandidateType, int] = {
    CandidateType.HOST: 65535,
    CandidateType.PRFLX: 49151,
    CandidateType.SRFLX: 32767,
    CandidateType.RELAY: 16383,
}

# RFC 8839 ice-char tokens for foundation and ufrag; plain digits for numbers, because int() would also take
# "+1", " 1" and "1_0", which no peer writes and which would not survive a round trip.
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]{1,256}")
_FOUNDATION = re.compile(r"[A-Za-z0-9+/]{1,32}")
_DIGITS = re.compile(r"[0-9]{1,10}")
_TRANSPORTS = frozenset({"udp", "tcp"})


def _canonical_ip(text: str) -> str:
    """The socket module's spelling of an IP literal; scope ids and brackets are refused."""
    if "%" in text:
        raise ValueError("scoped address")
    return ipaddress.ip_address(text).compressed


def _number(text: str, low: int, high: int) -> int:
    if not _DIGITS.fullmatch(text):
        raise ValueError(f"not a number: {text!r}")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"out of range: {value}")
    return value


@attrs.frozen
class Candidate:
    """One ICE candidate. ``host``/``related_address`` are canonical IP literals without brackets."""

    foundation: str
    component: int
    transport: str
    priority: int
    host: str
    port: int
    type: CandidateType = attrs.field(converter=CandidateType)
    related_address: str | None = None
    related_port: int | None = None
    ufrag: str | None = None

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    def to_sdp(self) -> str:
        """str0m's ``to_sdp_string()`` without ``a=``; raddr/rport are written exactly as given.

        The agent, not this codec, decides to hide the real base behind ``0.0.0.0``/``::`` and ``0`` as
        str0m does; a field left as None is simply not written.
        """
        text = (
            f"candidate:{self.foundation} {self.component} {self.transport} {self.priority} "
            f"{self.host} {self.port} typ {self.type.value}"
        )
        if self.related_address is not None:
            text += f" raddr {self.related_address}"
        if self.related_port is not None:
            text += f" rport {self.related_port}"
        if self.ufrag is not None:
            text += f" ufrag {self.ufrag}"
        return text

    @classmethod
    def from_sdp(cls, text: str) -> Candidate:
        """Parse any of the three spellings; unknown trailing ``key value`` pairs (generation, network-id) are
        skipped, as RFC 8839 extension attributes must be."""
        try:
            return cls._parse(text)
        except (ValueError, TypeError, AttributeError) as exc:
            raise CandidateError(f"Invalid ICE candidate: {quote_peer(str(text))}") from exc

    @classmethod
    def _parse(cls, text: str) -> Candidate:
        body = text.strip()
        if body.startswith("a="):
            body = body[2:]
        if body[:10].lower() == "candidate:":
            body = body[10:]
        bits = body.split()
        if len(bits) < 8 or (len(bits) - 8) % 2 or bits[6] != "typ":
            raise ValueError("wrong number of fields")
        foundation, component, transport, priority, host, port, _, ctype = bits[:8]
        if not _FOUNDATION.fullmatch(foundation):
            raise ValueError("bad foundation")
        transport = transport.lower()
        if transport not in _TRANSPORTS:
            raise ValueError("unknown transport")
        related_address: str | None = None
        related_port: int | None = None
        ufrag: str | None = None
        for key, value in zip(bits[8::2], bits[9::2], strict=True):
            if key == "raddr":
                related_address = _canonical_ip(value)
            elif key == "rport":
                related_port = _number(value, 0, 0xFFFF)
            elif key == "ufrag":
                if not _ICE_CHARS.fullmatch(value):
                    raise ValueError("bad ufrag")
                ufrag = value
        return cls(
            foundation=foundation,
            component=_number(component, 1, 256),
            transport=transport,
            priority=_number(priority, 0, 0xFFFFFFFF),
            host=_canonical_ip(host),
            port=_number(port, 0, 0xFFFF),
            type=CandidateType(ctype),
            related_address=related_address,
            related_port=related_port,
            ufrag=ufrag,
        )


def local_preference(ctype: CandidateType, is_ipv6: bool, index: int) -> int:
    """Upstream's override of str0m's local preference: per-kind start, IPv4 first, then gathering order.

    Steps of two leave room for the IPv6 twin of each candidate, so v4 and v6 never collide.
    """
    if index < 0:
        raise LocalProtocolError(f"candidate index must be >= 0, got {index}")
    value = _LOCAL_PREFERENCE_START[CandidateType(ctype)] - (1 if is_ipv6 else 0) - 2 * index
    if value < 0:
        raise LocalProtocolError(f"too many candidates of kind {ctype}: local preference would be negative")
    return value


def compute_priority(ctype: CandidateType, local_pref: int, component: int = 1) -> int:
    """RFC 8445 5.1.2.1 priority; the first IPv4 host candidate gets 2130706431."""
    if not 0 <= local_pref <= 0xFFFF:
        raise LocalProtocolError(f"local preference out of range: {local_pref}")
    if not 1 <= component <= 256:
        raise LocalProtocolError(f"component out of range: {component}")
    return (TYPE_PREFERENCE[CandidateType(ctype)] << 24) | (local_pref << 8) | (256 - component)


def compute_foundation(ctype: CandidateType, base_ip: str, server: str | None = None) -> str:
    """Deterministic foundation: RFC 8445 5.1.1.3 wants equal foundations for equal (type, base IP, server),
    which a hash gives without the agent keeping a table, and without any randomness in the core."""
    material = f"{CandidateType(ctype).value}|{base_ip}|{server or ''}|udp".encode()
    return hashlib.blake2s(material, digest_size=4).hexdigest()
