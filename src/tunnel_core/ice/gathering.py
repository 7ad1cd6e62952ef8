"""Server-reflexive gathering: answers of STUN servers become srflx candidates; when gathering is complete.

State lives in ``IceAgent.__init__``; the requests themselves go out paced with the checks (``checking``).
"""

from __future__ import annotations

from tunnel_core import stun
from tunnel_core.candidate import (
    Candidate,
    CandidateType,
    compute_foundation,
    compute_priority,
    local_preference,
)
from tunnel_core.ice import events as ev
from tunnel_core.ice.checklist import is_ipv6, unspecified_address
from tunnel_core.ice.state import IceState
from tunnel_core.ice.transaction import Purpose, StunTransaction
from tunnel_core.turn import TurnState
from tunnel_core.types import Address


class GatheringMixin:
    """Turns STUN servers' answers into candidates and decides when gathering is complete."""

    def _on_gather_response(
        self, tx: StunTransaction, msg: stun.StunMessage, local: Address, remote: Address, now: float
    ) -> None:
        if (local, remote) != (tx.local, tx.remote):
            return
        del self._transactions[tx.tid]
        if msg.message_class == stun.MessageClass.SUCCESS:
            mapped = msg.get(stun.Attr.XOR_MAPPED_ADDRESS) or msg.get(stun.Attr.MAPPED_ADDRESS)
            if isinstance(mapped, tuple) and tx.server is not None:
                self._events.append(ev.ServerReflexiveDiscovered(server=tx.server, base=tx.local, mapped=mapped))
                self._add_srflx(mapped, tx.local, tx.server)
        self._maybe_gathering_complete(now)

    def _add_srflx(self, mapped: Address, base: Address, server: Address) -> None:
        if self.gathering_complete and base not in self._roaming_bases:
            return
        if is_ipv6(mapped[0]) != is_ipv6(base[0]):
            return
        # Redundant (5.1.3): same address as a host candidate, or a srflx we already have for this base.
        for cand, cbase in self._locals:
            if cand.address == mapped and (cand.type is CandidateType.HOST or cbase == base):
                return
        ipv6 = is_ipv6(mapped[0])
        index = sum(1 for c, _ in self._locals if c.type is CandidateType.SRFLX)
        cand = Candidate(
            foundation=compute_foundation(CandidateType.SRFLX, base[0], server[0]),
            component=1,
            transport="udp",
            priority=compute_priority(CandidateType.SRFLX, local_preference(CandidateType.SRFLX, ipv6, index)),
            host=mapped[0],
            port=mapped[1],
            type=CandidateType.SRFLX,
            related_address=unspecified_address(mapped[0]),
            related_port=0,
        )
        self._locals.append((cand, base))
        if base in self._roaming_bases:
            # Its checks would go from the same base as the host candidate's (pruned, RFC 8445 6.1.2.4): it adds
            # no pair, only what the user learns about the new network.
            self._events.append(ev.RoamingCandidate(candidate=cand, base=base))

    def _maybe_gathering_complete(self, now: float) -> None:
        if self.gathering_complete or self._gather_deadline is None or self._gather_queue:
            return
        if any(tx.purpose is Purpose.GATHER for tx in self._transactions.values()):
            return
        if any(c.state is TurnState.ALLOCATING for c in self._turn_by_path.values()):
            return
        self._finish_gathering()

    def _finish_gathering(self) -> None:
        self.gathering_complete = True
        self._gather_queue.clear()
        for tid in [t for t, tx in self._transactions.items() if tx.purpose is Purpose.GATHER]:
            del self._transactions[tid]
        if self._state is IceState.GATHERING:
            self._state = IceState.NEW
        errors = list(self._relay_errors)
        for (_base, server), client in self._turn_by_path.items():
            if client.state is TurnState.ALLOCATING:
                errors.append(f"TURN server {server[0]}:{server[1]}: no answer within the gathering time")
        self._events.append(ev.GatheringComplete(tuple(self.local_candidates), tuple(errors)))
