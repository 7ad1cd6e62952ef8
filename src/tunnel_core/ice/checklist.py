"""Candidate pairs, their state table and checklist formation (RFC 8445 6.1.2, 6.1.4, 7.2.5.3.3).

Pair states change only through ``CandidatePair.apply(trigger)``, which consults ``TRANSITIONS``: an explicit
table is easier to audit against the RFC than transitions scattered through the agent, and an impossible
transition raises instead of silently corrupting the checklist.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence

import attrs

from tunnel_core.candidate import Candidate, CandidateType
from tunnel_core.errors import LocalProtocolError
from tunnel_core.types import Address

__all__ = [
    "MAX_PAIRS",
    "TRANSITIONS",
    "CandidatePair",
    "PairState",
    "Trigger",
    "form_checklist",
    "is_ipv6",
    "pair_priority",
]

#: RFC 8445 6.1.2.5 asks for a limit; 100 is the RFC's example and aioice's value.
MAX_PAIRS = 100


class PairState(enum.Enum):
    FROZEN = "frozen"
    WAITING = "waiting"
    IN_PROGRESS = "in-progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Trigger(enum.Enum):
    #: a check with the same foundation succeeded, or the scheduler picked a frozen pair (6.1.4.2, 7.2.5.3.3)
    UNFREEZE = "unfreeze"
    #: a connectivity check for the pair was sent (ordinary or triggered)
    SEND = "send"
    #: a peer's check arrived on the pair, so it goes (back) to the triggered queue (7.3.1.4)
    TRIGGER = "trigger"
    #: a success response that passed the checks of 7.2.5.2
    SUCCESS = "success"
    #: timeout, unrecoverable error response, or a response from the wrong address
    FAILURE = "failure"
    #: a 487 response: retry the same pair in the other role (7.2.5.1)
    ROLE_CONFLICT = "role-conflict"


F, W, P, S, X = (PairState.FROZEN, PairState.WAITING, PairState.IN_PROGRESS, PairState.SUCCEEDED,
                 PairState.FAILED)

#: (state, trigger) -> new state. Pairs absent from the table are programming errors.
TRANSITIONS: dict[tuple[PairState, Trigger], PairState] = {
    (F, Trigger.UNFREEZE): W,
    (F, Trigger.TRIGGER): W,
    (F, Trigger.SEND): P,
    (W, Trigger.UNFREEZE): W,
    (W, Trigger.TRIGGER): W,
    (W, Trigger.SEND): P,
    # 7.3.1.4: an in-progress check is cancelled (no more retransmits) and the pair re-queued as triggered.
    (P, Trigger.UNFREEZE): P,
    (P, Trigger.TRIGGER): W,
    (P, Trigger.SUCCESS): S,
    (P, Trigger.FAILURE): X,
    (P, Trigger.ROLE_CONFLICT): W,
    # A succeeded pair stays valid; a peer's check on it needs no new check (7.3.1.4), but the controlling
    # side still sends its nomination check on it, and a late response of a cancelled transaction is welcome.
    (S, Trigger.UNFREEZE): S,
    (S, Trigger.TRIGGER): S,
    (S, Trigger.SEND): S,
    (S, Trigger.SUCCESS): S,
    (S, Trigger.ROLE_CONFLICT): S,
    # A failed nomination check (or a consent-style timeout on it) removes the pair from the valid list.
    (S, Trigger.FAILURE): X,
    # 7.3.1.4: a peer's check revives a failed pair.
    (X, Trigger.UNFREEZE): X,
    (X, Trigger.TRIGGER): W,
    (X, Trigger.FAILURE): X,
    # A response from a cancelled transaction can still prove the path.
    (X, Trigger.SUCCESS): S,
    (W, Trigger.SUCCESS): S,
    (F, Trigger.SUCCESS): S,
}


def is_ipv6(host: str) -> bool:
    return ipaddress.ip_address(host).version == 6


def pair_priority(controlling: Candidate, controlled: Candidate) -> int:
    """RFC 8445 6.1.2.3: 2^32*MIN(G,D) + 2*MAX(G,D) + (G>D?1:0)."""
    g, d = controlling.priority, controlled.priority
    return (min(g, d) << 32) + 2 * max(g, d) + (1 if g > d else 0)


@attrs.define(eq=False)
class CandidatePair:
    """One pair of the checklist; ``local`` is always a candidate whose base is a socket of ours.

    ``valid_local`` is the local candidate of the *valid* pair the last successful check produced (7.2.5.3.2):
    the XOR-MAPPED-ADDRESS may name our srflx or a new prflx candidate rather than ``local`` itself.
    """

    local: Candidate
    remote: Candidate
    base: Address
    priority: int = 0
    state: PairState = PairState.FROZEN
    valid_local: Candidate | None = None
    #: controlled side: a USE-CANDIDATE arrived, select the pair once our check on it succeeds (7.3.1.5)
    nominate_on_success: bool = False
    nominated: bool = False

    @property
    def foundation(self) -> tuple[str, str]:
        return (self.local.foundation, self.remote.foundation)

    @property
    def key(self) -> tuple[Address, Address]:
        return (self.base, self.remote.address)

    def apply(self, trigger: Trigger) -> PairState:
        try:
            self.state = TRANSITIONS[(self.state, trigger)]
        except KeyError:
            raise LocalProtocolError(f"no pair transition from {self.state} on {trigger}") from None
        return self.state

    def update_priority(self, controlling: bool) -> None:
        self.priority = _ordered_priority(self.local, self.remote, controlling)

    def valid_priority(self, controlling: bool) -> int:
        """Priority of the valid pair this pair produced (what nomination compares)."""
        return _ordered_priority(self.valid_local or self.local, self.remote, controlling)


def _ordered_priority(local: Candidate, remote: Candidate, controlling: bool) -> int:
    return pair_priority(local, remote) if controlling else pair_priority(remote, local)


def form_checklist(
    locals_: Sequence[tuple[Candidate, Address]],
    remotes: Sequence[Candidate],
    controlling: bool,
    limit: int = MAX_PAIRS,
) -> list[CandidatePair]:
    """Pair, prune and order (RFC 8445 6.1.2.2 - 6.1.2.6).

    ``locals_`` are (candidate, base). Server-reflexive locals are replaced by the host candidate of their base
    (we cannot send *from* a reflexive address), which makes them duplicates that pruning removes. Only
    same-family, same-component UDP pairs are formed. The first pair of each foundation starts Waiting, the
    rest Frozen.
    """
    host_of_base = {base: c for c, base in locals_ if c.type is CandidateType.HOST}
    best: dict[tuple[Address, Address], CandidatePair] = {}
    for local, base in locals_:
        if local.type is CandidateType.SRFLX:
            replaced = host_of_base.get(base)
            if replaced is None:
                continue
            local = replaced
        for remote in remotes:
            if remote.component != local.component or remote.transport.lower() != "udp":
                continue
            if is_ipv6(remote.host) != is_ipv6(local.host):
                continue
            pair = CandidatePair(local=local, remote=remote, base=base)
            pair.update_priority(controlling)
            old = best.get(pair.key)
            if old is None or pair.priority > old.priority:
                best[pair.key] = pair
    pairs = sorted(best.values(), key=lambda p: p.priority, reverse=True)[:limit]
    seen: set[tuple[str, str]] = set()
    for pair in pairs:
        if pair.foundation not in seen:
            seen.add(pair.foundation)
            pair.apply(Trigger.UNFREEZE)
    return pairs


def unspecified_address(host: str) -> str:
    """The wildcard address of ``host``'s family: a reflexive candidate's related address (we do not reveal bases)."""
    return "::" if is_ipv6(host) else "0.0.0.0"


def usable_remote_address(host: str) -> bool:
    """Whether a signalled candidate's address can be a peer at all (issue 18 item 8).

    Unspecified addresses are refused because the kernel delivers a check to ``0.0.0.0:P`` / ``[::]:P`` to a local
    socket (127.0.0.1:P): a pasted block could aim our checks at this machine's own services. Multicast and the
    IPv4 broadcast address are refused because a check would reach many hosts, none of them the peer."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        return False
    return not (isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"))
