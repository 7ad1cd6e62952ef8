"""The manual (copy/paste) mode's dialogue, shared by every runtime.

Adapters only move text between stdin/stdout and sockets; what goes into an offer, what an answer must contain and
the exact lines a user sees are decided here once, so asyncio, trio and gevent behave identically.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from tunnel_core.blocks import BlockError, ManualAnswer, ManualOffer
from tunnel_core.candidate import Candidate, CandidateType
from tunnel_core.errors import LocalProtocolError
from tunnel_core.ice.agent import IceAgent
from tunnel_core.peertext import quote_peer
from tunnel_core.policy import Source, parse_source
from tunnel_core.quic.identity import normalize_fingerprint

CLIENT_BANNER = "Manual Tunnel - Client Mode (Client-First)"
SERVER_BANNER = "Manual Tunnel - Server Mode (Client-First)"
OFFER_TITLE = "Manual Offer (copy to server):"
ANSWER_TITLE = "Manual Answer (copy to client):"
PROMPT_FOR_ANSWER = "Paste server answer (include BEGIN/END markers), then press Enter:"
PROMPT_FOR_OFFER = "Paste client offer (include BEGIN/END markers), then press Enter:"
MISSING_SOURCE = "Offer missing source field. Client must specify --source (e.g., --source tcp://127.0.0.1:22)"
MISSING_FINGERPRINT = "Answer missing QUIC fingerprint. Server must include fingerprint in answer."
NO_CANDIDATES = "No ICE candidates gathered (STUN failed?)"
BAD_UFRAG = "Invalid ICE credentials: ice_ufrag must be 4 to 256 characters of A-Z a-z 0-9 + /"
BAD_PWD = "Invalid ICE credentials: ice_pwd must be 22 to 256 characters of A-Z a-z 0-9 + /"
BAD_FINGERPRINT = "Invalid QUIC fingerprint: expected the 64 hex digits of a SHA-256 certificate fingerprint"

#: RFC 8839 ice-ufrag / ice-pwd grammar (4..256 / 22..256 ice-chars): what a STUN USERNAME can carry.
_UFRAG = re.compile(r"[A-Za-z0-9+/]{4,256}")
_PWD = re.compile(r"[A-Za-z0-9+/]{22,256}")


@attrs.frozen
class RemoteIce:
    """The peer's ICE side, checked: credentials a STUN message can carry and parsed candidates."""

    ufrag: str
    pwd: str
    candidates: tuple[Candidate, ...]


def remote_ice(ufrag: str, pwd: str, candidates: Sequence[str]) -> RemoteIce:
    """Check everything the peer sent for ICE before any of it reaches a machine or the user sees a reply.

    Issue 18 items 2 and 7: an oversized ufrag used to pass here and fail deep inside the agent's STUN encoder (a
    traceback, then a hang), and the server printed its ANSWER before finding out. Raises ``BlockError`` (exit 2).
    """
    if not isinstance(ufrag, str) or not _UFRAG.fullmatch(ufrag):
        raise BlockError(BAD_UFRAG)
    if not isinstance(pwd, str) or not _PWD.fullmatch(pwd):
        raise BlockError(BAD_PWD)
    return RemoteIce(ufrag, pwd, tuple(parse_candidates(candidates)))


def peer_fingerprint(text: str | None) -> str:
    """The peer's certificate fingerprint to pin, normalised; ``BlockError`` (exit 2) if it is not one (item 3)."""
    if not text:
        raise BlockError(MISSING_FINGERPRINT)
    try:
        return normalize_fingerprint(text)
    except LocalProtocolError:
        raise BlockError(f"{BAD_FINGERPRINT}, got '{quote_peer(text, 80)}'") from None


def candidate_strings(agent: IceAgent) -> tuple[str, ...]:
    return tuple(c.to_sdp() for c in agent.local_candidates)


def make_offer(agent: IceAgent, source: str, extra_sources: Sequence[str] = ()) -> ManualOffer:
    """The client's offer: its ICE credentials and candidates plus the source it wants (no fingerprint: the client
    is the QUIC client) and, for several forwards, the sources of the others (docs/forwards.md)."""
    return ManualOffer(
        ice_ufrag=agent.local_ufrag,
        ice_pwd=agent.local_pwd,
        candidates=candidate_strings(agent),
        quic_fingerprint="",
        source=source,
        extra_sources=tuple(extra_sources),
    )


def make_answer(agent: IceAgent, fingerprint: str, forward_verdicts: Sequence[str] | None = None) -> ManualAnswer:
    return ManualAnswer(
        ice_ufrag=agent.local_ufrag,
        ice_pwd=agent.local_pwd,
        candidates=candidate_strings(agent),
        quic_fingerprint=fingerprint,
        forward_verdicts=forward_verdicts,
    )


def offer_source(offer: ManualOffer) -> Source:
    """The source the client asks for; malformed or missing sources are the pasted input's fault."""
    if not offer.source or not offer.source.strip():
        raise BlockError(MISSING_SOURCE)
    return parse_source(offer.source.strip())


def answer_fingerprint(answer: ManualAnswer) -> str:
    return peer_fingerprint(answer.quic_fingerprint)


def parse_candidates(texts: Sequence[str]) -> list[Candidate]:
    """Parse every remote candidate; one bad line fails the whole block (upstream: `Invalid ICE candidate: <c>`)."""
    return [Candidate.from_sdp(t) for t in texts]


def connected_lines(connection_type: str, local: tuple[str, int], remote: tuple[str, int]) -> list[str]:
    return [
        "ICE connection established!",
        f"   Connection: {connection_type}",
        f"   Local: {format_address(local)} -> Remote: {format_address(remote)}",
    ]


def format_address(addr: tuple[str, int]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe_candidates(candidates: Sequence[Candidate]) -> str:
    counts = {t: sum(1 for c in candidates if c.type == t) for t in CandidateType}
    return ", ".join(f"{n} {t.value}" for t, n in counts.items() if n)
