"""The ICE agent driven by hand: wire format of checks and answers, authentication, pacing, retransmission,
role conflicts, peer-reflexive candidates, early checks, timeouts and consent (RFC 8445, RFC 7675)."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel_core import stun
from tunnel_core.candidate import Candidate, CandidateType, compute_priority, local_preference
from tunnel_core.errors import LocalProtocolError
from tunnel_core.ice import (
    REASON_ALL_FAILED,
    REASON_TIMEOUT,
    ConsentDegraded,
    ConsentLost,
    ConsentRestored,
    GatheringComplete,
    IceAgent,
    IceFailed,
    IceState,
    IceTiming,
    PairSelected,
    PairState,
    RoleChanged,
    ServerReflexiveDiscovered,
)
from tunnel_core.ice.credentials import ICE_CHARS
from tunnel_core.types import Address, Transmit

LOCAL: Address = ("192.0.2.1", 5000)
REMOTE: Address = ("192.0.2.2", 6000)
PEER_UFRAG = "peerufrag"
PEER_PWD = "peerpasswordpeerpassword"
T0 = 100.0


def rng(seed: int = 1):
    return random.Random(seed).randbytes


def host(address: Address, index: int = 0, foundation: str = "f1") -> Candidate:
    ipv6 = ":" in address[0]
    prio = compute_priority(CandidateType.HOST, local_preference(CandidateType.HOST, ipv6, index))
    return Candidate(foundation, 1, "udp", prio, address[0], address[1], CandidateType.HOST)


def events(agent: IceAgent) -> list:
    out = []
    while (e := agent.next_event()) is not None:
        out.append(e)
    return out


def decode_all(transmits: list[Transmit]) -> list[tuple[stun.StunMessage, Transmit]]:
    return [(stun.decode(t.data), t) for t in transmits]


def request(
    *, ufrag: str, pwd: str | None, tid: bytes = b"T" * 12, priority: int | None = 1853824767,
    controlling: int | None = None, controlled: int | None = None, use_candidate: bool = False,
) -> bytes:
    """A peer's check as a peer would build it (USERNAME is "our ufrag:their ufrag")."""
    attributes: list = [(stun.Attr.USERNAME, f"{ufrag}:{PEER_UFRAG}")]
    if priority is not None:
        attributes.append((stun.Attr.PRIORITY, priority))
    if controlling is not None:
        attributes.append((stun.Attr.ICE_CONTROLLING, controlling))
    if controlled is not None:
        attributes.append((stun.Attr.ICE_CONTROLLED, controlled))
    if use_candidate:
        attributes.append((stun.Attr.USE_CANDIDATE, None))
    msg = stun.StunMessage(stun.Method.BINDING, stun.MessageClass.REQUEST, tid, tuple(attributes))
    key = stun.short_term_key(pwd) if pwd is not None else None
    return stun.encode(msg, integrity_key=key, fingerprint=True)


def success(req: stun.StunMessage, mapped: Address, pwd: str = PEER_PWD) -> bytes:
    msg = stun.StunMessage(stun.Method.BINDING, stun.MessageClass.SUCCESS, req.transaction_id,
                           ((stun.Attr.XOR_MAPPED_ADDRESS, mapped),))
    return stun.encode(msg, integrity_key=stun.short_term_key(pwd), fingerprint=True)


def error(req: stun.StunMessage, code: int, reason: str) -> bytes:
    msg = stun.StunMessage(stun.Method.BINDING, stun.MessageClass.ERROR, req.transaction_id,
                           ((stun.Attr.ERROR_CODE, stun.ErrorCode(code, reason)),))
    return stun.encode(msg, integrity_key=stun.short_term_key(PEER_PWD), fingerprint=True)


def connected_agent(controlling: bool = True, remotes: list[Candidate] | None = None,
                    timing: IceTiming | None = None, seed: int = 1) -> IceAgent:
    agent = IceAgent(controlling=controlling, rng=rng(seed), timing=timing or IceTiming())
    agent.add_local_address(LOCAL)
    agent.gather(T0)
    assert [type(e) for e in events(agent)] == [GatheringComplete]
    agent.set_remote(PEER_UFRAG, PEER_PWD, remotes if remotes is not None else [host(REMOTE)])
    agent.connect(T0)
    return agent


def run_timers(agent: IceAgent, until: float) -> list[tuple[float, Transmit]]:
    """Fire the agent's timers up to ``until``; every transmit with the time it was sent."""
    sent = []
    for _ in range(100_000):
        t = agent.get_timer()
        if t is None or t > until:
            break
        agent.handle_timer(t)
        sent.extend((t, x) for x in agent.datagrams_to_send(t))
    return sent


# ---------------------------------------------------------------------------------------------- setup


def test_credentials_come_from_rng_in_the_ice_alphabet() -> None:
    a = IceAgent(controlling=True, rng=rng(5))
    b = IceAgent(controlling=True, rng=rng(5))
    c = IceAgent(controlling=True, rng=rng(6))
    assert (a.local_ufrag, a.local_pwd, a.tie_breaker) == (b.local_ufrag, b.local_pwd, b.tie_breaker)
    assert a.local_ufrag != c.local_ufrag
    assert len(a.local_ufrag) >= 4 and len(a.local_pwd) >= 22
    assert set(a.local_ufrag + a.local_pwd) <= set(ICE_CHARS)
    assert 0 <= a.tie_breaker < 2**64
    given_creds = IceAgent(controlling=False, rng=rng(), local_ufrag="abcd", local_pwd="x" * 22)
    assert (given_creds.local_ufrag, given_creds.local_pwd) == ("abcd", "x" * 22)
    with pytest.raises(LocalProtocolError):
        IceAgent(controlling=False, rng=rng(), local_ufrag="ab:c", local_pwd="x" * 22)
    with pytest.raises(LocalProtocolError):
        IceAgent(controlling=False, rng=rng(), local_ufrag="abcd", local_pwd="short")


def test_host_candidate_priorities_follow_the_reference() -> None:
    agent = IceAgent(controlling=True, rng=rng())
    agent.add_local_address(("192.0.2.1", 1))
    agent.add_local_address(("2001:db8::1", 2))
    agent.add_local_address(("192.0.2.3", 3))
    agent.add_local_address(("192.0.2.1", 1))  # same base twice: one candidate
    prios = [c.priority for c in agent.local_candidates]
    assert prios[0] == 2130706431  # upstream-spec 4.5 example
    assert prios == [
        (126 << 24) | (65535 << 8) | 255,
        (126 << 24) | ((65535 - 1 - 2) << 8) | 255,
        (126 << 24) | ((65535 - 4) << 8) | 255,
    ]
    assert all(c.type is CandidateType.HOST and c.component == 1 for c in agent.local_candidates)
    with pytest.raises(LocalProtocolError):
        agent.add_local_address(("0.0.0.0", 9))


def test_api_misuse_is_a_local_error() -> None:
    agent = IceAgent(controlling=True, rng=rng())
    with pytest.raises(LocalProtocolError):
        agent.connect(T0)
    agent.set_remote(PEER_UFRAG, PEER_PWD, [])
    with pytest.raises(LocalProtocolError):
        agent.set_remote(PEER_UFRAG, PEER_PWD, [])
    agent.connect(T0)
    with pytest.raises(LocalProtocolError):
        agent.connect(T0)
    with pytest.raises(LocalProtocolError):
        agent.add_local_address(LOCAL)


# ---------------------------------------------------------------------------------------------- gathering


def test_gathering_asks_every_server_of_the_same_family_paced_and_retransmitted() -> None:
    servers = [("203.0.113.1", 3478), ("203.0.113.2", 3478), ("2001:db8::99", 3478)]
    agent = IceAgent(controlling=True, rng=rng(), stun_servers=servers)
    agent.add_local_address(LOCAL)
    agent.add_local_address(("2001:db8::1", 5000))
    agent.gather(T0)
    assert agent.state is IceState.GATHERING
    sent = run_timers(agent, T0 + 0.2)
    firsts = [(t, x.local, x.remote) for t, x in sent]
    assert firsts == [
        (T0, LOCAL, servers[0]),
        (pytest.approx(T0 + 0.05), LOCAL, servers[1]),
        (pytest.approx(T0 + 0.10), ("2001:db8::1", 5000), servers[2]),
    ]
    for _t, x in sent:
        msg = stun.decode(x.data)
        assert msg.method == stun.Method.BINDING and msg.message_class == stun.MessageClass.REQUEST
        assert msg.attributes == () and not msg.has_integrity  # unauthenticated Binding
    # Nobody answers: retransmissions double the RTO, and gathering ends at gather_timeout.
    sent = run_timers(agent, T0 + 10)
    to_first = [t for t, x in sent if x.remote == servers[0]]
    assert to_first == pytest.approx([T0 + 0.25, T0 + 0.75, T0 + 1.75])
    assert events(agent) == [GatheringComplete(tuple(agent.local_candidates))]
    assert agent.gathering_complete and agent.state is IceState.NEW


def test_srflx_is_recorded_with_a_hidden_base_and_redundant_ones_are_dropped() -> None:
    servers = [("203.0.113.1", 3478), ("203.0.113.2", 3478)]
    agent = IceAgent(controlling=True, rng=rng(), stun_servers=servers)
    agent.add_local_address(("10.0.0.2", 5000))
    agent.gather(T0)
    sent = run_timers(agent, T0 + 0.06)
    assert len(sent) == 2
    for _t, x in sent:
        req = stun.decode(x.data)
        reply = stun.StunMessage(stun.Method.BINDING, stun.MessageClass.SUCCESS, req.transaction_id,
                                 ((stun.Attr.XOR_MAPPED_ADDRESS, ("198.51.100.7", 40000)),))
        agent.receive_datagram(stun.encode(reply), x.local, x.remote, T0 + 0.1)
    got = events(agent)
    assert got[:2] == [
        ServerReflexiveDiscovered(servers[0], ("10.0.0.2", 5000), ("198.51.100.7", 40000)),
        ServerReflexiveDiscovered(servers[1], ("10.0.0.2", 5000), ("198.51.100.7", 40000)),
    ]
    assert isinstance(got[2], GatheringComplete)  # all answered: no need to wait for the timeout
    hostc, srflx = got[2].candidates
    assert srflx.type is CandidateType.SRFLX and srflx.address == ("198.51.100.7", 40000)
    assert srflx.priority == compute_priority(CandidateType.SRFLX, 32767)
    assert (srflx.related_address, srflx.related_port) == ("0.0.0.0", 0)
    assert hostc.type is CandidateType.HOST


def test_gathering_response_from_elsewhere_is_ignored() -> None:
    agent = IceAgent(controlling=True, rng=rng(), stun_servers=[("203.0.113.1", 3478)])
    agent.add_local_address(LOCAL)
    agent.gather(T0)
    ((_, x),) = run_timers(agent, T0)
    req = stun.decode(x.data)
    reply = stun.StunMessage(stun.Method.BINDING, stun.MessageClass.SUCCESS, req.transaction_id,
                             ((stun.Attr.XOR_MAPPED_ADDRESS, ("198.51.100.7", 1)),))
    agent.receive_datagram(stun.encode(reply), LOCAL, ("203.0.113.66", 3478), T0 + 0.1)
    assert events(agent) == []


# ---------------------------------------------------------------------------------------------- answering


def _answer(agent: IceAgent, data: bytes) -> stun.StunMessage:
    agent.receive_datagram(data, LOCAL, REMOTE, T0 + 1)
    ((msg, t),) = decode_all(agent.datagrams_to_send(T0 + 1))
    assert (t.local, t.remote) == (LOCAL, REMOTE)
    return msg


def test_valid_check_is_answered_with_the_mapped_address_signed_with_our_password() -> None:
    agent = connected_agent(controlling=False)
    agent.datagrams_to_send(T0)
    msg = _answer(agent, request(ufrag=agent.local_ufrag, pwd=agent.local_pwd, controlling=7))
    assert msg.message_class == stun.MessageClass.SUCCESS
    assert msg.transaction_id == b"T" * 12
    assert msg.get(stun.Attr.XOR_MAPPED_ADDRESS) == REMOTE
    assert msg.check_integrity(stun.short_term_key(agent.local_pwd)) and msg.has_fingerprint


@pytest.mark.parametrize(
    ("variant", "code"),
    [("no-integrity", 400), ("no-priority", 400), ("wrong-ufrag", 401), ("wrong-password", 401)],
)
def test_bad_checks_get_400_or_401_unsigned(variant: str, code: int) -> None:
    agent = connected_agent(controlling=False)
    agent.datagrams_to_send(T0)
    kw: dict = {"ufrag": agent.local_ufrag, "pwd": agent.local_pwd, "controlling": 7}
    if variant == "no-integrity":
        kw["pwd"] = None
    elif variant == "no-priority":
        kw["priority"] = None
    elif variant == "wrong-ufrag":
        kw["ufrag"] = "nope"
    else:
        kw["pwd"] = "W" * 22
    msg = _answer(agent, request(**kw))
    assert msg.message_class == stun.MessageClass.ERROR
    assert msg.get(stun.Attr.ERROR_CODE).code == code
    assert not msg.has_integrity and msg.has_fingerprint
    # A bad check teaches the agent nothing: no new pair appears.
    assert all(p.remote.address == REMOTE and p.remote.type is CandidateType.HOST for p in agent.pairs)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), prefix=st.sampled_from([b"", b"\x00\x01", b"\x01\x01", b"\x01\x11"]))
def test_garbage_never_raises(data: bytes, prefix: bytes) -> None:
    agent = connected_agent()
    blob = prefix + data
    if len(blob) >= 8:
        blob = blob[:4] + (0x2112A442).to_bytes(4, "big") + blob[8:]
    agent.receive_datagram(blob, LOCAL, REMOTE, T0 + 0.01)
    agent.handle_timer(T0 + 0.01)
    assert agent.state is IceState.CHECKING


# ---------------------------------------------------------------------------------------------- checking


def test_checks_carry_the_ice_attributes_and_are_paced_by_ta() -> None:
    remotes = [host(("192.0.2.2", 6000 + i), index=i, foundation=f"r{i}") for i in range(3)]
    agent = connected_agent(controlling=True, remotes=remotes)
    sent = run_timers(agent, T0 + 0.12)
    assert [t for t, _ in sent] == pytest.approx([T0, T0 + 0.05, T0 + 0.10])
    assert [x.remote for _, x in sent] == [r.address for r in remotes]  # highest priority first
    msg = stun.decode(sent[0][1].data)
    assert msg.get(stun.Attr.USERNAME) == f"{PEER_UFRAG}:{agent.local_ufrag}"
    local_prio = agent.local_candidates[0].priority
    assert msg.get(stun.Attr.PRIORITY) == (110 << 24) | (local_prio & 0xFFFFFF)
    assert msg.get(stun.Attr.ICE_CONTROLLING) == agent.tie_breaker
    assert msg.get(stun.Attr.ICE_CONTROLLED) is None
    assert not any(a == stun.Attr.USE_CANDIDATE for a, _ in msg.attributes)  # regular nomination
    assert msg.check_integrity(stun.short_term_key(PEER_PWD)) and msg.has_fingerprint


def test_unanswered_checks_retransmit_then_all_pairs_fail() -> None:
    agent = connected_agent()
    sent = run_timers(agent, T0 + 60)
    times = [t - T0 for t, _ in sent]
    assert times == pytest.approx([0, 0.25, 0.75, 1.75, 3.75, 6.75, 9.75, 12.75])  # RTO doubles, cap 3 s
    assert len({stun.decode(x.data).transaction_id for _, x in sent}) == 1
    (failed,) = events(agent)
    assert failed == IceFailed(REASON_ALL_FAILED)
    assert agent.state is IceState.FAILED and agent.get_timer() is None


def test_connect_timeout_when_no_pair_can_even_be_formed() -> None:
    agent = connected_agent(remotes=[host(("2001:db8::2", 1))])  # IPv6 only vs our IPv4
    assert agent.pairs == []
    assert agent.get_timer() == pytest.approx(T0 + 30.0)
    run_timers(agent, T0 + 31)
    assert events(agent) == [IceFailed(REASON_TIMEOUT)]


def test_success_selects_after_regular_nomination_and_discovers_prflx_local() -> None:
    agent = connected_agent(controlling=True)
    ((_, first),) = run_timers(agent, T0)
    req = stun.decode(first.data)
    agent.receive_datagram(success(req, ("198.51.100.50", 7777)), LOCAL, REMOTE, T0 + 0.02)
    (pair,) = agent.pairs
    assert pair.state is PairState.SUCCEEDED
    assert pair.valid_local is not None and pair.valid_local.type is CandidateType.PRFLX
    assert pair.valid_local.priority == req.get(stun.Attr.PRIORITY)
    assert agent.local_candidates == [pair.local]  # prflx locals are never signalled
    assert events(agent) == []  # not selected until the nomination check is answered
    ((_, nom),) = run_timers(agent, T0 + 0.1)
    nreq = stun.decode(nom.data)
    assert any(a == stun.Attr.USE_CANDIDATE for a, _ in nreq.attributes)
    assert (nom.local, nom.remote) == (LOCAL, REMOTE)
    agent.receive_datagram(success(nreq, ("198.51.100.50", 7777)), LOCAL, REMOTE, T0 + 0.12)
    (sel,) = events(agent)
    assert isinstance(sel, PairSelected)
    assert (sel.local_address, sel.remote_address) == (LOCAL, REMOTE)
    assert sel.local.type is CandidateType.PRFLX and sel.remote == host(REMOTE)
    assert agent.state is IceState.CONNECTED


@pytest.mark.parametrize("wrong", [("192.0.2.99", 6000), ("192.0.2.2", 6001)])
def test_response_from_another_address_fails_the_pair(wrong: Address) -> None:
    agent = connected_agent()
    ((_, first),) = run_timers(agent, T0)
    req = stun.decode(first.data)
    agent.receive_datagram(success(req, LOCAL), LOCAL, wrong, T0 + 0.02)
    assert agent.pairs[0].state is PairState.FAILED
    assert events(agent) == [IceFailed(REASON_ALL_FAILED)]


def test_response_with_bad_integrity_is_ignored() -> None:
    agent = connected_agent()
    ((_, first),) = run_timers(agent, T0)
    req = stun.decode(first.data)
    agent.receive_datagram(success(req, LOCAL, pwd="Z" * 22), LOCAL, REMOTE, T0 + 0.02)
    assert agent.pairs[0].state is PairState.IN_PROGRESS
    agent.receive_datagram(success(req, LOCAL), LOCAL, REMOTE, T0 + 0.03)
    assert agent.pairs[0].state is PairState.SUCCEEDED


def test_incoming_check_from_unknown_address_creates_prflx_remote_and_triggered_check() -> None:
    agent = connected_agent(controlling=False)
    run_timers(agent, T0)  # ordinary check to REMOTE
    other = ("198.51.100.9", 4444)
    agent.receive_datagram(request(ufrag=agent.local_ufrag, pwd=agent.local_pwd, controlling=5, priority=1234),
                           LOCAL, other, T0 + 0.01)
    (answer,) = agent.datagrams_to_send(T0 + 0.01)
    assert answer.remote == other
    prflx = [c for c in agent.remote_candidates if c.type is CandidateType.PRFLX]
    assert [(c.address, c.priority) for c in prflx] == [(other, 1234)]
    sent = run_timers(agent, T0 + 0.06)
    assert sent[0][1].remote == other  # triggered check goes before ordinary ones


def test_controlled_selects_when_use_candidate_arrives_and_its_check_succeeds() -> None:
    agent = connected_agent(controlling=False)
    assert len(run_timers(agent, T0)) == 1
    agent.receive_datagram(request(ufrag=agent.local_ufrag, pwd=agent.local_pwd, controlling=5,
                                   use_candidate=True), LOCAL, REMOTE, T0 + 0.01)
    agent.datagrams_to_send(T0 + 0.01)
    assert events(agent) == []
    sent = run_timers(agent, T0 + 0.06)
    triggered = stun.decode(sent[-1][1].data)
    assert triggered.get(stun.Attr.ICE_CONTROLLED) == agent.tie_breaker
    agent.receive_datagram(success(triggered, LOCAL), LOCAL, REMOTE, T0 + 0.07)
    (sel,) = events(agent)
    assert isinstance(sel, PairSelected) and sel.remote_address == REMOTE
    # A later nomination of the same pair changes nothing.
    agent.receive_datagram(request(ufrag=agent.local_ufrag, pwd=agent.local_pwd, controlling=5,
                                   use_candidate=True, tid=b"U" * 12), LOCAL, REMOTE, T0 + 0.2)
    assert events(agent) == []


def test_checks_before_connect_are_answered_and_replayed_as_triggered_checks() -> None:
    agent = IceAgent(controlling=False, rng=rng())
    agent.add_local_address(LOCAL)
    early = ("198.51.100.9", 4444)
    for i in range(150):
        agent.receive_datagram(
            request(ufrag=agent.local_ufrag, pwd=agent.local_pwd, controlling=5, tid=bytes([i]) * 12),
            LOCAL, early if i == 0 else ("198.51.100.10", 10000 + i), T0)
    answers = decode_all(agent.datagrams_to_send(T0))
    assert len(answers) == 150 and all(m.message_class == stun.MessageClass.SUCCESS for m, _ in answers)
    agent.set_remote(PEER_UFRAG, PEER_PWD, [host(REMOTE)])
    agent.connect(T0 + 1)
    remembered = {p.remote.address for p in agent.pairs} - {REMOTE}
    assert early in remembered and len(remembered) == 100  # bounded
    sent = run_timers(agent, T0 + 1)
    assert sent[0][1].remote == early


def test_role_conflict_on_incoming_check_both_ways() -> None:
    # We control with the larger tie-breaker: 487 (signed), we stay controlling.
    agent = connected_agent(controlling=True)
    agent.datagrams_to_send(T0)
    msg = _answer(agent, request(ufrag=agent.local_ufrag, pwd=agent.local_pwd, controlling=0))
    assert msg.get(stun.Attr.ERROR_CODE).code == 487
    assert msg.check_integrity(stun.short_term_key(agent.local_pwd))
    assert agent.controlling and events(agent) == []
    # We control with the smaller one: switch to controlled, answer normally.
    msg = _answer(agent, request(ufrag=agent.local_ufrag, pwd=agent.local_pwd, controlling=2**64 - 1))
    assert msg.message_class == stun.MessageClass.SUCCESS
    assert not agent.controlling and events(agent) == [RoleChanged(controlling=False)]
    # Controlled meets controlled with a larger tie-breaker: 487; with a smaller one: we take control.
    msg = _answer(agent, request(ufrag=agent.local_ufrag, pwd=agent.local_pwd, controlled=2**64 - 1))
    assert msg.get(stun.Attr.ERROR_CODE).code == 487 and not agent.controlling
    msg = _answer(agent, request(ufrag=agent.local_ufrag, pwd=agent.local_pwd, controlled=0))
    assert msg.message_class == stun.MessageClass.SUCCESS
    assert agent.controlling and events(agent) == [RoleChanged(controlling=True)]


def test_487_response_switches_role_and_retries_the_pair() -> None:
    agent = connected_agent(controlling=True)
    ((_, first),) = run_timers(agent, T0)
    req = stun.decode(first.data)
    agent.receive_datagram(error(req, 487, "Role Conflict"), LOCAL, REMOTE, T0 + 0.02)
    assert events(agent) == [RoleChanged(controlling=False)]
    ((_, retry),) = run_timers(agent, T0 + 0.06)
    retry_msg = stun.decode(retry.data)
    assert retry_msg.get(stun.Attr.ICE_CONTROLLED) == agent.tie_breaker
    assert retry_msg.transaction_id != req.transaction_id


def test_other_error_responses_fail_the_pair() -> None:
    agent = connected_agent()
    ((_, first),) = run_timers(agent, T0)
    agent.receive_datagram(error(stun.decode(first.data), 401, "Unauthorized"), LOCAL, REMOTE, T0 + 0.02)
    assert agent.pairs[0].state is PairState.FAILED


# ---------------------------------------------------------------------------------------------- consent


def _selected_controlled_agent() -> IceAgent:
    agent = connected_agent(controlling=False)
    run_timers(agent, T0)
    agent.receive_datagram(request(ufrag=agent.local_ufrag, pwd=agent.local_pwd, controlling=5,
                                   use_candidate=True), LOCAL, REMOTE, T0 + 0.01)
    agent.datagrams_to_send(T0 + 0.01)
    sent = run_timers(agent, T0 + 0.06)
    agent.receive_datagram(success(stun.decode(sent[-1][1].data), LOCAL), LOCAL, REMOTE, T0 + 0.07)
    assert isinstance(events(agent)[0], PairSelected)
    return agent


def test_consent_checks_every_5s_plus_minus_20_percent_then_every_second_while_unanswered_and_loss_after_30s(
) -> None:
    agent = _selected_controlled_agent()
    answered_until = T0 + 60
    starts: list[float] = []
    for _ in range(100_000):  # answer every consent check for 60 s, then none
        t = agent.get_timer()
        if t is None or t > T0 + 100:
            break
        agent.handle_timer(t)
        for msg, x in decode_all(agent.datagrams_to_send(t)):
            assert (x.local, x.remote) == (LOCAL, REMOTE)
            if msg.transaction_id not in {tid for tid, _ in starts}:
                starts.append((msg.transaction_id, t))
            if t < answered_until:
                agent.receive_datagram(success(msg, LOCAL), x.local, x.remote, t + 0.01)
    times = [t for _, t in starts]
    fresh_gaps = [b - a for a, b in itertools.pairwise(t for t in times if t < answered_until)]
    assert fresh_gaps and all(4.0 <= g <= 6.0 for g in fresh_gaps)
    assert len(set(round(g, 3) for g in fresh_gaps)) > 1  # randomised
    last_answer = max(t for t in times if t < answered_until) + 0.01
    degraded, lost = events(agent)
    assert degraded == ConsentDegraded(since=last_answer)
    # Unanswered: checks every second (so the path's return is noticed within about one), from the first miss.
    late = [t for t in times if t > answered_until]
    assert late[0] - last_answer <= 6.0 + 0.01
    assert all(abs(b - a - 1.0) < 1e-6 for a, b in itertools.pairwise(late[1:]))
    assert lost == ConsentLost()
    assert agent.state is IceState.FAILED and agent.get_timer() is None


def test_a_consent_answer_after_a_silence_reports_the_path_back_once() -> None:
    agent = _selected_controlled_agent()
    pending = []
    t = agent.get_timer()
    while t is not None and t < T0 + 12:
        agent.handle_timer(t)
        pending.extend(decode_all(agent.datagrams_to_send(t)))
        t = agent.get_timer()
    (degraded,) = events(agent)
    assert isinstance(degraded, ConsentDegraded)
    msg, x = pending[-1]
    agent.receive_datagram(success(msg, LOCAL), x.local, x.remote, T0 + 12)
    (restored,) = events(agent)
    assert restored == ConsentRestored(outage=T0 + 12 - degraded.since)
    for msg, x in pending[:-1]:  # late answers to older checks: fresh, but nothing more to report
        agent.receive_datagram(success(msg, LOCAL), x.local, x.remote, T0 + 12.1)
    assert events(agent) == [] and agent.state is IceState.CONNECTED
    # Back to the ordinary pace.
    agent.datagrams_to_send(T0 + 12.1)
    assert 12 + 4.0 <= agent.get_timer() - T0 <= 12 + 6.0


def test_answered_consent_keeps_the_agent_connected_and_peer_checks_are_answered() -> None:
    agent = _selected_controlled_agent()
    now = T0 + 0.1
    for i in range(40):  # 200 s
        now += 5.0
        agent.handle_timer(now)
        for msg, x in decode_all(agent.datagrams_to_send(now)):
            if msg.message_class == stun.MessageClass.REQUEST:
                agent.receive_datagram(success(msg, LOCAL), x.local, x.remote, now + 0.01)
        agent.receive_datagram(request(ufrag=agent.local_ufrag, pwd=agent.local_pwd, controlling=5,
                                       tid=bytes([i]) * 12), LOCAL, REMOTE, now + 0.02)
        answers = [m for m, _ in decode_all(agent.datagrams_to_send(now + 0.02))]
        assert [m.message_class for m in answers] == [stun.MessageClass.SUCCESS]
    assert agent.state is IceState.CONNECTED and events(agent) == []


def test_close_silences_the_agent() -> None:
    agent = connected_agent()
    agent.close()
    agent.receive_datagram(request(ufrag=agent.local_ufrag, pwd=agent.local_pwd, controlling=5), LOCAL, REMOTE,
                           T0)
    assert agent.datagrams_to_send(T0) == [] and agent.get_timer() is None
    assert agent.state is IceState.CLOSED
