"""The in-memory network of the testing kit: delivery, impairments, NAT behaviours and the run loop."""

from __future__ import annotations

import random

import pytest

from tunnel_core import stun
from tunnel_core.testing import NatType, Network, Recorder, StunResponder, VirtualClock
from tunnel_core.types import Address, Transmit


class Sink:
    """A machine that records what it receives and sends what the test queues, optionally on a timer."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, Address, Address, float]] = []
        self.outbox: list[Transmit] = []
        self.timer: float | None = None
        self.fired: list[float] = []

    def receive_datagram(self, data: bytes, local: Address, remote: Address, now: float) -> None:
        self.received.append((data, local, remote, now))

    def datagrams_to_send(self, now: float) -> list[Transmit]:
        out, self.outbox = self.outbox, []
        return out

    def get_timer(self) -> float | None:
        return self.timer

    def handle_timer(self, now: float) -> None:
        self.fired.append(now)
        self.timer = None


class Echo(Sink):
    """Answers every datagram back to its sender, from the socket it arrived on."""

    def receive_datagram(self, data: bytes, local: Address, remote: Address, now: float) -> None:
        super().receive_datagram(data, local, remote, now)
        self.outbox.append(Transmit(data, local, remote))


def _net(**kw) -> Network:
    return Network(VirtualClock(100.0), random.Random(kw.pop("seed", 1)), **kw)


def test_delivery_between_public_hosts_takes_the_delay() -> None:
    net = _net(delay=0.03)
    a, b = Sink(), Sink()
    a_addr = net.add_host("192.0.2.1").bind(a, 1000)
    b_addr = net.add_host("192.0.2.2").bind(b)
    a.outbox.append(Transmit(b"x", a_addr, b_addr))
    assert net.run_until(lambda: bool(b.received), deadline=101.0)
    assert b.received == [(b"x", b_addr, a_addr, pytest.approx(100.03))]
    assert net.clock.now == pytest.approx(100.03)


def test_run_until_gives_up_at_the_deadline_and_fires_timers_on_the_way() -> None:
    net = _net()
    m = Sink()
    net.add_host("192.0.2.1").bind(m, 1)
    m.timer = 100.5
    assert net.run_until(lambda: False, deadline=102.0) is False
    assert m.fired == [100.5]
    assert net.clock.now == 102.0


def test_run_until_quiet_stops_when_nothing_is_due() -> None:
    net = _net()
    a, b = Echo(), Echo()
    a_addr = net.add_host("192.0.2.1").bind(a, 1)
    b_addr = net.add_host("192.0.2.2").bind(b, 2)
    net.filters.append(lambda dg: len(b.received) >= 3 and dg.dst == b_addr)  # stop the ping-pong
    a.outbox.append(Transmit(b"ping", a_addr, b_addr))
    assert net.run_until_quiet(deadline=200.0)
    assert len(b.received) == 3 and len(a.received) == 3
    assert net.in_flight == 0


def test_loss_drops_about_the_configured_share() -> None:
    net = _net(loss=0.3, seed=7)
    a, b = Sink(), Sink()
    a_addr = net.add_host("192.0.2.1").bind(a, 1)
    b_addr = net.add_host("192.0.2.2").bind(b, 2)
    a.outbox.extend(Transmit(bytes([i % 256]), a_addr, b_addr) for i in range(2000))
    net.run_for(1.0)
    assert 1250 < len(b.received) < 1550


def test_duplication_and_reordering() -> None:
    net = _net(duplicate=0.5, reorder=0.5, reorder_delay=0.1, seed=3)
    a, b = Sink(), Sink()
    a_addr = net.add_host("192.0.2.1").bind(a, 1)
    b_addr = net.add_host("192.0.2.2").bind(b, 2)
    sent = [i.to_bytes(2, "big") for i in range(200)]
    a.outbox.extend(Transmit(d, a_addr, b_addr) for d in sent)
    net.run_for(1.0)
    got = [r[0] for r in b.received]
    assert set(got) == set(sent)
    assert len(got) > 250  # roughly half were duplicated
    assert got != sorted(got)  # and some overtook others


def test_full_loss_and_cuts_drop_everything_until_healed() -> None:
    net = _net()
    a, b = Sink(), Sink()
    a_addr = net.add_host("192.0.2.1").bind(a, 1)
    b_addr = net.add_host("192.0.2.2").bind(b, 2)
    net.cut("192.0.2.1", "192.0.2.2")
    a.outbox.append(Transmit(b"1", a_addr, b_addr))
    net.run_for(1)
    net.heal("192.0.2.1", "192.0.2.2")
    a.outbox.append(Transmit(b"2", a_addr, b_addr))
    net.run_for(1)
    assert [r[0] for r in b.received] == [b"2"]


def test_sending_from_a_socket_that_is_not_yours_raises() -> None:
    net = _net()
    a, b = Sink(), Sink()
    net.add_host("192.0.2.1").bind(a, 1)
    b_addr = net.add_host("192.0.2.2").bind(b, 2)
    b.outbox.append(Transmit(b"spoof", ("192.0.2.1", 1), b_addr))
    with pytest.raises(ValueError, match="not a socket"):
        net.run_for(1)
    with pytest.raises(ValueError, match="already bound"):
        net.bind(Sink(), b_addr)
    with pytest.raises(ValueError, match="no host"):
        net.bind(Sink(), ("203.0.113.9", 1))


def _nat_lab(nat_type: NatType, **kw) -> tuple[Network, Sink, Address, Echo, Address, Echo, Address]:
    """inside (10.0.0.2) behind a NAT at 198.51.100.1; two public echo servers s1, s2 (s2 has two ports)."""
    net = _net(**kw)
    nat = net.add_nat("198.51.100.1", nat_type)
    inside = Sink()
    in_addr = net.add_host("10.0.0.2", nat).bind(inside, 5000)
    s1, s2 = Echo(), Echo()
    s1_addr = net.add_host("203.0.113.1").bind(s1, 3478)
    s2_host = net.add_host("203.0.113.2")
    s2_addr = s2_host.bind(s2, 3478)
    s2_host.bind(s2, 3479)
    return net, inside, in_addr, s1, s1_addr, s2, s2_addr


def _probe(net: Network, inside: Sink, in_addr: Address, dst: Address) -> Address:
    """Send from inside to dst (an echo): the source dst saw, i.e. the NAT mapping."""
    before = len(inside.received)
    inside.outbox.append(Transmit(b"probe", in_addr, dst))
    net.run_for(0.1)
    assert len(inside.received) == before + 1, "echo did not come back"
    _, local, remote, _ = inside.received[-1]
    assert (local, remote) == (in_addr, dst)
    return net.bindings[dst].received[-1][2]  # type: ignore[attr-defined]


def _unsolicited(net: Network, sender: Address, mapped: Address) -> bool:
    """Whether a datagram from ``sender`` to the public mapping gets in."""
    machine = net.bindings[sender]
    machine.outbox.append(Transmit(b"unsolicited", sender, mapped))  # type: ignore[attr-defined]
    inside = net.bindings[("10.0.0.2", 5000)]
    before = len(inside.received)  # type: ignore[attr-defined]
    net.run_for(0.1)
    return len(inside.received) > before  # type: ignore[attr-defined]


@pytest.mark.parametrize("nat_type", [NatType.FULL_CONE, NatType.RESTRICTED_CONE, NatType.PORT_RESTRICTED_CONE])
def test_cone_nats_map_independently_of_the_destination(nat_type: NatType) -> None:
    net, inside, in_addr, _s1, s1_addr, _s2, s2_addr = _nat_lab(nat_type)
    m1 = _probe(net, inside, in_addr, s1_addr)
    m2 = _probe(net, inside, in_addr, s2_addr)
    assert m1 == m2 == ("198.51.100.1", 5000)  # endpoint-independent, port preserved like masquerade


def test_symmetric_nat_maps_each_destination_to_a_new_port() -> None:
    net, inside, in_addr, _s1, s1_addr, _s2, s2_addr = _nat_lab(NatType.SYMMETRIC)
    m1 = _probe(net, inside, in_addr, s1_addr)
    m2 = _probe(net, inside, in_addr, s2_addr)
    assert m1[0] == m2[0] == "198.51.100.1"
    assert m1[1] != m2[1]
    assert _probe(net, inside, in_addr, s1_addr) == m1  # stable per destination


@pytest.mark.parametrize(
    ("nat_type", "same_ip_other_port", "other_ip"),
    [
        (NatType.FULL_CONE, True, True),
        (NatType.RESTRICTED_CONE, True, False),
        (NatType.PORT_RESTRICTED_CONE, False, False),
        (NatType.SYMMETRIC, False, False),
    ],
)
def test_nat_filtering(nat_type: NatType, same_ip_other_port: bool, other_ip: bool) -> None:
    net, inside, in_addr, _s1, s1_addr, _s2, s2_addr = _nat_lab(nat_type)
    # inside talks only to s2:3478
    mapped = _probe(net, inside, in_addr, s2_addr)
    assert _unsolicited(net, s2_addr, mapped) is True
    assert _unsolicited(net, ("203.0.113.2", 3479), mapped) is same_ip_other_port
    assert _unsolicited(net, s1_addr, mapped) is other_ip


def test_unmapped_ports_and_private_addresses_are_unreachable_from_outside() -> None:
    net, inside, in_addr, s1, s1_addr, _s2, _s2_addr = _nat_lab(NatType.FULL_CONE)
    net.record = True
    s1.outbox.append(Transmit(b"a", s1_addr, ("198.51.100.1", 5000)))  # no mapping yet
    s1.outbox.append(Transmit(b"b", s1_addr, in_addr))  # private address, not routed on the internet
    net.run_for(0.1)
    assert inside.received == []
    assert len(net.dropped) == 2


def test_hosts_behind_the_same_nat_talk_directly_and_no_hairpin_by_default() -> None:
    net = _net()
    nat = net.add_nat("198.51.100.1", NatType.FULL_CONE)
    a, b = Echo(), Sink()
    a_addr = net.add_host("10.0.0.2", nat).bind(a, 1)
    b_addr = net.add_host("10.0.0.3", nat).bind(b, 2)
    b.outbox.append(Transmit(b"lan", b_addr, a_addr))
    net.run_for(0.1)
    assert b.received[-1][2] == a_addr  # no translation inside the realm
    b.outbox.append(Transmit(b"hairpin", b_addr, ("198.51.100.1", 1)))
    net.run_for(0.1)
    assert [r[0] for r in a.received] == [b"lan"]


def test_mappings_expire_after_their_timeout() -> None:
    net = _net()
    nat = net.add_nat("198.51.100.1", NatType.FULL_CONE, mapping_timeout=30.0)
    inside = Sink()
    in_addr = net.add_host("10.0.0.2", nat).bind(inside, 5000)
    server = Echo()
    s_addr = net.add_host("203.0.113.1").bind(server, 9)
    inside.outbox.append(Transmit(b"open", in_addr, s_addr))
    net.run_for(0.1)
    assert len(inside.received) == 1
    assert nat.mappings == [(in_addr, ("198.51.100.1", 5000))]
    net.run_for(31.0)
    server.outbox.append(Transmit(b"late", s_addr, ("198.51.100.1", 5000)))
    net.run_for(0.1)
    assert len(inside.received) == 1


def test_stun_responder_reports_the_public_mapping() -> None:
    net = _net()
    nat = net.add_nat("198.51.100.1", NatType.PORT_RESTRICTED_CONE)
    client = Sink()
    c_addr = net.add_host("10.0.0.2", nat).bind(client, 4000)
    responder = StunResponder()
    s_addr = net.add_host("203.0.113.1").bind(responder, 3478)
    tid = bytes(range(12))
    request = stun.encode(stun.StunMessage(stun.Method.BINDING, stun.MessageClass.REQUEST, tid))
    client.outbox.append(Transmit(request, c_addr, s_addr))
    client.outbox.append(Transmit(b"not stun", c_addr, s_addr))
    net.run_for(0.1)
    assert responder.requests == 1
    (data, _local, remote, _now), = client.received
    reply = stun.decode(data)
    assert remote == s_addr and reply.transaction_id == tid
    assert reply.message_class == stun.MessageClass.SUCCESS
    assert reply.get(stun.Attr.XOR_MAPPED_ADDRESS) == ("198.51.100.1", 4000)


def test_recorder_collects_events_with_their_time() -> None:
    class Evented(Sink):
        def __init__(self) -> None:
            super().__init__()
            self.pending: list[str] = []

        def handle_timer(self, now: float) -> None:
            super().handle_timer(now)
            self.pending.append("tick")

        def next_event(self) -> str | None:
            return self.pending.pop(0) if self.pending else None

    net = _net()
    machine = Evented()
    rec = Recorder(machine)
    net.add_host("192.0.2.1").bind(rec, 1)
    machine.timer = 101.0
    net.run_for(2)
    assert rec.events == ["tick"] and rec.times == [101.0]
    assert rec.first(str) == ("tick", 101.0)


def test_impairments_need_a_seeded_source_of_chance() -> None:
    with pytest.raises(ValueError, match="seeded"):
        Network(VirtualClock(), None, loss=0.1)
