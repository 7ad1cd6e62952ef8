"""STUN client transactions: retransmission schedule and bookkeeping for every request the agent sends.

One class for gathering, connectivity and consent requests keeps the RTO arithmetic (RFC 8489 6.2.1 with
str0m's caps, upstream-spec.md 4.5) in a single place.
"""

from __future__ import annotations

import enum

import attrs

from tunnel_core.ice.checklist import CandidatePair
from tunnel_core.ice.timing import IceTiming
from tunnel_core.types import Address

__all__ = ["Purpose", "StunTransaction"]


class Purpose(enum.Enum):
    GATHER = "gather"
    CHECK = "check"
    CONSENT = "consent"


@attrs.define(eq=False)
class StunTransaction:
    """An outstanding request. ``next_send`` is None once no retransmission is due (exhausted or cancelled);
    the transaction times out at ``expires`` = last send + the RTO in force then."""

    tid: bytes
    purpose: Purpose
    data: bytes
    local: Address
    remote: Address
    retransmits_left: int
    rto: float
    expires: float
    next_send: float | None
    pair: CandidatePair | None = None
    use_candidate: bool = False
    #: our role when the request was built (RFC 8445 7.2.5.1 only flips the role if it is still the same)
    controlling: bool = False
    #: the PRIORITY we sent, which becomes a peer-reflexive local candidate's priority (7.2.5.3.1)
    priority: int = 0
    cancelled: bool = False
    #: for gathering: the STUN server asked
    server: Address | None = None
    #: retransmissions are not scheduled after this time (consent checks must not outlive their interval)
    retransmit_until: float = float("inf")

    @classmethod
    def start(
        cls, *, tid: bytes, purpose: Purpose, data: bytes, local: Address, remote: Address, now: float,
        timing: IceTiming, **extra: object,
    ) -> StunTransaction:
        tx = cls(
            tid=tid, purpose=purpose, data=data, local=local, remote=remote,
            retransmits_left=timing.max_retransmits, rto=timing.initial_rto, expires=now, next_send=None,
            **extra,  # type: ignore[arg-type]
        )
        tx._schedule(now)
        return tx

    def _schedule(self, sent_at: float) -> None:
        self.expires = sent_at + self.rto
        due = sent_at + self.rto
        if self.retransmits_left > 0 and not self.cancelled and due <= self.retransmit_until:
            self.next_send = due
        else:
            self.next_send = None

    def retransmit(self, now: float, max_rto: float) -> None:
        """Record one more send at ``now`` and double the RTO (capped)."""
        self.retransmits_left -= 1
        self.rto = min(self.rto * 2, max_rto)
        self._schedule(now)

    def cancel(self) -> None:
        """RFC 8445 7.3.1.4 cancellation: stop retransmitting but still accept a response until expiry."""
        self.cancelled = True
        self.next_send = None

    @property
    def deadline(self) -> float:
        return self.next_send if self.next_send is not None else self.expires
