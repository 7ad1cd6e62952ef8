"""The peer's connectivity checks: authenticate, answer, resolve role conflicts, learn peer-reflexive candidates.

RFC 8445 7.3. State lives in ``IceAgent.__init__``.
"""

from __future__ import annotations

import ipaddress

from tunnel_core import stun
from tunnel_core.candidate import (
    Candidate,
    CandidateType,
)
from tunnel_core.ice import events as ev
from tunnel_core.ice.checklist import MAX_PAIRS, CandidatePair, PairState, Trigger, is_ipv6
from tunnel_core.ice.transaction import Purpose
from tunnel_core.types import Address, Transmit

#: Checks that arrive before ``connect`` are remembered, at most this many (aioice keeps 100 too).
EARLY_CHECK_LIMIT = 100
#: Pairs created by peers' checks (peer-reflexive) may grow the checklist beyond MAX_PAIRS, but not forever.
PAIR_HARD_CAP = 2 * MAX_PAIRS
REMOTE_CANDIDATE_LIMIT = 2 * MAX_PAIRS


def _has_attr(msg: stun.StunMessage, attr: int) -> bool:
    return any(a == attr for a, _ in msg.attributes)


class AnsweringMixin:
    """Answers the peer's Binding requests and turns them into triggered checks or nominations."""

    def _reply(self, msg: stun.StunMessage, local: Address, remote: Address, message_class: stun.MessageClass,
               attributes: tuple[tuple[int, object], ...], signed: bool) -> None:
        reply = stun.StunMessage(
            method=stun.Method.BINDING,
            message_class=message_class,
            transaction_id=msg.transaction_id,
            attributes=attributes,
        )
        key = stun.short_term_key(self.local_pwd) if signed else None
        self._outbox.append(Transmit(stun.encode(reply, integrity_key=key, fingerprint=True), local, remote))

    def _reply_error(self, msg: stun.StunMessage, local: Address, remote: Address, code: int, reason: str,
                     signed: bool = False) -> None:
        """400/401 go out unsigned (we could not authenticate the request); 487 is signed (RFC 8445 7.3.1.1)."""
        self._reply(msg, local, remote, stun.MessageClass.ERROR,
                    ((stun.Attr.ERROR_CODE, stun.ErrorCode(code, reason)),), signed)

    def _on_request(self, msg: stun.StunMessage, local: Address, remote: Address, now: float) -> None:
        username = msg.get(stun.Attr.USERNAME)
        if not isinstance(username, str) or not msg.has_integrity:
            self._reply_error(msg, local, remote, 400, "Bad Request")
            return
        ours, sep, _theirs = username.partition(":")
        if not sep or ours != self.local_ufrag or not msg.check_integrity(stun.short_term_key(self.local_pwd)):
            self._reply_error(msg, local, remote, 401, "Unauthorized")
            return
        priority = msg.get(stun.Attr.PRIORITY)
        if not isinstance(priority, int):
            self._reply_error(msg, local, remote, 400, "Bad Request")
            return
        # RFC 8445 7.3.1.1: resolve a role conflict before answering. Roles are settled once a pair is selected:
        # a late "conflict" (only a holder of the credentials can sign one) must not flip us into accepting
        # nominations.
        their_controlling = msg.get(stun.Attr.ICE_CONTROLLING)
        their_controlled = msg.get(stun.Attr.ICE_CONTROLLED)
        if self._selected is not None:
            pass
        elif self.controlling and isinstance(their_controlling, int):
            if self.tie_breaker >= their_controlling:
                self._reply_error(msg, local, remote, 487, "Role Conflict", signed=True)
                return
            self._switch_role(False, now)
        elif not self.controlling and isinstance(their_controlled, int):
            if self.tie_breaker >= their_controlled:
                self._switch_role(True, now)
            else:
                self._reply_error(msg, local, remote, 487, "Role Conflict", signed=True)
                return
        self._reply(msg, local, remote, stun.MessageClass.SUCCESS, ((stun.Attr.XOR_MAPPED_ADDRESS, remote),),
                    signed=True)
        use_candidate = _has_attr(msg, stun.Attr.USE_CANDIDATE)
        if not self._connect_started:
            key = (local, remote)
            if key in self._early or len(self._early) < EARLY_CHECK_LIMIT:
                old = self._early.get(key, (priority, False))
                self._early[key] = (priority, use_candidate or old[1])
            return
        self._on_check(local, remote, priority, use_candidate, now)

    def _on_check(self, local: Address, remote: Address, priority: int, use_candidate: bool, now: float) -> None:
        """An authenticated check from the peer (7.3.1.3 - 7.3.1.5): learn, trigger, maybe nominate."""
        nominate = use_candidate and not self.controlling
        if self._selected is not None:
            self._on_late_check(local, remote, priority, use_candidate)
            return
        pair = self._pair_by_key.get((local, remote))
        if pair is None:
            pair = self._new_triggered_pair(local, remote, priority)
            if pair is None:
                return
        if pair.state is PairState.IN_PROGRESS:
            for tx in self._transactions.values():
                if tx.pair is pair and tx.purpose is Purpose.CHECK:
                    tx.cancel()
        if pair.state is not PairState.SUCCEEDED:
            pair.apply(Trigger.TRIGGER)
            if pair not in self._triggered:
                self._triggered.append(pair)
        if nominate:
            if pair.state is PairState.SUCCEEDED:
                self._select(pair, now)
            else:
                pair.nominate_on_success = True

    def _on_late_check(self, local: Address, remote: Address, priority: int, use_candidate: bool) -> None:
        """A check after selection: answered (done by the caller), its path learned, nothing else.

        The selected pair never moves on STUN alone (issue 18, item 1: two forged packets used to move it). The path
        is remembered so that ``knows_path`` lets the peer's QUIC packets from it through, and QUIC's own path
        validation decides (``follow_path``). No triggered check: the path proves itself with QUIC, and an
        attacker gets no traffic reflected to an address of its choosing."""
        key = (local, remote)
        if self._selected is not None and key == self._selected.key:
            return
        if key not in self._pair_by_key:
            self._new_triggered_pair(local, remote, priority)
        if use_candidate and remote not in self._ignored_nominations and len(self._ignored_nominations) < MAX_PAIRS:
            self._ignored_nominations.add(remote)
            self._events.append(ev.NominationIgnored(local_address=local, remote_address=remote))

    def _new_triggered_pair(self, local: Address, remote: Address, priority: int) -> CandidatePair | None:
        if len(self._pairs) >= PAIR_HARD_CAP:
            return None
        local_cand = self._local_for_base(local)
        if local_cand is None:
            return None
        remote_cand = self._find_remote(remote)
        if remote_cand is None:
            if len(self._remotes) >= REMOTE_CANDIDATE_LIMIT:
                return None
            try:
                ipaddress.ip_address(remote[0])
            except ValueError:
                return None
            if is_ipv6(remote[0]) != is_ipv6(local[0]):
                return None
            # 7.3.1.3: a peer-reflexive remote candidate, priority from the check's PRIORITY.
            self._prflx_remote_count += 1
            remote_cand = Candidate(
                foundation=f"prflx{self._prflx_remote_count}",
                component=1,
                transport="udp",
                priority=priority,
                host=remote[0],
                port=remote[1],
                type=CandidateType.PRFLX,
            )
            self._remotes.append(remote_cand)
        pair = CandidatePair(local=local_cand, remote=remote_cand, base=local)
        pair.update_priority(self.controlling)
        self._pairs.append(pair)
        self._pair_by_key[pair.key] = pair
        self._sort_pairs()
        return pair

    def _find_remote(self, address: Address) -> Candidate | None:
        for cand in self._remotes:
            if cand.address == address:
                return cand
        return None

    def _local_for_base(self, base: Address) -> Candidate | None:
        """The candidate to pair a peer's check with: the one whose base is the receiving socket, host first."""
        best: Candidate | None = None
        for cand, cbase in self._locals:
            if cbase == base and (best is None or cand.type is CandidateType.HOST):
                best = cand
        return best
