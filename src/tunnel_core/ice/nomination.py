"""Nomination and selection: which valid pair carries the tunnel, role switches, and giving up.

RFC 8445 8.1. State lives in ``IceAgent.__init__``.
"""

from __future__ import annotations

from tunnel_core.candidate import (
    CandidateType,
)
from tunnel_core.ice import events as ev
from tunnel_core.ice.checklist import CandidatePair, PairState
from tunnel_core.ice.state import IceState
from tunnel_core.ice.transaction import Purpose
from tunnel_core.types import Address


def _is_relayed(pair: CandidatePair) -> bool:
    return CandidateType.RELAY in (pair.local.type, pair.remote.type)


class NominationMixin:
    """Decides the selected pair (regular nomination as controlling side) and the end states."""

    def _start_nomination(self, hold_relay: bool = True) -> None:
        """Regular nomination (8.1.1): repeat the check of the best valid pair with USE-CANDIDATE.

        A relayed best pair waits up to ``relay_grace`` while a direct pair is still being checked; a direct pair
        that succeeds meanwhile calls us again and wins."""
        valid = [p for p in self._pairs if p.state is PairState.SUCCEEDED]
        if not valid:
            return
        best = max(valid, key=lambda p: p.valid_priority(self.controlling))
        if hold_relay and _is_relayed(best) and any(
            not _is_relayed(p) and p.state in (PairState.FROZEN, PairState.WAITING, PairState.IN_PROGRESS)
            for p in self._pairs
        ):
            if self._nominate_at is None:
                self._nominate_at = self._now + self.timing.relay_grace
            if self._now < self._nominate_at:
                return
        self._nominate_at = None
        self._nominating = best
        if best in self._triggered:
            self._triggered.remove(best)
        self._triggered.appendleft(best)

    def _select(self, pair: CandidatePair, now: float) -> None:
        """The one selection of ICE's life; later moves go through ``follow_path`` only (docs/security.md)."""
        if self._selected is not None:
            return
        self._selected = pair
        self._nominating = None
        pair.nominated = True
        local = pair.valid_local or pair.local
        self.selected_pair = (local, pair.remote)
        self._state = IceState.CONNECTED
        self._events.append(
            ev.PairSelected(local=local, remote=pair.remote, local_address=pair.base,
                            remote_address=pair.remote.address)
        )
        # 8.1.2: checking is over; in-flight checks are dropped, only consent keeps running.
        self._triggered.clear()
        for tid in [t for t, tx in self._transactions.items() if tx.purpose is Purpose.CHECK]:
            del self._transactions[tid]
        self._last_consent = now
        self._next_consent = now + self._consent_interval()
        self._release_unused_relays(pair.base if pair.base in self._turn_by_relayed else None, now)

    def knows_path(self, local: Address, remote: Address) -> bool:
        """Whether (socket ``local``, peer ``remote``) is a path ICE has seen the peer on: a pair formed from the
        signalled candidates or learnt from an authenticated check. Only such paths may carry QUIC to us."""
        return (local, remote) in self._pair_by_key

    def follow_path(self, local: Address, remote: Address, now: float) -> bool:
        """Make (local, remote) the selected pair because the QUIC layer validated it; True if it moved.

        The caller's proof is QUIC's: a 1-RTT packet from that address (only the real peer has the keys) and a
        PATH_RESPONSE to our PATH_CHALLENGE, or the handshake itself. Consent freshness continues on the new pair
        from ``now`` (QUIC just showed the peer is there). ICE never moves a selected pair by itself."""
        if self._selected is None or self._finished:
            return False
        pair = self._pair_by_key.get((local, remote))
        if pair is None or pair is self._selected:
            return False
        self._selected = pair
        pair.nominated = True
        self.selected_pair = (pair.valid_local or pair.local, pair.remote)
        self._consent_fresh(now)
        self._next_consent = now
        return True

    def _switch_role(self, controlling: bool, now: float) -> None:
        if controlling == self.controlling:
            return
        self.controlling = controlling
        for pair in self._pairs:
            pair.update_priority(controlling)
        self._sort_pairs()
        self._events.append(ev.RoleChanged(controlling=controlling))
        if not controlling:
            self._nominating = None
        elif self._connect_started and self._selected is None and self._nominating is None:
            self._start_nomination()

    def _sort_pairs(self) -> None:
        self._pairs.sort(key=lambda p: p.priority, reverse=True)

    def _check_all_failed(self) -> None:
        if self._state is not IceState.CHECKING or not self._pairs or self._triggered:
            return
        if all(p.state is PairState.FAILED for p in self._pairs):
            self._fail(ev.REASON_ALL_FAILED)

    def _fail(self, reason: str) -> None:
        self._state = IceState.FAILED
        self._transactions.clear()
        self._triggered.clear()
        self._events.append(ev.IceFailed(reason))
