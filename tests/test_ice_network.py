"""ICE agents against each other on the in-memory network: loss, NATs, role conflicts, consent.

Everything runs in virtual time, so the 30 s connect deadline and the 30 s consent timeout cost milliseconds.
"""

from __future__ import annotations

import random

import attrs
import pytest

from tunnel_core.candidate import CandidateType
from tunnel_core.ice import (
    REASON_ALL_FAILED,
    ConsentLost,
    GatheringComplete,
    IceAgent,
    IceFailed,
    IceState,
    PairSelected,
    RoleChanged,
    ServerReflexiveDiscovered,
)
from tunnel_core.testing import NatType, Network, Recorder, StunResponder, VirtualClock

STUN_SERVER = ("198.51.100.10", 3478)


@attrs.define
class Lab:
    net: Network
    a: IceAgent
    b: IceAgent
    ra: Recorder
    rb: Recorder
    t_connect: float = 0.0

    def done(self) -> bool:
        return all(r.of(PairSelected) or r.of(IceFailed) for r in (self.ra, self.rb))

    def connect(self, deadline: float = 40.0) -> None:
        """Gather, swap candidates through "signalling", connect, run until both decided or deadline."""
        net = self.net
        self.a.gather(net.clock.now)
        self.b.gather(net.clock.now)
        assert net.run_until(lambda: bool(self.ra.of(GatheringComplete) and self.rb.of(GatheringComplete)),
                             net.clock.now + 10)
        ca = self.ra.of(GatheringComplete)[0].candidates
        cb = self.rb.of(GatheringComplete)[0].candidates
        self.a.set_remote(self.b.local_ufrag, self.b.local_pwd, cb)
        self.b.set_remote(self.a.local_ufrag, self.a.local_pwd, ca)
        self.t_connect = net.clock.now
        self.a.connect(net.clock.now)
        self.b.connect(net.clock.now)
        net.run_until(self.done, self.t_connect + deadline)


def make_lab(
    seed: int = 1,
    *,
    nat_a: NatType | None = None,
    nat_b: NatType | None = None,
    a_controlling: bool = True,
    b_controlling: bool = False,
    **net_kw,
) -> Lab:
    net = Network(VirtualClock(1000.0), random.Random(seed), delay=0.01, **net_kw)
    net.add_host(STUN_SERVER[0]).bind(StunResponder(), STUN_SERVER[1])
    if nat_a is None:
        host_a = net.add_host("192.0.2.1")
    else:
        host_a = net.add_host("10.0.1.2", net.add_nat("198.51.100.101", nat_a))
    if nat_b is None:
        host_b = net.add_host("192.0.2.2")
    else:
        host_b = net.add_host("10.0.2.2", net.add_nat("198.51.100.102", nat_b))
    a = IceAgent(controlling=a_controlling, rng=random.Random(seed * 1000 + 1).randbytes,
                 stun_servers=[STUN_SERVER])
    b = IceAgent(controlling=b_controlling, rng=random.Random(seed * 1000 + 2).randbytes,
                 stun_servers=[STUN_SERVER])
    ra, rb = Recorder(a), Recorder(b)
    a.add_local_address(host_a.bind(ra, 5000))
    b.add_local_address(host_b.bind(rb, 6000))
    return Lab(net, a, b, ra, rb)


def assert_same_pair(lab: Lab) -> tuple[PairSelected, PairSelected]:
    (sa,) = lab.ra.of(PairSelected)
    (sb,) = lab.rb.of(PairSelected)
    # Each side's remote is the other's local candidate (same transport address as signalled or learned).
    assert sa.local.address == sb.remote.address
    assert sb.local.address == sa.remote.address
    assert lab.a.state is IceState.CONNECTED and lab.b.state is IceState.CONNECTED
    assert lab.a.selected_pair == (sa.local, sa.remote)
    assert lab.b.selected_pair == (sb.local, sb.remote)
    return sa, sb


def test_host_candidates_connect_on_the_same_pair() -> None:
    lab = make_lab()
    lab.connect()
    sa, sb = assert_same_pair(lab)
    assert (sa.local_address, sa.remote_address) == (("192.0.2.1", 5000), ("192.0.2.2", 6000))
    assert (sb.local_address, sb.remote_address) == (("192.0.2.2", 6000), ("192.0.2.1", 5000))
    assert sa.local.type is CandidateType.HOST and sa.remote.type is CandidateType.HOST
    # Host addresses are public here: the STUN answer is reported but the srflx is redundant.
    assert lab.ra.of(ServerReflexiveDiscovered)[0].mapped == ("192.0.2.1", 5000)
    assert [c.type for c in lab.a.local_candidates] == [CandidateType.HOST]
    assert lab.net.clock.now - lab.t_connect < 1.0


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_connects_under_20_percent_loss_within_the_deadline(seed: int) -> None:
    lab = make_lab(seed, loss=0.2, duplicate=0.05, reorder=0.2)
    lab.connect(deadline=30.0)
    assert not lab.ra.of(IceFailed) and not lab.rb.of(IceFailed)
    assert_same_pair(lab)
    assert lab.net.clock.now - lab.t_connect < 30.0


CONES = [NatType.FULL_CONE, NatType.RESTRICTED_CONE, NatType.PORT_RESTRICTED_CONE]


@pytest.mark.parametrize("nat_a", CONES)
@pytest.mark.parametrize("nat_b", CONES)
def test_cone_nats_connect_through_reflexive_candidates(nat_a: NatType, nat_b: NatType) -> None:
    lab = make_lab(nat_a=nat_a, nat_b=nat_b)
    lab.connect()
    sa, sb = assert_same_pair(lab)
    assert sa.local_address == ("10.0.1.2", 5000) and sb.local_address == ("10.0.2.2", 6000)
    assert sa.remote_address[0] == "198.51.100.102" and sb.remote_address[0] == "198.51.100.101"
    for ev in (sa, sb):
        assert ev.local.type in (CandidateType.SRFLX, CandidateType.PRFLX)
        assert ev.remote.type in (CandidateType.SRFLX, CandidateType.PRFLX)
    # The signalled srflx is written like upstream: unspecified related address and port 0.
    (srflx,) = [c for c in lab.a.local_candidates if c.type is CandidateType.SRFLX]
    assert srflx.to_sdp().endswith(" typ srflx raddr 0.0.0.0 rport 0")


def test_symmetric_against_full_cone_connects_through_peer_reflexive_candidates() -> None:
    lab = make_lab(nat_a=NatType.SYMMETRIC, nat_b=NatType.FULL_CONE)
    lab.connect()
    sa, sb = assert_same_pair(lab)
    assert CandidateType.PRFLX in (sa.local.type, sb.remote.type)


def test_symmetric_against_symmetric_fails_within_the_deadline() -> None:
    lab = make_lab(nat_a=NatType.SYMMETRIC, nat_b=NatType.SYMMETRIC)
    lab.connect()
    for rec, agent in ((lab.ra, lab.a), (lab.rb, lab.b)):
        failed = rec.first(IceFailed)
        assert failed is not None
        assert failed[0].reason == REASON_ALL_FAILED
        assert failed[1] - lab.t_connect < 30.0
        assert agent.state is IceState.FAILED
        assert agent.get_timer() is None
        assert not rec.of(PairSelected)


@pytest.mark.parametrize("controlling", [True, False])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_role_conflict_resolves_to_one_of_each_and_connects(controlling: bool, seed: int) -> None:
    lab = make_lab(seed, a_controlling=controlling, b_controlling=controlling)
    lab.connect()
    assert_same_pair(lab)
    assert lab.a.controlling != lab.b.controlling
    # Exactly one side changed role, and said so; the larger tie-breaker wins the controlling role.
    changed = lab.ra.of(RoleChanged) + lab.rb.of(RoleChanged)
    assert len(changed) == 1 and changed[0].controlling is not controlling
    winner = lab.a if lab.a.tie_breaker > lab.b.tie_breaker else lab.b
    assert winner.controlling


def test_consent_keeps_the_pair_alive_then_loss_of_consent_is_reported() -> None:
    lab = make_lab()
    lab.connect()
    assert_same_pair(lab)
    # Consent freshness every ~5 s keeps it alive indefinitely.
    lab.net.run_for(120.0)
    assert not lab.ra.of(ConsentLost) and not lab.rb.of(ConsentLost)
    assert lab.a.state is IceState.CONNECTED
    cut_at = lab.net.clock.now
    lab.net.cut("192.0.2.1", "192.0.2.2")
    lab.net.run_until(lambda: bool(lab.ra.of(ConsentLost) and lab.rb.of(ConsentLost)), cut_at + 60)
    for rec, agent in ((lab.ra, lab.a), (lab.rb, lab.b)):
        lost = rec.first(ConsentLost)
        assert lost is not None
        # The last answered consent check was at most ~6 s before the cut; expiry is 30 s after it.
        assert 30.0 - 6.1 <= lost[1] - cut_at <= 30.0
        assert agent.state is IceState.FAILED


def test_consent_is_answered_and_refreshed_under_loss() -> None:
    lab = make_lab(3, loss=0.2)
    lab.connect()
    assert_same_pair(lab)
    lab.net.run_for(300.0)
    assert not lab.ra.of(ConsentLost) and not lab.rb.of(ConsentLost)


def test_host_and_reflexive_mix_prefers_the_direct_host_pair() -> None:
    """A behind a cone NAT, B public: B's host address is reachable, so no NAT traversal trick is needed."""
    lab = make_lab(nat_a=NatType.PORT_RESTRICTED_CONE)
    lab.connect()
    sa, _sb = assert_same_pair(lab)
    assert sa.remote.type is CandidateType.HOST
    assert sa.remote_address == ("192.0.2.2", 6000)
