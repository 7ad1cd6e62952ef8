"""An in-memory UDP network with NAT boxes and virtual time, for driving sans-IO machines in tests.

Why it exists: ICE, QUIC and the forwarding session are only convincing when their datagrams cross something
that loses, duplicates, reorders and translates them the way real paths do. This module gives tests that, in
virtual time, deterministically (all chance comes from a seeded ``random.Random``-like object the test owns;
the core never imports ``random``).

Model:

* A *host* is an IP literal, either on the public "internet" or inside the private realm of a :class:`Nat`.
  Hosts in the same realm reach each other directly; crossing a NAT rewrites the source on the way out and
  filters/rewrites on the way in. There is one level of NAT (no NAT behind NAT) and no hairpinning unless the
  NAT is built with ``hairpin=True``.
* A *machine* is anything with the contract ``receive_datagram(data, local, remote, now)``,
  ``datagrams_to_send(now) -> list[Transmit]``, ``get_timer() -> float | None`` and ``handle_timer(now)``.
  Machines are bound to addresses (their "sockets"); a Transmit whose ``local`` is not bound to its machine is
  a bug in the machine and raises.
* Delivery happens after ``delay`` (plus a random extra of up to ``reorder_delay`` with probability
  ``reorder``), each datagram is lost with probability ``loss`` and duplicated with probability ``duplicate``.
  The outbound NAT mapping is made when the datagram leaves; inbound filtering happens when it arrives at the
  NAT, so simultaneous-open races behave like on a real path.

NAT behaviour follows /work/shared/natlab/README.md section 3 (RFC 4787 terms):

================== ==================================== ======================================
type               mapping                              filtering (inbound allowed if ...)
================== ==================================== ======================================
FULL_CONE          endpoint-independent (keeps port)    the mapping exists
RESTRICTED_CONE    endpoint-independent                 the mapping sent to that remote IP
PORT_RESTRICTED    endpoint-independent                 the mapping sent to that remote IP:port
SYMMETRIC          a fresh random port per destination  the mapping's own destination IP:port
================== ==================================== ======================================
"""

from __future__ import annotations

import enum
import heapq
import ipaddress
import itertools
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs

from tunnel_core import stun
from tunnel_core.testing.clock import VirtualClock
from tunnel_core.testing.link import Link
from tunnel_core.types import Address, Transmit

__all__ = [
    "Datagram",
    "Host",
    "Machine",
    "Nat",
    "NatType",
    "Network",
    "Recorder",
    "StunResponder",
    "SupportsRandom",
    "attach",
]

#: Safety bound on loop iterations of run_until, so a machine that keeps asking for a past timer fails the
#: test instead of hanging it.
MAX_STEPS = 2_000_000


class SupportsRandom(Protocol):
    """What we need from ``random.Random``: a float in [0, 1)."""

    def random(self) -> float: ...


class Machine(Protocol):
    """The contract every sans-IO machine in tunnel_core keeps (docs/architecture.md)."""

    def receive_datagram(self, data: bytes, local: Address, remote: Address, now: float) -> None: ...

    def datagrams_to_send(self, now: float) -> list[Transmit]: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


class NatType(enum.Enum):
    FULL_CONE = "fullcone"
    RESTRICTED_CONE = "rcone"
    PORT_RESTRICTED_CONE = "prc"
    SYMMETRIC = "sym"


@attrs.frozen
class Datagram:
    """One datagram as the network saw it; ``src``/``dst`` are the addresses on the wire at that moment."""

    data: bytes
    src: Address
    dst: Address


@attrs.define(eq=False)
class _Mapping:
    internal: Address
    external_port: int
    #: for SYMMETRIC the single destination this mapping is for
    destination: Address | None
    contacted_ips: set[str] = attrs.Factory(set)
    contacted: set[Address] = attrs.Factory(set)
    last_used: float = 0.0


class Nat:
    """A NAT box with one public IP in front of a private realm; see the module docstring for behaviour."""

    def __init__(
        self,
        public_ip: str,
        nat_type: NatType,
        *,
        rand: SupportsRandom | None = None,
        mapping_timeout: float | None = None,
        hairpin: bool = False,
    ) -> None:
        self.public_ip = public_ip
        self.nat_type = nat_type
        self.mapping_timeout = mapping_timeout
        self.hairpin = hairpin
        self._rand = rand
        self._by_key: dict[tuple[Address, Address | None], _Mapping] = {}
        self._by_port: dict[int, _Mapping] = {}
        self._next_port = 40000

    @property
    def mappings(self) -> list[tuple[Address, Address]]:
        """(internal, external) of every live mapping, for assertions."""
        return [(m.internal, (self.public_ip, m.external_port)) for m in self._by_port.values()]

    def _expired(self, m: _Mapping, now: float) -> bool:
        return self.mapping_timeout is not None and now - m.last_used > self.mapping_timeout

    def _drop(self, m: _Mapping) -> None:
        self._by_port.pop(m.external_port, None)
        self._by_key.pop((m.internal, m.destination), None)

    def _allocate_port(self, preferred: int | None) -> int:
        if preferred is not None and preferred not in self._by_port and preferred >= 1024:
            return preferred
        for _ in range(100_000):
            if self._rand is not None and self.nat_type is NatType.SYMMETRIC:
                port = 1024 + int(self._rand.random() * (65536 - 1024))
            else:
                port = self._next_port
                self._next_port = 1024 + (self._next_port - 1024 + 1) % (65536 - 1024)
            if port not in self._by_port:
                return port
        raise RuntimeError("NAT ran out of ports")

    def outbound(self, src: Address, dst: Address, now: float) -> Address:
        """Translate an outgoing source address, creating or refreshing the mapping."""
        symmetric = self.nat_type is NatType.SYMMETRIC
        key = (src, dst if symmetric else None)
        m = self._by_key.get(key)
        if m is not None and self._expired(m, now):
            self._drop(m)
            m = None
        if m is None:
            port = self._allocate_port(None if symmetric else src[1])
            m = _Mapping(internal=src, external_port=port, destination=key[1])
            self._by_key[key] = m
            self._by_port[port] = m
        m.contacted_ips.add(dst[0])
        m.contacted.add(dst)
        m.last_used = now
        return (self.public_ip, m.external_port)

    def inbound(self, src: Address, dst_port: int, now: float) -> Address | None:
        """Internal destination for a datagram from ``src`` to our public ``dst_port``, or None if filtered."""
        m = self._by_port.get(dst_port)
        if m is None:
            return None
        if self._expired(m, now):
            self._drop(m)
            return None
        if self.nat_type is NatType.RESTRICTED_CONE and src[0] not in m.contacted_ips:
            return None
        if self.nat_type in (NatType.PORT_RESTRICTED_CONE, NatType.SYMMETRIC) and src not in m.contacted:
            return None
        return m.internal


@attrs.define(eq=False)
class Host:
    """An IP literal in a realm (``nat is None`` means the public internet)."""

    network: Network
    ip: str
    nat: Nat | None
    _next_port: int = 50000

    def bind(self, machine: Machine, port: int | None = None) -> Address:
        """Give ``machine`` a socket on this host; port None picks a free ephemeral port."""
        if port is None:
            while (self.ip, self._next_port) in self.network.bindings:
                self._next_port += 1
            port = self._next_port
            self._next_port += 1
        address = (self.ip, port)
        self.network.bind(machine, address)
        return address


@attrs.define
class _Pending:
    when: float
    seq: int
    data: bytes
    src: Address
    dst: Address
    #: realm the datagram is travelling in when it arrives at dst (None = internet)
    realm: Nat | None


_INTERNET = None


class Network:
    """The in-memory network; see the module docstring.

    ``loss``, ``duplicate``, ``reorder``, ``delay`` and ``reorder_delay`` are plain attributes so a test can
    change them mid-run (for example set ``loss = 1.0`` to cut everything). ``cut(ip_a, ip_b)`` drops traffic
    between two hosts (compared on their own IPs, before NAT), ``heal`` undoes it. ``filters`` are extra
    predicates ``f(Datagram) -> bool`` that drop a datagram when they return True.
    """

    def __init__(
        self,
        clock: VirtualClock | None = None,
        rand: SupportsRandom | None = None,
        *,
        delay: float = 0.005,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        reorder_delay: float = 0.02,
    ) -> None:
        if (loss or duplicate or reorder) and rand is None:
            raise ValueError("loss, duplication and reordering need a seeded rand")
        self.clock = clock if clock is not None else VirtualClock()
        self.rand = rand
        self.delay = delay
        self.loss = loss
        self.duplicate = duplicate
        self.reorder = reorder
        self.reorder_delay = reorder_delay
        self.filters: list[Callable[[Datagram], bool]] = []
        self.hosts: dict[str, Host] = {}
        self.nats: dict[str, Nat] = {}
        self.bindings: dict[Address, Machine] = {}
        self.machines: list[Machine] = []
        self.delivered: list[Datagram] = []
        self.dropped: list[Datagram] = []
        self.record = False
        self._cuts: set[frozenset[str]] = set()
        self._links: dict[tuple[str, str], Link] = {}
        #: (when, seq, datagram): plain tuples, because the heap compares entries on every push and pop and a tuple
        #: compares in C (attrs' generated ordering cost a tenth of a bulk congestion run); seq breaks ties in order.
        self._queue: list[tuple[float, int, _Pending]] = []
        self._seq = itertools.count()

    # ------------------------------------------------------------------------------------------ topology

    def add_nat(
        self,
        public_ip: str,
        nat_type: NatType,
        *,
        mapping_timeout: float | None = None,
        hairpin: bool = False,
    ) -> Nat:
        self._check_free_ip(public_ip)
        nat = Nat(public_ip, nat_type, rand=self.rand, mapping_timeout=mapping_timeout, hairpin=hairpin)
        self.nats[public_ip] = nat
        return nat

    def add_host(self, ip: str, nat: Nat | None = None) -> Host:
        self._check_free_ip(ip)
        host = Host(self, ip, nat)
        self.hosts[ip] = host
        return host

    def _check_free_ip(self, ip: str) -> None:
        ipaddress.ip_address(ip)
        if ip in self.hosts or ip in self.nats:
            raise ValueError(f"IP {ip} already used")

    def bind(self, machine: Machine, address: Address) -> None:
        if address[0] not in self.hosts:
            raise ValueError(f"no host {address[0]}")
        if address in self.bindings:
            raise ValueError(f"{address} already bound")
        self.bindings[address] = machine
        self.add_machine(machine)

    def add_machine(self, machine: Machine) -> None:
        """Drive ``machine``'s timers even if it has no socket of its own yet."""
        if not any(m is machine for m in self.machines):
            self.machines.append(machine)

    def cut(self, ip_a: str, ip_b: str) -> None:
        self._cuts.add(frozenset((ip_a, ip_b)))

    def heal(self, ip_a: str, ip_b: str) -> None:
        self._cuts.discard(frozenset((ip_a, ip_b)))

    def add_link(self, src_ip: str, dst_ip: str, link: Link) -> Link:
        """Route datagrams from host ``src_ip`` to IP ``dst_ip`` (as addressed on the wire) through ``link``
        instead of the network-wide delay and loss: one direction only, add the reverse separately."""
        self._links[(src_ip, dst_ip)] = link
        return link

    # ------------------------------------------------------------------------------------------ routing

    def _chance(self, p: float) -> bool:
        if p <= 0.0:
            return False
        assert self.rand is not None
        return self.rand.random() < p

    def send(self, transmit: Transmit, sender: Machine | None = None) -> None:
        """Inject one datagram as if the machine bound at ``transmit.local`` sent it now."""
        now = self.clock.now
        owner = self.bindings.get(transmit.local)
        if owner is None or (sender is not None and owner is not sender):
            raise ValueError(f"{transmit.local} is not a socket of this machine")
        host = self.hosts[transmit.local[0]]
        src = transmit.local
        dst = transmit.remote
        realm = host.nat
        if self._is_cut(transmit.local[0], dst[0]):
            self._note_drop(Datagram(transmit.data, src, dst))
            return
        if realm is not _INTERNET and not self._in_realm(dst[0], realm):
            # Leaves the private realm: rewrite the source at the NAT.
            # A datagram to the NAT's own public IP comes back in through inbound() on arrival (hairpin).
            src = realm.outbound(src, dst, now)
            realm = _INTERNET
        link = self._links.get((transmit.local[0], dst[0])) if self._links else None
        if link is not None:
            when = link.admit(len(transmit.data), now)
            if when is None:
                self._note_drop(Datagram(transmit.data, src, dst))
            else:
                self._push(_Pending(when, next(self._seq), transmit.data, src, dst, realm))
            return
        if self._chance(self.loss):
            self._note_drop(Datagram(transmit.data, src, dst))
            return
        copies = 2 if self._chance(self.duplicate) else 1
        for _ in range(copies):
            when = now + self.delay
            if self._chance(self.reorder):
                assert self.rand is not None
                when += self.rand.random() * self.reorder_delay
            self._push(_Pending(when, next(self._seq), transmit.data, src, dst, realm))

    def _push(self, pending: _Pending) -> None:
        heapq.heappush(self._queue, (pending.when, pending.seq, pending))

    def _in_realm(self, ip: str, realm: Nat | None) -> bool:
        host = self.hosts.get(ip)
        return host is not None and host.nat is realm

    def _is_cut(self, ip_a: str, ip_b: str) -> bool:
        return frozenset((ip_a, ip_b)) in self._cuts

    def _note_drop(self, dg: Datagram) -> None:
        if self.record:
            self.dropped.append(dg)

    def _arrive(self, p: _Pending) -> None:
        """A datagram reaches its destination IP in realm ``p.realm``: pass NATs inbound, then deliver."""
        now = self.clock.now
        dst = p.dst
        if p.realm is _INTERNET:
            nat = self.nats.get(dst[0])
            if nat is not None:
                if p.src[0] == nat.public_ip and not nat.hairpin:
                    self._note_drop(Datagram(p.data, p.src, dst))
                    return
                internal = nat.inbound(p.src, dst[1], now)
                if internal is None:
                    self._note_drop(Datagram(p.data, p.src, dst))
                    return
                dst = internal
            elif not self._in_realm(dst[0], _INTERNET):
                self._note_drop(Datagram(p.data, p.src, dst))
                return
        dg = Datagram(p.data, p.src, dst)
        if any(f(dg) for f in self.filters):
            self._note_drop(dg)
            return
        machine = self.bindings.get(dst)
        if machine is None:
            self._note_drop(dg)
            return
        if self.record:
            self.delivered.append(dg)
        machine.receive_datagram(p.data, dst, p.src, now)

    # ------------------------------------------------------------------------------------------ running

    def _flush(self) -> None:
        now = self.clock.now
        for machine in list(self.machines):
            for transmit in machine.datagrams_to_send(now):
                self.send(transmit, machine)

    def _step(self) -> None:
        """Everything due at the current instant: timers, deliveries, and the datagrams they cause."""
        now = self.clock.now
        for machine in list(self.machines):
            t = machine.get_timer()
            if t is not None and t <= now:
                machine.handle_timer(now)
        self._flush()
        while self._queue and self._queue[0][0] <= now:
            self._arrive(heapq.heappop(self._queue)[2])
            self._flush()

    def next_time(self) -> float | None:
        """When something next happens: a delivery or the earliest machine timer."""
        times = [self._queue[0][0]] if self._queue else []
        for machine in self.machines:
            t = machine.get_timer()
            if t is not None:
                times.append(t)
        return min(times) if times else None

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def run_until(self, predicate: Callable[[], bool], deadline: float) -> bool:
        """Advance virtual time step by step until ``predicate()`` holds (True) or ``deadline`` passes (False).

        ``deadline`` is absolute virtual time. The predicate is evaluated after every step, so it may drain
        machine events.
        """
        for _ in range(MAX_STEPS):
            self._step()
            if predicate():
                return True
            nxt = self.next_time()
            if nxt is None or nxt > deadline:
                self.clock.advance_to(deadline)
                self._step()
                return predicate()
            self.clock.advance_to(nxt)
        raise RuntimeError("run_until exceeded its step bound (a machine keeps asking for a past timer?)")

    def run_until_quiet(self, deadline: float) -> bool:
        """Run until nothing is in flight and no timer is due before ``deadline``; False if cut off by it."""
        for _ in range(MAX_STEPS):
            self._step()
            nxt = self.next_time()
            if nxt is None or (not self._queue and nxt > deadline):
                return True
            if nxt > deadline:
                self.clock.advance_to(deadline)
                return False
            self.clock.advance_to(nxt)
        raise RuntimeError("run_until_quiet exceeded its step bound")

    def run_for(self, seconds: float) -> None:
        """Advance by ``seconds`` of virtual time, processing everything on the way."""
        end = self.clock.now + seconds
        self.run_until(lambda: False, end)


class StunResponder:
    """A tiny STUN server machine: answers Binding requests with XOR-MAPPED-ADDRESS (and nothing else).

    It exists so NAT tests can gather server-reflexive candidates without a real server; ``requests`` counts
    what it answered.
    """

    def __init__(self) -> None:
        self.requests = 0
        self._out: list[Transmit] = []

    def receive_datagram(self, data: bytes, local: Address, remote: Address, now: float) -> None:
        try:
            msg = stun.decode(data)
        except stun.StunError:
            return
        if msg.method != stun.Method.BINDING or msg.message_class != stun.MessageClass.REQUEST:
            return
        self.requests += 1
        reply = stun.StunMessage(
            method=stun.Method.BINDING,
            message_class=stun.MessageClass.SUCCESS,
            transaction_id=msg.transaction_id,
            attributes=((stun.Attr.XOR_MAPPED_ADDRESS, remote),),
        )
        self._out.append(Transmit(stun.encode(reply, fingerprint=True), local, remote))

    def datagrams_to_send(self, now: float) -> list[Transmit]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        return None


def attach(network: Network, machine: Machine, addresses: Sequence[Address]) -> None:
    """Bind ``machine`` to every address in ``addresses`` (a shorthand for tests)."""
    for address in addresses:
        network.bind(machine, address)


class Recorder:
    """Wraps a machine that also has ``next_event()`` and collects its events after every input.

    Networks call the contract methods only, so without this a test would have to drain events in its
    predicate; with it, ``recorder.events`` is always current and ``recorder.of(EventType)`` filters them.
    """

    def __init__(self, machine: Any) -> None:
        self.machine = machine
        self.events: list[Any] = []
        self.times: list[float] = []

    def _drain(self, now: float) -> None:
        while (event := self.machine.next_event()) is not None:
            self.events.append(event)
            self.times.append(now)

    def receive_datagram(self, data: bytes, local: Address, remote: Address, now: float) -> None:
        self.machine.receive_datagram(data, local, remote, now)
        self._drain(now)

    def datagrams_to_send(self, now: float) -> list[Transmit]:
        out = self.machine.datagrams_to_send(now)
        self._drain(now)
        return out

    def get_timer(self) -> float | None:
        return self.machine.get_timer()

    def handle_timer(self, now: float) -> None:
        self.machine.handle_timer(now)
        self._drain(now)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def first(self, kind: type) -> tuple[Any, float] | None:
        """The first event of ``kind`` and the virtual time it was seen, or None."""
        for event, when in zip(self.events, self.times, strict=True):
            if isinstance(event, kind):
                return event, when
        return None
