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
on every check). Selection happens once: after it, neither a nomination of another pair nor a role conflict
changes anything (``NominationIgnored`` is reported); the selected pair moves only through ``follow_path``, when
the QUIC layer has validated another path (docs/security.md, "Paths"). Roaming builds on that.

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

Where each part lives (one mixin per seam, all sharing the state set up in ``IceAgent.__init__``): this module
holds the public life cycle, timers and input dispatch; ``gathering`` srflx gathering; ``relaying`` TURN;
``answering`` the peer's checks; ``checking`` our checks, pacing and consent; ``nomination`` selection and the end
states; ``checklist`` pairs and their states; ``transaction`` retransmission of one STUN transaction.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable, Sequence

from tunnel_core import stun
from tunnel_core.candidate import (
    Candidate,
    CandidateType,
    compute_foundation,
    compute_priority,
    local_preference,
)
from tunnel_core.errors import LocalProtocolError, RemoteProtocolError
from tunnel_core.ice import events as ev
from tunnel_core.ice.answering import EARLY_CHECK_LIMIT, REMOTE_CANDIDATE_LIMIT, AnsweringMixin
from tunnel_core.ice.checking import CheckingMixin
from tunnel_core.ice.checklist import CandidatePair, form_checklist, is_ipv6, usable_remote_address
from tunnel_core.ice.credentials import (
    PWD_LENGTH,
    UFRAG_LENGTH,
    check_credentials,
    random_ice_string,
    random_tie_breaker,
    remote_credentials_ok,
)
from tunnel_core.ice.gathering import GatheringMixin
from tunnel_core.ice.nomination import NominationMixin
from tunnel_core.ice.relaying import RelayingMixin
from tunnel_core.ice.roaming import RoamingMixin
from tunnel_core.ice.state import IceState
from tunnel_core.ice.timing import IceTiming
from tunnel_core.ice.transaction import StunTransaction
from tunnel_core.turn import TurnClient, TurnServer
from tunnel_core.types import Address, Transmit

__all__ = ["EARLY_CHECK_LIMIT", "IceAgent", "IceState"]


class IceAgent(RelayingMixin, GatheringMixin, AnsweringMixin, CheckingMixin, NominationMixin, RoamingMixin):
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
        hold_on_consent_loss: bool = False,
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
        #: set (to the last confirmed time) while consent checks go unanswered; see ConsentDegraded
        self._consent_missing_since: float | None = None
        #: when the oldest consent check still unanswered was sent (None when all are answered)
        self._consent_pending_since: float | None = None
        self._outbox: list[Transmit] = []
        self._events: deque[ev.IceEvent] = deque()
        #: remote addresses whose late nomination was reported (NominationIgnored is reported once per address)
        self._ignored_nominations: set[Address] = set()
        #: hold on past the consent limit (docs/reconnect.md): ConsentLost is reported once and checks go on
        self.hold_on_consent_loss = hold_on_consent_loss
        self._consent_lost_reported = False
        #: roaming (tunnel_core.ice.roaming): bases whose address left the machine; pairs re-checked this round
        self._retired: set[Address] = set()
        self._rechecking: set[tuple[Address, Address]] = set()
        #: bases added after selection: STUN and TURN gathering from them goes on after gathering completed
        self._roaming_bases: set[Address] = set()

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
        self._add_host(address)

    def _add_host(self, address: Address) -> Address | None:
        """A host candidate for a socket's base; its normalised base, or None if it was known already."""
        try:
            ip = ipaddress.ip_address(address[0])
            port = int(address[1])
        except (ValueError, TypeError, IndexError) as exc:
            raise LocalProtocolError(f"not an (ip, port) address: {address!r}") from exc
        if ip.is_unspecified or not 0 < port <= 0xFFFF:
            raise LocalProtocolError(f"a host candidate needs a concrete address, got {address!r}")
        base = (ip.compressed, port)
        if base in self._bases:
            return None
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
        return base

    def gather(self, now: float) -> None:
        """Start server-reflexive gathering: one Binding request per (base, STUN server of its family)."""
        if self._finished:
            return
        if self._gather_deadline is not None or self.gathering_complete:
            raise LocalProtocolError("gather() was already called")
        for base in self._bases:
            self._gather_from(base, now)
        self._now = max(self._now, now)
        self._gather_deadline = now + self.timing.gather_timeout
        if not self._connect_started:
            self._state = IceState.GATHERING
        self._maybe_gathering_complete(now)

    def _gather_from(self, base: Address, now: float) -> None:
        """Queue a Binding to every STUN server of ``base``'s family and allocate on every such TURN server."""
        for server in self.stun_servers:
            if is_ipv6(base[0]) == is_ipv6(server[0]):
                self._gather_queue.append((base, server))
        for turn in self.turn_servers:
            if is_ipv6(base[0]) == is_ipv6(turn.address[0]) and (base, turn.address) not in self._turn_by_path:
                client = TurnClient(server=turn, base=base, rng=self._rng)
                self._turn_by_path[(base, turn.address)] = client
                client.allocate(now)

    def set_remote(self, ufrag: str, pwd: str, candidates: Sequence[Candidate]) -> None:
        """The peer's credentials and all its candidates (no trickle). Unusable candidates are skipped."""
        if self._finished:
            return
        if self._connect_started or self.remote_ufrag is not None:
            raise LocalProtocolError("set_remote() may be called once, before connect()")
        if not remote_credentials_ok(ufrag, pwd):
            # Checked here too (flows check first, with the user's wording): a ufrag that does not fit a STUN
            # USERNAME would otherwise fail later inside a timer, far from its cause (issue 18 item 2).
            raise RemoteProtocolError("remote ICE credentials are empty or malformed")
        self.remote_ufrag = ufrag
        self.remote_pwd = pwd
        for cand in candidates:
            if len(self._remotes) >= REMOTE_CANDIDATE_LIMIT:
                break
            if cand.component != 1 or cand.transport.lower() != "udp" or not 0 < cand.port <= 0xFFFF:
                continue
            if not usable_remote_address(cand.host):
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
            if not self._consent_lost_reported:
                times.append(self._last_consent + self.timing.consent_timeout)
            if self._consent_pending_since is not None and self._consent_missing_since is None:
                times.append(self._consent_pending_since + self.timing.consent_degraded_after)
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
            if now >= self._last_consent + self.timing.consent_timeout and self.hold_on_consent_loss:
                if not self._consent_lost_reported:
                    # Holding on: the caller decides when to give up; checks keep going every retry interval.
                    self._consent_lost_reported = True
                    self._events.append(ev.ConsentLost())
            elif now >= self._last_consent + self.timing.consent_timeout:
                self._state = IceState.FAILED
                self._transactions.clear()
                self._events.append(ev.ConsentLost())
                return
            self._check_consent_degraded(now)
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





































