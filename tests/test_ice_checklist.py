"""Checklist formation, pair priorities and the pair state table (RFC 8445 6.1.2, 7.2.5.3.3)."""

from __future__ import annotations

import pytest

from tunnel_core.candidate import Candidate, CandidateType, compute_priority, local_preference
from tunnel_core.errors import LocalProtocolError
from tunnel_core.ice.checklist import (
    MAX_PAIRS,
    TRANSITIONS,
    CandidatePair,
    PairState,
    Trigger,
    form_checklist,
    pair_priority,
)


def cand(host: str, port: int, ctype: CandidateType = CandidateType.HOST, index: int = 0,
         foundation: str | None = None) -> Candidate:
    pref = local_preference(ctype, ":" in host, index)
    return Candidate(foundation or f"{ctype.value}{host.replace(':', '').replace('.', '')}", 1, "udp",
                     compute_priority(ctype, pref), host, port, ctype)


def test_pair_priority_formula() -> None:
    g, d = cand("192.0.2.1", 1), cand("192.0.2.2", 2, CandidateType.SRFLX)
    assert pair_priority(g, d) == (d.priority << 32) + 2 * g.priority + 1
    assert pair_priority(d, g) == (d.priority << 32) + 2 * g.priority + 0
    assert pair_priority(g, g) == (g.priority << 32) + 2 * g.priority


def test_srflx_locals_are_replaced_by_their_base_and_duplicates_pruned() -> None:
    base = ("10.0.0.2", 5000)
    host = cand(*base)
    srflx = cand("198.51.100.1", 5000, CandidateType.SRFLX)
    remotes = [cand("192.0.2.9", 7, foundation="r1"), cand("203.0.113.9", 8, CandidateType.SRFLX, foundation="r2")]
    pairs = form_checklist([(host, base), (srflx, base)], remotes, controlling=True)
    assert [(p.local, p.remote.port) for p in pairs] == [(host, 7), (host, 8)]
    assert all(p.base == base for p in pairs)


def test_only_same_family_pairs_sorted_by_priority_first_of_each_foundation_waiting() -> None:
    v4 = cand("192.0.2.1", 1)
    v6 = cand("2001:db8::1", 1)
    r4a = cand("192.0.2.2", 2, foundation="a")
    r4b = cand("192.0.2.3", 3, CandidateType.SRFLX, foundation="a")
    r6 = cand("2001:db8::2", 2, foundation="c")
    pairs = form_checklist([(v4, v4.address), (v6, v6.address)], [r4a, r4b, r6], controlling=False)
    assert {(p.local.host, p.remote.host) for p in pairs} == {
        ("192.0.2.1", "192.0.2.2"), ("192.0.2.1", "192.0.2.3"), ("2001:db8::1", "2001:db8::2")}
    assert [p.priority for p in pairs] == sorted((p.priority for p in pairs), reverse=True)
    states = {(p.local.host, p.remote.host): p.state for p in pairs}
    assert states[("192.0.2.1", "192.0.2.2")] is PairState.WAITING
    assert states[("192.0.2.1", "192.0.2.3")] is PairState.FROZEN  # same foundation, lower priority
    assert states[("2001:db8::1", "2001:db8::2")] is PairState.WAITING


def test_checklist_is_limited() -> None:
    locals_ = [(cand(f"192.0.2.{i}", 1, index=i), (f"192.0.2.{i}", 1)) for i in range(1, 21)]
    remotes = [cand(f"203.0.113.{i}", 2, index=i) for i in range(1, 21)]
    pairs = form_checklist(locals_, remotes, controlling=True)
    assert len(pairs) == MAX_PAIRS
    best = form_checklist(locals_, remotes, controlling=True, limit=400)
    assert [p.priority for p in pairs] == [p.priority for p in best[:MAX_PAIRS]]
    assert len(best) == 400


def test_state_table_drives_pairs_and_rejects_impossible_moves() -> None:
    p = CandidatePair(cand("192.0.2.1", 1), cand("192.0.2.2", 2), ("192.0.2.1", 1))
    assert p.state is PairState.FROZEN
    assert p.apply(Trigger.UNFREEZE) is PairState.WAITING
    assert p.apply(Trigger.SEND) is PairState.IN_PROGRESS
    assert p.apply(Trigger.TRIGGER) is PairState.WAITING  # 7.3.1.4: cancelled and re-queued
    assert p.apply(Trigger.SEND) is PairState.IN_PROGRESS
    assert p.apply(Trigger.FAILURE) is PairState.FAILED
    assert p.apply(Trigger.TRIGGER) is PairState.WAITING  # a peer's check revives a failed pair
    p.apply(Trigger.SEND)
    assert p.apply(Trigger.SUCCESS) is PairState.SUCCEEDED
    assert p.apply(Trigger.TRIGGER) is PairState.SUCCEEDED
    with pytest.raises(LocalProtocolError):
        CandidatePair(p.local, p.remote, p.base).apply(Trigger.FAILURE)  # a frozen pair was never sent


def test_every_state_is_reachable_and_failure_only_from_sent_pairs() -> None:
    targets = set(TRANSITIONS.values())
    assert targets == set(PairState) - {PairState.FROZEN}
    sources_of_failure = {s for (s, t), new in TRANSITIONS.items() if t is Trigger.FAILURE and s is not new}
    assert sources_of_failure == {PairState.IN_PROGRESS, PairState.SUCCEEDED}
