"""Relay candidates in the ICE agent, on the in-memory network with NATs and a fake TURN server (virtual time)."""

from __future__ import annotations

import random

import pytest
from tests.helpers.fake_turn import FakeTurnServer

from tunnel_core import stun
from tunnel_core.candidate import CandidateType, compute_priority, local_preference
from tunnel_core.ice import GatheringComplete, IceAgent, IceFailed, PairSelected
from tunnel_core.ice.timing import IceTiming
from tunnel_core.testing import NatType, Network, Recorder, StunResponder, VirtualClock
from tunnel_core.testing.network import Datagram
from tunnel_core.turn import TurnServer
from tunnel_core.types import Transmit

STUN_SERVER = ("198.51.100.10", 3478)
TURN_ADDRESS = ("198.51.100.20", 3478)


def make(nat_a: NatType, nat_b: NatType, *, turn: bool = True, seed: int = 1):  # type: ignore[no-untyped-def]
    net = Network(VirtualClock(1000.0), random.Random(seed), delay=0.01)
    net.add_host(STUN_SERVER[0]).bind(StunResponder(), STUN_SERVER[1])
    net.add_host(TURN_ADDRESS[0])
    server = FakeTurnServer(net, TURN_ADDRESS)
    host_a = net.add_host("10.0.1.2", net.add_nat("198.51.100.101", nat_a))
    host_b = net.add_host("10.0.2.2", net.add_nat("198.51.100.102", nat_b))
    servers = [TurnServer(TURN_ADDRESS, "u", "p")] if turn else []
    a = IceAgent(controlling=True, rng=random.Random(seed * 10 + 1).randbytes, stun_servers=[STUN_SERVER],
                 turn_servers=servers)
    b = IceAgent(controlling=False, rng=random.Random(seed * 10 + 2).randbytes, stun_servers=[STUN_SERVER],
                 turn_servers=servers)
    ra, rb = Recorder(a), Recorder(b)
    a.add_local_address(host_a.bind(ra, 5000))
    b.add_local_address(host_b.bind(rb, 6000))
    return net, server, a, b, ra, rb


def connect(net, a, b, ra, rb, deadline: float = 40.0) -> None:  # type: ignore[no-untyped-def]
    a.gather(net.clock.now)
    b.gather(net.clock.now)
    assert net.run_until(lambda: bool(ra.of(GatheringComplete) and rb.of(GatheringComplete)), net.clock.now + 10)
    a.set_remote(b.local_ufrag, b.local_pwd, b.local_candidates)
    b.set_remote(a.local_ufrag, a.local_pwd, a.local_candidates)
    a.connect(net.clock.now)
    b.connect(net.clock.now)
    net.run_until(lambda: all(r.of(PairSelected) or r.of(IceFailed) for r in (ra, rb)), net.clock.now + deadline)


def test_gathering_adds_a_relay_candidate_with_the_relay_priority() -> None:
    net, _, a, _b, ra, _rb = make(NatType.SYMMETRIC, NatType.SYMMETRIC)
    a.gather(net.clock.now)
    assert net.run_until(lambda: bool(ra.of(GatheringComplete)), net.clock.now + 10)
    (relay,) = [c for c in a.local_candidates if c.type is CandidateType.RELAY]
    assert relay.host == TURN_ADDRESS[0] and relay.port >= 50000
    assert relay.priority == compute_priority(CandidateType.RELAY, local_preference(CandidateType.RELAY, False, 0))
    assert relay.priority == (16383 << 8) | 255
    assert a.is_relayed(relay.address) and a.socket_for(relay.address) == ("10.0.1.2", 5000)


def test_symmetric_nats_connect_through_the_relay_and_consent_keeps_it() -> None:
    net, server, a, b, ra, rb = make(NatType.SYMMETRIC, NatType.SYMMETRIC)
    connect(net, a, b, ra, rb)
    (sa,) = ra.of(PairSelected)
    (sb,) = rb.of(PairSelected)
    assert CandidateType.RELAY in (sa.local.type, sa.remote.type)
    assert CandidateType.RELAY in (sb.local.type, sb.remote.type)
    before = server.relayed_datagrams
    net.run_for(60.0)  # consent checks cross the relay for a minute; nobody loses consent
    assert server.relayed_datagrams > before
    assert not ra.of(IceFailed) and not rb.of(IceFailed) and a.state.value == "connected"


def test_without_turn_symmetric_nats_fail() -> None:
    net, _, a, b, ra, rb = make(NatType.SYMMETRIC, NatType.SYMMETRIC, turn=False)
    connect(net, a, b, ra, rb)
    assert ra.of(IceFailed) and rb.of(IceFailed)


@pytest.mark.parametrize(("nat_a", "nat_b"), [
    (NatType.FULL_CONE, NatType.FULL_CONE),
    (NatType.SYMMETRIC, NatType.FULL_CONE),
    (NatType.PORT_RESTRICTED_CONE, NatType.PORT_RESTRICTED_CONE),
])
def test_a_punchable_pair_stays_direct_with_turn_configured(nat_a: NatType, nat_b: NatType) -> None:
    net, _, a, b, ra, rb = make(nat_a, nat_b)
    connect(net, a, b, ra, rb)
    (sa,) = ra.of(PairSelected)
    assert CandidateType.RELAY not in (sa.local.type, sa.remote.type)


class SendLog(Recorder):
    """A Recorder that also remembers every Transmit the agent asked for."""

    def __init__(self, machine: IceAgent) -> None:
        super().__init__(machine)
        self.transmits: list[Transmit] = []

    def datagrams_to_send(self, now: float) -> list[Transmit]:
        out = super().datagrams_to_send(now)
        self.transmits.extend(out)
        return out


def test_relayed_transmits_leave_from_the_real_socket_only() -> None:
    net, _, a, b, _, _ = make(NatType.SYMMETRIC, NatType.SYMMETRIC)
    # Re-wrap the agents so every transmit is seen (the network drives whatever is bound at the socket address).
    la, lb = SendLog(a), SendLog(b)
    net.bindings[("10.0.1.2", 5000)] = la
    net.bindings[("10.0.2.2", 6000)] = lb
    net.machines = [m for m in net.machines if not isinstance(m, Recorder)] + [la, lb]
    connect(net, a, b, la, lb)
    assert la.of(PairSelected)
    assert {t.local for t in la.transmits} == {("10.0.1.2", 5000)}
    assert {t.local for t in lb.transmits} == {("10.0.2.2", 6000)}
    assert any(t.remote == TURN_ADDRESS and 0x40 <= t.data[0] <= 0x4F for t in la.transmits)


@pytest.mark.parametrize(("grace", "relayed"), [(0.0, True), (1.0, False)])
def test_relay_grace_lets_a_slower_direct_pair_win(grace: float, relayed: bool) -> None:
    """Direct paths blocked for the first 0.4 s (a NAT hole that opens late): the relay answers first, and only
    the grace keeps the controlling side from nominating it."""
    net, _, a, b, ra, rb = make(NatType.FULL_CONE, NatType.FULL_CONE)
    a.timing = b.timing = IceTiming(relay_grace=grace)
    opens_at: list[float] = []

    def block_direct(dg: Datagram) -> bool:
        direct = TURN_ADDRESS[0] not in (dg.src[0], dg.dst[0]) and STUN_SERVER[0] not in (dg.src[0], dg.dst[0])
        return bool(opens_at) and direct and net.clock.now < opens_at[0]

    net.filters.append(block_direct)
    a.gather(net.clock.now)
    b.gather(net.clock.now)
    assert net.run_until(lambda: bool(ra.of(GatheringComplete) and rb.of(GatheringComplete)), net.clock.now + 10)
    a.set_remote(b.local_ufrag, b.local_pwd, b.local_candidates)
    b.set_remote(a.local_ufrag, a.local_pwd, a.local_candidates)
    opens_at.append(net.clock.now + 0.4)
    a.connect(net.clock.now)
    b.connect(net.clock.now)
    assert net.run_until(lambda: bool(ra.of(PairSelected) and rb.of(PairSelected)), net.clock.now + 40)
    (sa,) = ra.of(PairSelected)[:1]
    assert (CandidateType.RELAY in (sa.local.type, sa.remote.type)) is relayed


def test_refused_credentials_are_reported_with_gathering_and_do_not_block_it() -> None:
    net, _, a, _b, ra, _rb = make(NatType.FULL_CONE, NatType.FULL_CONE)
    a.turn_servers = [TurnServer(TURN_ADDRESS, "u", "wrong")]
    a.gather(net.clock.now)
    assert net.run_until(lambda: bool(ra.of(GatheringComplete)), net.clock.now + 10)
    (done,) = ra.of(GatheringComplete)
    assert done.relay_errors == ("TURN server 198.51.100.20:3478: credentials refused (401 Unauthorized)",)
    assert "wrong" not in done.relay_errors[0]
    assert [c.type for c in done.candidates] == [CandidateType.HOST, CandidateType.SRFLX]


class StunAndTurnServer(FakeTurnServer):
    """Like coturn: one address answers unauthenticated Binding requests and serves TURN."""

    def receive_datagram(self, data: bytes, local: tuple[str, int], remote: tuple[str, int], now: float) -> None:
        if local == self.address and stun.is_stun(data):
            msg = stun.decode(data)
            if msg.method == stun.Method.BINDING and msg.message_class == stun.MessageClass.REQUEST:
                reply = stun.StunMessage(stun.Method.BINDING, stun.MessageClass.SUCCESS, msg.transaction_id,
                                         ((stun.Attr.XOR_MAPPED_ADDRESS, remote),))
                self._out.append(Transmit(stun.encode(reply, fingerprint=True), self.address, remote))
                return
        super().receive_datagram(data, local, remote, now)


def test_gathering_ends_at_once_when_the_stun_server_is_also_the_turn_server() -> None:
    # The Binding answer arrives from the TURN server's address; it must complete the gathering transaction
    # rather than be fed to the TURN client (which would leave gathering to its 3 s timeout).
    net = Network(VirtualClock(1000.0), random.Random(3), delay=0.01)
    net.add_host(TURN_ADDRESS[0])
    StunAndTurnServer(net, TURN_ADDRESS)
    host = net.add_host("10.0.1.2", net.add_nat("198.51.100.101", NatType.PORT_RESTRICTED_CONE))
    agent = IceAgent(controlling=True, rng=random.Random(4).randbytes, stun_servers=[TURN_ADDRESS],
                     turn_servers=[TurnServer(TURN_ADDRESS, "u", "p")])
    recorder = Recorder(agent)
    agent.add_local_address(host.bind(recorder, 5000))
    started = net.clock.now
    agent.gather(started)
    assert net.run_until(lambda: bool(recorder.of(GatheringComplete)), started + 10)
    assert net.clock.now - started < IceTiming().gather_timeout / 2
    (done,) = recorder.of(GatheringComplete)
    assert done.relay_errors == ()
    assert sorted(c.type.value for c in done.candidates) == ["host", "relay", "srflx"]


def test_closing_the_agent_releases_its_turn_allocation() -> None:
    # A dead tunnel must not hold relay ports on the TURN server until the allocation's lifetime runs out.
    net, server, a, b, ra, rb = make(NatType.SYMMETRIC, NatType.SYMMETRIC)
    connect(net, a, b, ra, rb)
    (selected,) = ra.of(PairSelected)[:1]
    assert selected.local.type is CandidateType.RELAY or selected.remote.type is CandidateType.RELAY
    holders = set(server.allocations)
    assert holders, "the relayed pair needs a live allocation"
    a.close(net.clock.now)
    b.close(net.clock.now)
    net.run_for(1.0)
    assert set(server.released) == holders
    assert server.allocations == {}
