"""Our own STUN transactions: connectivity checks, their pacing (Ta), their answers, and consent freshness.

RFC 8445 6.1.4 / 7.2 and RFC 7675. State lives in ``IceAgent.__init__``.
"""

from __future__ import annotations

from tunnel_core import stun
from tunnel_core.candidate import (
    TYPE_PREFERENCE,
    Candidate,
    CandidateType,
    compute_foundation,
)
from tunnel_core.ice import events as ev
from tunnel_core.ice.checklist import CandidatePair, PairState, Trigger, unspecified_address
from tunnel_core.ice.transaction import Purpose, StunTransaction
from tunnel_core.types import Address, Transmit


class CheckingMixin:
    """Sends checks and consent requests at the pace RFC 8445 allows and interprets their answers."""

    def _on_response(self, msg: stun.StunMessage, local: Address, remote: Address, now: float) -> None:
        tx = self._transactions.get(msg.transaction_id)
        if tx is None:
            return
        if tx.purpose is Purpose.GATHER:
            self._on_gather_response(tx, msg, local, remote, now)
            return
        assert self.remote_pwd is not None
        if not msg.check_integrity(stun.short_term_key(self.remote_pwd)):
            return  # RFC 8489 9.1.3: as if never received
        del self._transactions[tx.tid]
        pair = tx.pair
        if tx.purpose is Purpose.CONSENT:
            if (local, remote) == (tx.local, tx.remote) and msg.message_class == stun.MessageClass.SUCCESS:
                self._consent_fresh(now)
            return
        assert pair is not None
        if (local, remote) != (tx.local, tx.remote):
            # 7.2.5.2.1: non-symmetric addresses fail the check.
            self._check_failed(tx, now)
            return
        if msg.message_class == stun.MessageClass.ERROR:
            error = msg.get(stun.Attr.ERROR_CODE)
            if isinstance(error, stun.ErrorCode) and error.code == 487:
                self._on_role_conflict(tx, now)
            else:
                self._check_failed(tx, now)
            return
        mapped = msg.get(stun.Attr.XOR_MAPPED_ADDRESS) or msg.get(stun.Attr.MAPPED_ADDRESS)
        if not isinstance(mapped, tuple):
            self._check_failed(tx, now)
            return
        self._check_succeeded(tx, pair, mapped, now)

    def _check_succeeded(self, tx: StunTransaction, pair: CandidatePair, mapped: Address, now: float) -> None:
        pair.valid_local = self._valid_local(mapped, tx)
        pair.apply(Trigger.SUCCESS)
        for other in self._transactions.values():
            if other.pair is pair and other.purpose is Purpose.CHECK and not other.use_candidate:
                other.cancel()
        # 7.2.5.3.3: unfreeze the pairs that share this foundation.
        for other in self._pairs:
            if other.state is PairState.FROZEN and other.foundation == pair.foundation:
                other.apply(Trigger.UNFREEZE)
        if self._selected is not None:
            if pair is self._selected:
                self._rechecking.discard(pair.key)
                self._consent_fresh(now)
            else:
                self._on_recheck_answered(pair)
            return
        if self.controlling:
            if tx.use_candidate and tx.controlling:
                self._select(pair, now)
            elif self._nominating is None:
                self._start_nomination()
        elif pair.nominate_on_success:
            self._select(pair, now)

    def _valid_local(self, mapped: Address, tx: StunTransaction) -> Candidate:
        """7.2.5.3.1/2: the local candidate of the valid pair is the one the mapped address names."""
        for cand, base in (*self._locals, *self._prflx_locals):
            if cand.address == mapped and base == tx.local:
                return cand
        base_ip = tx.local[0]
        cand = Candidate(
            foundation=compute_foundation(CandidateType.PRFLX, base_ip),
            component=1,
            transport="udp",
            priority=tx.priority,
            host=mapped[0],
            port=mapped[1],
            type=CandidateType.PRFLX,
            related_address=unspecified_address(base_ip),
            related_port=0,
        )
        self._prflx_locals.append((cand, tx.local))
        return cand

    def _on_role_conflict(self, tx: StunTransaction, now: float) -> None:
        """7.2.5.1: flip the role if we still hold the one the request claimed, then retry the pair."""
        pair = tx.pair
        assert pair is not None
        if tx.controlling == self.controlling:
            self._switch_role(not tx.controlling, now)
        if pair is self._nominating:
            self._nominating = None
        if pair.state is PairState.IN_PROGRESS:
            pair.apply(Trigger.ROLE_CONFLICT)
        if pair.state is PairState.WAITING and pair not in self._triggered:
            self._triggered.append(pair)
        if self.controlling and self._nominating is None and self._selected is None:
            self._start_nomination()

    def _check_failed(self, tx: StunTransaction, now: float) -> None:
        pair = tx.pair
        assert pair is not None
        if tx.cancelled:
            return
        if tx.use_candidate and pair is self._nominating:
            self._nominating = None
            if pair.state is PairState.SUCCEEDED:
                pair.apply(Trigger.FAILURE)
            if self._selected is None:
                self._start_nomination()
        elif pair.state is PairState.IN_PROGRESS:
            pair.apply(Trigger.FAILURE)
        self._check_all_failed()

    def _on_timeout(self, tx: StunTransaction, now: float) -> None:
        if tx.purpose is Purpose.CHECK:
            self._check_failed(tx, now)
        elif tx.purpose is Purpose.GATHER:
            self._maybe_gathering_complete(now)

    def _start_tx(self, purpose: Purpose, msg: stun.StunMessage, local: Address, remote: Address, now: float,
                  key: bytes | None, **extra: object) -> StunTransaction:
        data = stun.encode(msg, integrity_key=key, fingerprint=key is not None)
        tx = StunTransaction.start(
            tid=msg.transaction_id, purpose=purpose, data=data, local=local, remote=remote, now=now,
            timing=self.timing, **extra,
        )
        self._transactions[tx.tid] = tx
        self._outbox.append(Transmit(data, local, remote))
        return tx

    def _check_request(self, pair: CandidatePair, use_candidate: bool) -> tuple[stun.StunMessage, int]:
        assert self.remote_ufrag is not None
        # 7.2.2: PRIORITY is what a peer-reflexive candidate of ours would get: same local preference and
        # component as the local candidate, peer-reflexive type preference.
        priority = (TYPE_PREFERENCE[CandidateType.PRFLX] << 24) | (pair.local.priority & 0x00FFFFFF)
        attributes: list[tuple[int, object]] = [
            (stun.Attr.USERNAME, f"{self.remote_ufrag}:{self.local_ufrag}"),
            (stun.Attr.PRIORITY, priority),
            (stun.Attr.ICE_CONTROLLING if self.controlling else stun.Attr.ICE_CONTROLLED, self.tie_breaker),
        ]
        if use_candidate:
            attributes.append((stun.Attr.USE_CANDIDATE, None))
        msg = stun.StunMessage(
            method=stun.Method.BINDING,
            message_class=stun.MessageClass.REQUEST,
            transaction_id=stun.transaction_id(self._rng),
            attributes=tuple(attributes),
        )
        return msg, priority

    def _send_check(self, pair: CandidatePair, now: float, use_candidate: bool = False) -> None:
        assert self.remote_pwd is not None
        msg, priority = self._check_request(pair, use_candidate)
        if pair.state is not PairState.SUCCEEDED:
            pair.apply(Trigger.SEND)
        self._start_tx(
            Purpose.CHECK, msg, pair.base, pair.remote.address, now, stun.short_term_key(self.remote_pwd),
            pair=pair, use_candidate=use_candidate, controlling=self.controlling, priority=priority,
        )

    def _has_paced_work(self) -> bool:
        if self._gather_queue:
            return True
        if not self._connect_started:
            return False
        if self._triggered:
            return True
        return self._selected is None and self._next_ordinary(peek=True) is not None

    def _send_paced(self, now: float) -> bool:
        """Start at most one new transaction (RFC 8445 6.1.4.2); True if one went out."""
        if self._gather_queue:
            base, server = self._gather_queue.popleft()
            msg = stun.StunMessage(
                method=stun.Method.BINDING,
                message_class=stun.MessageClass.REQUEST,
                transaction_id=stun.transaction_id(self._rng),
            )
            self._start_tx(Purpose.GATHER, msg, base, server, now, None, server=server)
            return True
        if not self._connect_started:
            return False
        while self._triggered:
            pair = self._triggered.popleft()
            if pair is self._nominating and pair.state is PairState.SUCCEEDED:
                self._send_check(pair, now, use_candidate=True)
                return True
            if pair.state is PairState.WAITING:
                if self._selected is not None and not pair.nominate_on_success:
                    continue
                self._send_check(pair, now)
                return True
        if self._selected is not None:
            return False
        pair = self._next_ordinary(peek=False)
        if pair is None:
            return False
        self._send_check(pair, now)
        return True

    def _next_ordinary(self, peek: bool) -> CandidatePair | None:
        for pair in self._pairs:
            if pair.state is PairState.WAITING:
                return pair
        busy = {p.foundation for p in self._pairs if p.state in (PairState.WAITING, PairState.IN_PROGRESS)}
        for pair in self._pairs:
            if pair.state is PairState.FROZEN and pair.foundation not in busy:
                if not peek:
                    pair.apply(Trigger.UNFREEZE)
                return pair
        return None

    def _consent_fresh(self, now: float) -> None:
        """The selected pair answered: consent is fresh; after a silence report the path back (ConsentRestored)."""
        self._last_consent = max(self._last_consent, now)
        self._consent_pending_since = None
        self._consent_lost_reported = False
        since = self._consent_missing_since
        if since is None:
            return
        self._consent_missing_since = None
        self._next_consent = now + self._consent_interval()
        self._events.append(ev.ConsentRestored(outage=max(0.0, now - since)))

    def _check_consent_degraded(self, now: float) -> None:
        """A consent check unanswered for ``consent_degraded_after``: report it once and check every second."""
        since = self._consent_pending_since
        if since is None or self._consent_missing_since is not None:
            return
        if now < since + self.timing.consent_degraded_after:
            return
        self._consent_missing_since = self._last_consent
        self._events.append(ev.ConsentDegraded(since=self._last_consent))
        if self._next_consent is not None:
            self._next_consent = min(self._next_consent, now + self.timing.consent_retry_interval)

    def _send_consent(self, now: float) -> None:
        pair = self._selected
        assert pair is not None and self.remote_pwd is not None
        if self._consent_pending_since is None:
            self._consent_pending_since = now
        msg, priority = self._check_request(pair, use_candidate=False)
        if self._consent_missing_since is not None:
            # Degraded: check often, so the return of the path is noticed within about a second.
            interval = self.timing.consent_retry_interval
        else:
            interval = self._consent_interval()
        self._start_tx(
            Purpose.CONSENT, msg, pair.base, pair.remote.address, now, stun.short_term_key(self.remote_pwd),
            pair=pair, controlling=self.controlling, priority=priority, retransmit_until=now + interval * 0.8,
        )
        self._next_consent = now + interval

    def _consent_interval(self) -> float:
        raw = self._rng(2)
        fraction = int.from_bytes(raw[:2].rjust(2, b"\0"), "big") / 0xFFFF
        return self.timing.consent_interval * (0.8 + 0.4 * fraction)
