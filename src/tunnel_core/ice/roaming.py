"""After selection: new local addresses, re-checks of the peer's known candidates, and holding on past consent.

Issue 15 items 2 and 3 (docs/reconnect.md). Why in the agent and not a new ICE session: the session's credentials
(both ufrags and passwords from the signalling) still authenticate checks after the tunnel is up, so a client that
moved, or whose path was cut, can probe the server's known candidates from its current addresses without any new
signalling - an ICE restart without the restart's offer/answer. The selected pair still never moves on STUN
alone: a re-check that is answered is only *reported* (``PathAnswered``); the QUIC client decides to send from
there, and the QUIC server moves only after QUIC's own path validation (docs/architecture.md "Paths").

State lives in ``IceAgent.__init__``.
"""

from __future__ import annotations

import ipaddress

from tunnel_core.candidate import Candidate
from tunnel_core.ice import events as ev
from tunnel_core.ice.checklist import CandidatePair, PairState, Trigger, is_ipv6
from tunnel_core.ice.transaction import Purpose
from tunnel_core.types import Address


class RoamingMixin:
    """Local addresses that come and go after selection, and re-checks that find a path again."""

    def add_roaming_address(self, address: Address, now: float) -> bool:
        """A socket bound at ``address`` after the tunnel came up (the machine got a new address): it becomes a
        host candidate paired with every known remote candidate of its family, and it gathers as at the start -
        a Binding to every STUN server and an allocation on every TURN server of its family - so a new network
        that reaches the peer only through a relay still finds a path (a relayed address answers re-checks like
        any other; ``_add_relay``). True if it was new."""
        if self._finished or not self._connect_started:
            return False
        base = self._add_host(address)
        if base is None:
            return False
        self._now = max(self._now, now)
        self._retired.discard(base)
        self._roaming_bases.add(base)
        cand = self._local_for_base(base)
        assert cand is not None
        self._pair_local(cand, base)
        self._gather_from(base, now)
        return True

    def _pair_local(self, cand: Candidate, base: Address) -> None:
        """Pair a local candidate that arrived after the checklist was formed with every remote one of its
        family (waiting: the next re-check round sends them)."""
        for remote in self._remotes:
            if is_ipv6(remote.host) != is_ipv6(base[0]) or (base, remote.address) in self._pair_by_key:
                continue
            pair = CandidatePair(local=cand, remote=remote, base=base, state=PairState.WAITING)
            pair.update_priority(self.controlling)
            self._pairs.append(pair)
            self._pair_by_key[pair.key] = pair
        self._sort_pairs()

    def retire_local_ip(self, ip: str) -> None:
        """The address ``ip`` left the machine (its sockets are closed): no more checks from any base on it."""
        try:
            gone = ipaddress.ip_address(ip).compressed
        except ValueError:
            return
        self._retired.update(base for base in self._bases if base[0] == gone)
        for tid in [t for t, tx in self._transactions.items() if tx.local in self._retired]:
            del self._transactions[tid]

    def recheck(self, now: float) -> int:
        """One round of checks from every live local address to every known remote candidate (no USE-CANDIDATE:
        nothing is nominated). Pairs with a check still in flight are skipped. Returns how many went out."""
        if self._finished or self._selected is None or self.remote_pwd is None:
            return 0
        self._now = max(self._now, now)
        busy = {tx.pair.key for tx in self._transactions.values() if tx.purpose is Purpose.CHECK and tx.pair}
        sent = 0
        for pair in self._pairs:
            if pair.base in self._retired or pair.key in busy:
                continue
            if pair.base in self._turn_by_relayed:
                if not self._relay_live(pair.base):
                    continue  # a released allocation (one gathered from a new address is live)
            elif pair.base not in self._bases:
                continue
            if pair.state in (PairState.FAILED, PairState.IN_PROGRESS):
                # IN_PROGRESS without a transaction: its check was dropped at selection (8.1.2).
                pair.apply(Trigger.TRIGGER)
            self._rechecking.add(pair.key)
            self._send_check(pair, now)
            sent += 1
        return sent

    def _on_recheck_answered(self, pair: CandidatePair) -> None:
        """A re-check was answered by the peer (authenticated with its password): report the path, once per
        round. ``_check_succeeded`` calls this after selection."""
        if pair.key not in self._rechecking:
            return
        self._rechecking.discard(pair.key)
        local = pair.valid_local or pair.local
        self._events.append(ev.PathAnswered(local=local, remote=pair.remote, local_address=pair.base,
                                            remote_address=pair.remote.address))

    def move_to(self, local: Address, remote: Address, now: float) -> bool:
        """The QUIC client decided to send over (local, remote), a pair a re-check just proved: consent follows.

        Only the side that owns the decision calls this (the QUIC client, whose packets then prove the path to the
        server's QUIC); it is ``follow_path`` with the client's evidence, an authenticated check response.
        Allocations the new path does not use are released (as at selection)."""
        if not self.follow_path(local, remote, now):
            return False
        self._release_unused_relays(local if local in self._turn_by_relayed else None, now)
        return True

    @property
    def consent_missing(self) -> bool:
        """Consent checks are going unanswered (degraded or lost while holding on)."""
        return self._consent_missing_since is not None

    @property
    def selected_base_retired(self) -> bool:
        return self._selected is not None and self._selected.base in self._retired
