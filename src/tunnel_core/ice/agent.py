"""The sans-IO ICE agent: RFC 8445 full ICE, non-trickle, one component, UDP, plus RFC 7675 consent.

Why our own agent: upstream uses str0m's agent on plain UDP sockets; aioice is asyncio-bound and hides its
sockets, so it cannot share the selected socket with aioquic under trio or gevent. This agent never touches a
socket: the adapter binds one UDP socket per local address, tells us its base (``add_local_address``), feeds
every STUN datagram in (``receive_datagram``) and sends what ``datagrams_to_send`` returns from the socket
named by ``Transmit.local``.

Life cycle: ``add_local_address`` (host candidates) -> ``gather`` (server-reflexive candidates via STUN, then
``GatheringComplete``) -> signalling exchanges candidates -> ``set_remote`` -> ``connect`` (checks) ->
``PairSelected`` -> consent freshness until ``ConsentLost`` or ``close``. A deadline of
``timing.connect_timeout`` from ``connect`` and "every pair failed" both end in ``IceFailed`` with upstream's
wording. A failed or closed agent stays so and ignores input.

Roles: the controlling side uses regular nomination (after a check succeeds it repeats the check of the best
valid pair with USE-CANDIDATE). As controlled we also accept aggressive nomination (aioice puts USE-CANDIDATE
on every check); a later nomination of a higher-priority pair is reported as a second ``PairSelected``.

Relay candidates (TURN, RFC 8656): with ``turn_servers``, ``gather`` also allocates on every server of the
family of each host socket (one ``tunnel_core.turn.TurnClient`` per (socket, server)). An allocation adds a relay
candidate whose *virtual base* is the relayed address itself (and the mapped address as a srflx candidate).
Inside the agent a relay candidate is paired and checked like a host candidate, with checks going out as
``Transmit(local=relayed address)``; ``datagrams_to_send`` wraps them into ChannelData / Send indications from the
allocation's socket to the TURN server, so adapters only ever see real sockets. Inbound datagrams from a TURN
server (ChannelData, Data indications, TURN responses) are unwrapped here too: STUN payloads are processed as if
received on the relayed address from the peer, and ``receive_from_relay`` hands the rest (QUIC) to the caller,
which sends its own traffic for a relayed path through ``wrap``. As controlling side we hold back nominating a
relayed pair for ``timing.relay_grace`` while direct pairs are still being checked (a peer-reflexive direct path
often succeeds a moment after the relay), so a punchable pair does not end up relayed. Gathering completes when
STUN and TURN are all answered (or ``gather_timeout``). After selection, allocations the selected pair does not
use are released.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import deque
from collections.abc import Callable, Sequence

from tunnel_core import stun
from tunnel_core.candidate import (
    TYPE_PREFERENCE,
    Candidate,
    CandidateType,
    compute_foundation,
    compute_priority,
    local_preference,
)
from tunnel_core.errors import LocalProtocolError, RemoteProtocolError
from tunnel_core.ice import events as ev
from tunnel_core.ice.checklist import MAX_PAIRS, CandidatePair, PairState, Trigger, form_checklist, is_ipv6
from tunnel_core.ice.credentials import (
    PWD_LENGTH,
    UFRAG_LENGTH,
    check_credentials,
    random_ice_string,
    random_tie_breaker,
)
from tunnel_core.ice.timing import IceTiming
from tunnel_core.ice.transaction import Purpose, StunTransaction
from tunnel_core.turn import Allocated, AllocationFailed, DataReceived, TurnClient, TurnServer, TurnState
from tunnel_core.types import Address, Transmit

__all__ = ["EARLY_CHECK_LIMIT", "IceAgent", "IceState"]

#: Checks that arrive before ``connect`` are remembered, at most this many (aioice keeps 100 too).
EARLY_CHECK_LIMIT = 100
#: Pairs created by peers' checks (peer-reflexive) may grow the checklist beyond MAX_PAIRS, but not forever.
PAIR_HARD_CAP = 2 * MAX_PAIRS
REMOTE_CANDIDATE_LIMIT = 2 * MAX_PAIRS


class IceState(enum.Enum):
    NEW = "new"
    GATHERING = "gathering"
    CHECKING = "checking"
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSED = "closed"


def _unspecified(host: str) -> str:
    return "::" if is_ipv6(host) else "0.0.0.0"


def _is_relayed(pair: CandidatePair) -> bool:
    return CandidateType.RELAY in (pair.local.type, pair.remote.type)


def _has_attr(msg: stun.StunMessage, attr: int) -> bool:
    return any(a == attr for a, _ in msg.attributes)


class IceAgent:
    """See the module docstring. All time comes from ``now`` arguments; all randomness from ``rng``."""

    def __init__(
        self,
        *,
        controlling: bool,
        rng: Callable[[int], bytes],
        stun_servers: Sequence[Address] = (),
        timing: IceTiming = IceTiming(),  # noqa: B008 - frozen value object, safe as a default
        local_ufrag: str | None = None,
        local_pwd: str | None = None,
        turn_servers: Sequence[TurnServer] = (),
    ) -> None:
        self._rng = rng
        self.timing = timing
        self.controlling = controlling
        self.stun_servers: list[Address] = [(ipaddress.ip_address(h).compressed, p) for h, p in stun_servers]
        self.turn_servers: list[TurnServer] = [
            TurnServer((ipaddress.ip_address(t.address[0]).compressed, t.address[1]), t.username, t.password)
            for t in turn_servers
        ]
        #: TURN allocations by (socket, server), and by relayed address (the virtual base of a relay candidate)
        self._turn_by_path: dict[tuple[Address, Address], TurnClient] = {}
        self._turn_by_relayed: dict[Address, TurnClient] = {}
        #: non-STUN payloads unwrapped while processing TURN input, for ``receive_from_relay``'s caller
        self._relayed_inbox: list[tuple[bytes, Address, Address]] = []
        self._relay_errors: list[str] = []
        self.local_ufrag = local_ufrag if local_ufrag is not None else random_ice_string(rng, UFRAG_LENGTH)
        self.local_pwd = local_pwd if local_pwd is not None else random_ice_string(rng, PWD_LENGTH)
        check_credentials(self.local_ufrag, self.local_pwd)
        self.tie_breaker = random_tie_breaker(rng)
        self.remote_ufrag: str | None = None
        self.remote_pwd: str | None = None
        self.selected_pair: tuple[Candidate, Candidate] | None = None
        self.gathering_complete = False

        self._state = IceState.NEW
        self._bases: list[Address] = []
        #: (candidate, base) in gathering order: host then srflx (and later relay)
        self._locals: list[tuple[Candidate, Address]] = []
        self._prflx_locals: list[tuple[Candidate, Address]] = []
        self._remotes: list[Candidate] = []
        self._prflx_remote_count = 0
        self._pairs: list[CandidatePair] = []
        self._pair_by_key: dict[tuple[Address, Address], CandidatePair] = {}
        self._triggered: deque[CandidatePair] = deque()
        self._nominating: CandidatePair | None = None
        #: controlling: when a held-back nomination of a relayed pair goes ahead (see the module docstring)
        self._nominate_at: float | None = None
        self._selected: CandidatePair | None = None
        self._transactions: dict[bytes, StunTransaction] = {}
        self._gather_queue: deque[tuple[Address, Address]] = deque()
        self._gather_deadline: float | None = None
        self._early: dict[tuple[Address, Address], tuple[int, bool]] = {}
        self._connect_started = False
        self._connect_deadline: float | None = None
        self._next_pace = float("-inf")
        #: the latest ``now`` we were given, so get_timer never answers with a time before it
        self._now = float("-inf")
        self._next_consent: float | None = None
        self._last_consent = 0.0
        self._outbox: list[Transmit] = []
        self._events: deque[ev.IceEvent] = deque()

    # ------------------------------------------------------------------------------------------ properties

    @property
    def state(self) -> IceState:
        return self._state

    @property
    def local_candidates(self) -> list[Candidate]:
        """What we signal: host and server-reflexive candidates (never peer-reflexive ones)."""
        return [c for c, _ in self._locals]

    @property
    def remote_candidates(self) -> list[Candidate]:
        return list(self._remotes)

    @property
    def pairs(self) -> list[CandidatePair]:
        """The checklist, highest priority first (read-only view for diagnostics and tests)."""
        return list(self._pairs)

    @property
    def _finished(self) -> bool:
        return self._state in (IceState.FAILED, IceState.CLOSED)

    # ------------------------------------------------------------------------------------------ setup

    def add_local_address(self, address: Address) -> None:
        """Register the base of a UDP socket the adapter bound; it becomes a host candidate at once."""
        if self._connect_started or self._finished:
            raise LocalProtocolError("local addresses must be added before connect()")
        try:
            ip = ipaddress.ip_address(address[0])
            port = int(address[1])
        except (ValueError, TypeError, IndexError) as exc:
            raise LocalProtocolError(f"not an (ip, port) address: {address!r}") from exc
        if ip.is_unspecified or not 0 < port <= 0xFFFF:
            raise LocalProtocolError(f"a host candidate needs a concrete address, got {address!r}")
        base = (ip.compressed, port)
        if base in self._bases:
            return
        self._bases.append(base)
        index = sum(1 for c, _ in self._locals if c.type is CandidateType.HOST)
        priority = compute_priority(CandidateType.HOST, local_preference(CandidateType.HOST, ip.version == 6, index))
        cand = Candidate(
            foundation=compute_foundation(CandidateType.HOST, base[0]),
            component=1,
            transport="udp",
            priority=priority,
            host=base[0],
            port=base[1],
            type=CandidateType.HOST,
        )
        # Host candidates stay ahead of reflexive ones in the list we signal.
        hosts = [x for x in self._locals if x[0].type is CandidateType.HOST]
        others = [x for x in self._locals if x[0].type is not CandidateType.HOST]
        self._locals = [*hosts, (cand, base), *others]

    def gather(self, now: float) -> None:
        """Start server-reflexive gathering: one Binding request per (base, STUN server of its family)."""
        if self._finished:
            return
        if self._gather_deadline is not None or self.gathering_complete:
            raise LocalProtocolError("gather() was already called")
        for base in self._bases:
            for server in self.stun_servers:
                if is_ipv6(base[0]) == is_ipv6(server[0]):
                    self._gather_queue.append((base, server))
            for turn in self.turn_servers:
                if is_ipv6(base[0]) == is_ipv6(turn.address[0]) and (base, turn.address) not in self._turn_by_path:
                    client = TurnClient(server=turn, base=base, rng=self._rng)
                    self._turn_by_path[(base, turn.address)] = client
                    client.allocate(now)
        self._now = max(self._now, now)
        self._gather_deadline = now + self.timing.gather_timeout
        if not self._connect_started:
            self._state = IceState.GATHERING
        self._maybe_gathering_complete(now)

    def set_remote(self, ufrag: str, pwd: str, candidates: Sequence[Candidate]) -> None:
        """The peer's credentials and all its candidates (no trickle). Unusable candidates are skipped."""
        if self._finished:
            return
        if self._connect_started or self.remote_ufrag is not None:
            raise LocalProtocolError("set_remote() may be called once, before connect()")
        if not ufrag or not pwd or ":" in ufrag:
            raise RemoteProtocolError("remote ICE credentials are empty or malformed")
        self.remote_ufrag = ufrag
        self.remote_pwd = pwd
        for cand in candidates:
            if len(self._remotes) >= REMOTE_CANDIDATE_LIMIT:
                break
            if cand.component != 1 or cand.transport.lower() != "udp" or not 0 < cand.port <= 0xFFFF:
                continue
            try:
                ipaddress.ip_address(cand.host)
            except ValueError:
                continue
            if self._find_remote(cand.address) is None:
                self._remotes.append(cand)

    def connect(self, now: float) -> None:
        """Form the checklist and start checking; the connect deadline runs from here."""
        if self._finished:
            return
        if self.remote_pwd is None:
            raise LocalProtocolError("connect() needs set_remote() first")
        if self._connect_started:
            raise LocalProtocolError("connect() was already called")
        self._connect_started = True
        self._now = max(self._now, now)
        self._connect_deadline = now + self.timing.connect_timeout
        self._state = IceState.CHECKING
        self._pairs = form_checklist(self._locals, self._remotes, self.controlling)
        self._pair_by_key = {p.key: p for p in self._pairs}
        # The peer's checks reach our relayed address only once the server holds a permission for its IP.
        for client in self._turn_by_relayed.values():
            for cand in self._remotes:
                client.permit(cand.host, now)
        early, self._early = self._early, {}
        for (local, remote), (priority, use_candidate) in early.items():
            self._on_check(local, remote, priority, use_candidate, now)

    def close(self, now: float | None = None) -> None:
        """Stop everything: no more checks, no more events besides those already queued.

        With ``now``, TURN allocations are released (Refresh with LIFETIME 0): the next datagrams_to_send still
        carries those releases, so a relay does not hold a dead tunnel's ports until the lifetime runs out.
        """
        self._state = IceState.CLOSED
        self._transactions.clear()
        self._triggered.clear()
        self._gather_queue.clear()
        self._outbox.clear()
        if now is not None:
            for client in self._turn_by_path.values():
                client.close(now)

    # ------------------------------------------------------------------------------------------ outputs

    def datagrams_to_send(self, now: float) -> list[Transmit]:
        out, self._outbox = self._outbox, []
        if self._turn_by_path:
            out = [w for t in out if (w := self.wrap(t, now)) is not None]
            for client in self._turn_by_path.values():
                out.extend(client.datagrams_to_send(now))
        return out

    # ------------------------------------------------------------------------------------------ relaying

    def is_relay_server(self, local: Address, remote: Address) -> bool:
        """Whether a datagram on socket ``local`` from ``remote`` comes from one of our TURN servers."""
        return (local, remote) in self._turn_by_path

    def is_relayed(self, local: Address) -> bool:
        return local in self._turn_by_relayed

    def socket_for(self, local: Address) -> Address:
        """The socket that carries traffic of local address ``local`` (the allocation's socket for a relayed one)."""
        client = self._turn_by_relayed.get(local)
        return client.base if client is not None else local

    def wrap(self, transmit: Transmit, now: float) -> Transmit | None:
        """Turn a Transmit from a relayed address into the datagram for its TURN server; others pass unchanged.

        None means the datagram cannot go yet (permission pending, allocation gone): callers drop it, as a
        lossy network would. Works after ``close`` too, so QUIC's closing frames still reach the peer."""
        client = self._turn_by_relayed.get(transmit.local)
        if client is None:
            return transmit
        return client.send(transmit.remote, transmit.data, now)

    def receive_from_relay(self, data: bytes, local: Address, remote: Address,
                           now: float) -> list[tuple[bytes, Address, Address]]:
        """Feed a datagram from a TURN server. STUN it carried is processed here; every other payload comes back
        as (payload, relayed address, peer), i.e. as if it had arrived on a socket bound at the relayed address."""
        client = self._turn_by_path.get((local, remote))
        if client is None:
            return []
        self._now = max(self._now, now)
        if stun.is_stun(data) and data[8:20] in self._transactions:
            # The TURN server is often our STUN server too (coturn is both): the answer to our own Binding
            # request must reach the gathering, or it waits out gather_timeout for a reply the TURN client ate.
            self._receive_stun(data, local, remote, now)
            return []
        client.receive_datagram(data, now)
        self._drain_turn(client, now)
        out, self._relayed_inbox = self._relayed_inbox, []
        return out

    def _drain_turn(self, client: TurnClient, now: float) -> None:
        while (tev := client.next_event()) is not None:
            if isinstance(tev, DataReceived):
                relayed = client.relayed
                if relayed is None:
                    continue
                if stun.is_stun(tev.data):
                    if not self._finished:
                        self._receive_stun(tev.data, relayed, tev.peer, now)
                elif len(self._relayed_inbox) < 1024:
                    self._relayed_inbox.append((tev.data, relayed, tev.peer))
            elif isinstance(tev, Allocated):
                self._add_relay(client, tev, now)
            elif isinstance(tev, AllocationFailed) and not self.gathering_complete:
                host, port = client.server
                where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                self._relay_errors.append(f"TURN server {where}: {tev.reason}")
            # AllocationLost is caught by consent freshness when the selected pair used it.
        self._maybe_gathering_complete(now)

    def _add_relay(self, client: TurnClient, allocated: Allocated, now: float) -> None:
        if self.gathering_complete or self._finished:
            client.close(now)
            return
        relayed = allocated.relayed
        if is_ipv6(relayed[0]) != is_ipv6(client.base[0]) or relayed in self._turn_by_relayed:
            client.close(now)
            return
        if allocated.mapped is not None:
            self._events.append(ev.ServerReflexiveDiscovered(server=client.server, base=client.base,
                                                             mapped=allocated.mapped))
            self._add_srflx(allocated.mapped, client.base, client.server)
        self._turn_by_relayed[relayed] = client
        ipv6 = is_ipv6(relayed[0])
        index = sum(1 for c, _ in self._locals if c.type is CandidateType.RELAY)
        cand = Candidate(
            foundation=compute_foundation(CandidateType.RELAY, client.base[0], client.server[0]),
            component=1,
            transport="udp",
            priority=compute_priority(CandidateType.RELAY, local_preference(CandidateType.RELAY, ipv6, index)),
            host=relayed[0],
            port=relayed[1],
            type=CandidateType.RELAY,
            related_address=_unspecified(relayed[0]),
            related_port=0,
        )
        self._locals.append((cand, relayed))

    def _release_unused_relays(self, keep: Address | None, now: float) -> None:
        for relayed, client in list(self._turn_by_relayed.items()):
            if relayed != keep:
                client.close(now)
        for client in self._turn_by_path.values():
            if client.state is TurnState.ALLOCATING:
                client.close(now)

    def next_event(self) -> ev.IceEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        if self._finished:
            return None
        times = [tx.deadline for tx in self._transactions.values()]
        if self._has_paced_work():
            times.append(max(self._next_pace, self._now))
        if self._gather_deadline is not None and not self.gathering_complete:
            times.append(self._gather_deadline)
        if self._selected is None and self._connect_deadline is not None:
            times.append(self._connect_deadline)
        if self._selected is None and self._nominate_at is not None:
            times.append(self._nominate_at)
        if self._selected is not None and self._next_consent is not None:
            times.append(self._next_consent)
            times.append(self._last_consent + self.timing.consent_timeout)
        for client in self._turn_by_path.values():
            t = client.get_timer()
            if t is not None:
                times.append(t)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        if self._finished:
            return
        self._now = max(self._now, now)
        for client in list(self._turn_by_path.values()):
            t = client.get_timer()
            if t is not None and now >= t:
                client.handle_timer(now)
            self._drain_turn(client, now)
            if self._finished:
                return
        for tx in list(self._transactions.values()):
            if tx.next_send is not None and now >= tx.next_send:
                tx.retransmit(now, self.timing.max_rto)
                self._outbox.append(Transmit(tx.data, tx.local, tx.remote))
            elif tx.next_send is None and now >= tx.expires:
                del self._transactions[tx.tid]
                self._on_timeout(tx, now)
                if self._finished:
                    return
        if self._gather_deadline is not None and not self.gathering_complete and now >= self._gather_deadline:
            self._finish_gathering()
        if self._selected is None and self._connect_deadline is not None and now >= self._connect_deadline:
            self._fail(ev.REASON_TIMEOUT)
            return
        if self._nominate_at is not None and now >= self._nominate_at:
            self._nominate_at = None
            if self.controlling and self._selected is None and self._nominating is None:
                self._start_nomination(hold_relay=False)
        if self._selected is not None:
            # Compare with the very sum get_timer() reports: a difference can round below the timeout.
            if now >= self._last_consent + self.timing.consent_timeout:
                self._state = IceState.FAILED
                self._transactions.clear()
                self._events.append(ev.ConsentLost())
                return
            if self._next_consent is not None and now >= self._next_consent:
                self._send_consent(now)
        if now >= self._next_pace and self._send_paced(now):
            self._next_pace = now + self.timing.ta
        self._check_all_failed()

    # ------------------------------------------------------------------------------------------ input

    def receive_datagram(self, data: bytes, local: Address, remote: Address, now: float) -> None:
        """Any datagram that reached socket ``local`` from ``remote``; non-STUN and bad input are dropped.

        Datagrams from a TURN server are unwrapped first; relayed non-STUN payloads are dropped here (a caller
        that wants them uses ``receive_from_relay``)."""
        if self._finished:
            return
        if (local, remote) in self._turn_by_path:
            self.receive_from_relay(data, local, remote, now)
            return
        self._receive_stun(data, local, remote, now)

    def _receive_stun(self, data: bytes, local: Address, remote: Address, now: float) -> None:
        if self._finished or not stun.is_stun(data):
            return
        self._now = max(self._now, now)
        try:
            msg = stun.decode(data)
        except stun.StunError:
            return
        if msg.method != stun.Method.BINDING:
            return
        if msg.message_class == stun.MessageClass.REQUEST:
            self._on_request(msg, local, remote, now)
        elif msg.message_class in (stun.MessageClass.SUCCESS, stun.MessageClass.ERROR):
            self._on_response(msg, local, remote, now)

    # ------------------------------------------------------------------------------------------ requests in

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
        # RFC 8445 7.3.1.1: resolve a role conflict before answering.
        their_controlling = msg.get(stun.Attr.ICE_CONTROLLING)
        their_controlled = msg.get(stun.Attr.ICE_CONTROLLED)
        if self.controlling and isinstance(their_controlling, int):
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
        existing = self._pair_by_key.get((local, remote))
        if self._selected is not None:
            # Completed: only a controlled agent under aggressive nomination may move to a better pair.
            if not nominate or existing is self._selected:
                return
            if existing is not None and existing.priority <= self._selected.priority:
                return
        pair = existing
        if pair is None:
            pair = self._new_triggered_pair(local, remote, priority)
            if pair is None:
                return
            if self._selected is not None and pair.priority <= self._selected.priority:
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

    # ------------------------------------------------------------------------------------------ responses in

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
                self._last_consent = max(self._last_consent, now)
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
                self._last_consent = max(self._last_consent, now)
            if not (pair.nominate_on_success and not self.controlling):
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
            related_address=_unspecified(base_ip),
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

    # ------------------------------------------------------------------------------------------ gathering

    def _on_gather_response(
        self, tx: StunTransaction, msg: stun.StunMessage, local: Address, remote: Address, now: float
    ) -> None:
        if (local, remote) != (tx.local, tx.remote):
            return
        del self._transactions[tx.tid]
        if msg.message_class == stun.MessageClass.SUCCESS:
            mapped = msg.get(stun.Attr.XOR_MAPPED_ADDRESS) or msg.get(stun.Attr.MAPPED_ADDRESS)
            if isinstance(mapped, tuple) and tx.server is not None:
                self._events.append(ev.ServerReflexiveDiscovered(server=tx.server, base=tx.local, mapped=mapped))
                self._add_srflx(mapped, tx.local, tx.server)
        self._maybe_gathering_complete(now)

    def _add_srflx(self, mapped: Address, base: Address, server: Address) -> None:
        if self.gathering_complete or is_ipv6(mapped[0]) != is_ipv6(base[0]):
            return
        # Redundant (5.1.3): same address as a host candidate, or a srflx we already have for this base.
        for cand, cbase in self._locals:
            if cand.address == mapped and (cand.type is CandidateType.HOST or cbase == base):
                return
        ipv6 = is_ipv6(mapped[0])
        index = sum(1 for c, _ in self._locals if c.type is CandidateType.SRFLX)
        cand = Candidate(
            foundation=compute_foundation(CandidateType.SRFLX, base[0], server[0]),
            component=1,
            transport="udp",
            priority=compute_priority(CandidateType.SRFLX, local_preference(CandidateType.SRFLX, ipv6, index)),
            host=mapped[0],
            port=mapped[1],
            type=CandidateType.SRFLX,
            related_address=_unspecified(mapped[0]),
            related_port=0,
        )
        self._locals.append((cand, base))

    def _maybe_gathering_complete(self, now: float) -> None:
        if self.gathering_complete or self._gather_deadline is None or self._gather_queue:
            return
        if any(tx.purpose is Purpose.GATHER for tx in self._transactions.values()):
            return
        if any(c.state is TurnState.ALLOCATING for c in self._turn_by_path.values()):
            return
        self._finish_gathering()

    def _finish_gathering(self) -> None:
        self.gathering_complete = True
        self._gather_queue.clear()
        for tid in [t for t, tx in self._transactions.items() if tx.purpose is Purpose.GATHER]:
            del self._transactions[tid]
        if self._state is IceState.GATHERING:
            self._state = IceState.NEW
        errors = list(self._relay_errors)
        for (_base, server), client in self._turn_by_path.items():
            if client.state is TurnState.ALLOCATING:
                errors.append(f"TURN server {server[0]}:{server[1]}: no answer within the gathering time")
        self._events.append(ev.GatheringComplete(tuple(self.local_candidates), tuple(errors)))

    # ------------------------------------------------------------------------------------------ sending

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

    def _send_consent(self, now: float) -> None:
        pair = self._selected
        assert pair is not None and self.remote_pwd is not None
        msg, priority = self._check_request(pair, use_candidate=False)
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

    # ------------------------------------------------------------------------------------------ decisions

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
        if pair is self._selected:
            return
        first = self._selected is None
        if not first and pair.valid_priority(self.controlling) <= self._selected.valid_priority(self.controlling):
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
        if first:
            self._next_consent = now + self._consent_interval()
        self._release_unused_relays(pair.base if pair.base in self._turn_by_relayed else None, now)

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

    # ------------------------------------------------------------------------------------------ lookups

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
