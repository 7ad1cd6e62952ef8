"""Events the ICE agent reports through ``IceAgent.next_event()``.

Frozen value classes so the peer and the tests can compare them; the failure reasons are upstream's exact
wording because the CLI prints them unchanged (upstream-spec.md 4.5).
"""

from __future__ import annotations

import attrs

from tunnel_core.candidate import Candidate
from tunnel_core.types import Address

__all__ = [
    "REASON_ALL_FAILED",
    "REASON_TIMEOUT",
    "ConsentDegraded",
    "ConsentLost",
    "ConsentRestored",
    "GatheringComplete",
    "IceEvent",
    "IceFailed",
    "NominationIgnored",
    "PairSelected",
    "PathAnswered",
    "RoleChanged",
    "ServerReflexiveDiscovered",
]

REASON_ALL_FAILED = (
    "ICE connectivity failed - peers may be behind incompatible NAT types. "
    "Consider using iroh mode for more reliable connectivity."
)
REASON_TIMEOUT = (
    "ICE connection timeout - NAT traversal may have failed. "
    "Consider using iroh mode for more reliable connectivity."
)


@attrs.frozen
class GatheringComplete:
    """Every local candidate we will signal is known (non-trickle: the offer/answer can be written now).

    ``relay_errors`` says why a configured TURN server gave no relay candidate (one line each, no secrets), so the
    user learns about a wrong password here rather than from a failed connection later."""

    candidates: tuple[Candidate, ...]
    relay_errors: tuple[str, ...] = ()


@attrs.frozen
class ServerReflexiveDiscovered:
    """A STUN server told us how ``base`` looks from outside; reported even when redundant (mapped == base)."""

    server: Address
    base: Address
    mapped: Address


@attrs.frozen
class PairSelected:
    """ICE chose (local, remote); send from the socket bound at ``local_address`` to ``remote_address``.

    Reported once: after selection no nomination moves the pair (an attacker who saw the OFFER and the ANSWER can
    forge one); the path moves only when the QUIC layer validated another one (``IceAgent.follow_path``).
    """

    local: Candidate
    remote: Candidate
    local_address: Address
    remote_address: Address


@attrs.frozen
class NominationIgnored:
    """An authenticated nomination of another path arrived after selection and was not followed (docs/security.md).

    Reported once per remote address. Only someone holding the ICE credentials of both blocks can send one: the real
    peer roaming with aggressive nomination, or someone who saw the pasted blocks. Either way the tunnel stays on
    the path QUIC validated; a real peer's QUIC packets from the new address move it there safely.
    """

    local_address: Address
    remote_address: Address


@attrs.frozen
class PathAnswered:
    """After selection, a re-check of another pair was answered by the peer (tunnel_core.ice.roaming): a path
    that works now. Nothing moved: the QUIC client may send from there (``IceAgent.move_to``); the QUIC server
    follows only once QUIC validated the path."""

    local: Candidate
    remote: Candidate
    local_address: Address
    remote_address: Address


@attrs.frozen
class RoamingCandidate:
    """After selection, a candidate gathered from a new local address (tunnel_core.ice.roaming): the
    server-reflexive address a STUN server saw, or a TURN relayed address whose pairs are then re-checked. Not
    signalled (manual mode has no channel for it); reported so the user sees what the new network offers."""

    candidate: Candidate
    base: Address


@attrs.frozen
class RoamingRelayFailed:
    """After selection, a TURN allocation from a new local address failed (the relay refused, or never answered):
    the new network offers no relayed path through that server. Reported so a user whose direct path is gone
    learns why no relay took over."""

    server: Address
    base: Address
    reason: str


@attrs.frozen
class IceFailed:
    reason: str


@attrs.frozen
class ConsentLost:
    """The selected pair stopped answering consent checks (RFC 7675): the path is gone, tear down."""


@attrs.frozen
class ConsentDegraded:
    """The selected pair has not answered consent checks for a while (a cut, a roaming client). Nothing ends yet:
    consent is still valid until ``ConsentLost``; checks now run every ``consent_retry_interval``. ``since`` is
    when consent was last confirmed."""

    since: float


@attrs.frozen
class ConsentRestored:
    """A consent check was answered again after ``ConsentDegraded``: the path is back. ``outage`` is how long no
    answer came. The Peer prods QUIC to probe at once (its probe timeout backed off during the cut)."""

    outage: float


@attrs.frozen
class RoleChanged:
    """A role conflict (RFC 8445 7.3.1.1 / 7.2.5.1) flipped our role."""

    controlling: bool


IceEvent = (
    GatheringComplete | ServerReflexiveDiscovered | PairSelected | NominationIgnored | PathAnswered | IceFailed
    | ConsentLost | RoamingCandidate
    | ConsentDegraded | ConsentRestored | RoleChanged
)
