"""One tunnel = one Peer: the ICE agent, then QUIC over the selected pair, then the forwarding session.

Why a composition machine: adapters should drive exactly one object with the ordinary contract
(receive_datagram / datagrams_to_send / get_timer / handle_timer / next_event) whatever the mode, and the
delicate parts - sharing the nominated socket between STUN consent and QUIC, mapping real paths to the addresses
aioquic sees, buffering QUIC that races ahead of our own nomination - live here once instead of in three adapters.

Paths (docs/security.md, docs/architecture.md "Paths"): a path never moves on STUN alone. The QUIC client sees one
virtual address for its server (``VIRTUAL_PEER``), mapped to the pair its own ICE agent selected. The QUIC server
sees one virtual address per path (socket, remote address) that ICE knows, so aioquic's own migration logic
decides where 1-RTT traffic goes: it moves only on an authenticated non-probing packet from a new path and then
validates it with PATH_CHALLENGE/PATH_RESPONSE (reverting if that fails). Once QUIC's active path is validated,
the ICE agent follows it (``IceAgent.follow_path``) so consent checks run where the traffic is.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

import attrs
from aioquic.buffer import Buffer
from aioquic.quic import events as qe
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicPacketType, pull_quic_header

from tunnel_core.candidate import Candidate, CandidateType
from tunnel_core.errors import LocalProtocolError
from tunnel_core.ice import events as ice_events
from tunnel_core.ice.agent import IceAgent
from tunnel_core.peertext import quote_peer
from tunnel_core.quic.events import PeerVerificationFailed
from tunnel_core.types import Address, Transmit

#: The address the QUIC client believes its server has; the real path (ICE's selected pair) lives underneath.
VIRTUAL_PEER: Address = ("peer", 0)
#: The QUIC server's virtual addresses are ("path", n), one per real path; see the module docstring.
VIRTUAL_PATH = "path"

log = logging.getLogger(__name__)

#: How many QUIC datagrams we hold while our own ICE selection has not happened yet (the peer may finish first).
EARLY_QUIC_LIMIT = 64
#: The QUIC client re-checks the peer's known candidates this often while its path does not answer or its local
#: address went away (tunnel_core.ice.roaming): a path found again is used within about this long.
RECHECK_INTERVAL = 2.0

Kind = Literal["stun", "quic", "turn"]


def classify(data: bytes, *, from_turn_server: bool = False) -> Kind:
    """RFC 7983/9443-style demultiplexing. Everything a TURN server of ours sends (responses, Data indications and
    ChannelData, first byte 64..79) is "turn": the first byte alone cannot tell ChannelData from a QUIC short
    header (64..127), the source address can. Otherwise 0..3 is STUN and everything else is QUIC (which always sets
    the 0x40 fixed bit); empty datagrams go to QUIC, as upstream."""
    if from_turn_server:
        return "turn"
    if data and data[0] <= 3:
        return "stun"
    return "quic"


def connection_type(local: Candidate, remote: Candidate) -> str:
    """The one-line description upstream prints after ICE (`Connection: ...`), extended with the types it lacks."""
    kinds = {local.type, remote.type}
    if CandidateType.RELAY in kinds:
        return "Relay (TURN)"
    if CandidateType.PRFLX in kinds:
        return "Peer Reflexive"
    if CandidateType.SRFLX in kinds:
        return "NAT Traversal (Server Reflexive)"
    return "Direct (Host)"


def is_loopback_pair(local: Address, remote: Address) -> bool:
    def loop(ip: str) -> bool:
        return ip.startswith("127.") or ip == "::1"

    return loop(local[0]) and loop(remote[0])


# ---------------------------------------------------------------------------------------------------- events


@attrs.frozen
class IceConnected:
    """ICE selected a pair; QUIC starts over it. ``local_address`` is the socket that carries the path (for a relayed
    pair the socket of the TURN allocation; ``local`` is then the relay candidate with the relayed address)."""

    local: Candidate
    remote: Candidate
    local_address: Address
    remote_address: Address
    connection_type: str


@attrs.frozen
class TunnelReady:
    """QUIC handshake done and the peer's certificate matched its pinned fingerprint: forwarding may start."""


@attrs.frozen
class TunnelClosed:
    """The tunnel is over. ``was_up`` tells "lost" from "never came up"; ``auth_failed`` marks a pinning failure."""

    reason: str
    was_up: bool
    by_peer: bool
    error_code: int = 0
    auth_failed: bool = False


@attrs.frozen
class TunnelHeld:
    """Consent was lost and the tunnel holds on (``hold`` > 0): the path is gone for now, QUIC is kept. A manual
    client on a terminal offers a fresh paste when this lasts (tunnel_core.repaste, docs/reconnect.md)."""

    since: float


@attrs.frozen
class TunnelResumed:
    """A held tunnel's path answers again (after ``TunnelHeld``)."""


PeerEvent = IceConnected | TunnelReady | TunnelClosed | TunnelHeld | TunnelResumed


class Peer:
    """Drives ICE, then QUIC on the selected pair, then the forwarding session, as one sans-IO machine.

    ``quic_factory(odcid)`` builds the QUIC connection: ``odcid`` is None on the client (which then connects), or the
    original destination connection id of the client's first Initial on the server. ``session_factory(quic)`` builds
    the forwarding session once QUIC exists. Both are injected so the mode decides certificates, pinning and
    packet size without this class knowing about them.
    """

    def __init__(
        self,
        *,
        ice: IceAgent,
        is_client: bool,
        quic_factory: Callable[[bytes | None, Address, Address], QuicConnection],
        session_factory: Callable[[QuicConnection], Any],
        hold: float = 0.0,
    ) -> None:
        """``hold`` > 0: when ICE consent is lost the tunnel holds on that long (QUIC kept alive, the client
        re-checking the peer's candidates) instead of ending; the open streams survive a path that comes back
        (docs/reconnect.md, "Manual mode")."""
        self.ice = ice
        self.hold = hold
        if hold > 0:
            ice.hold_on_consent_loss = True
        #: while holding on after consent was lost: when it was lost, when we give up
        self._lost_at: float | None = None
        self._give_up_at: float | None = None
        self._rechecks = 0
        self._next_recheck: float | None = None
        self.is_client = is_client
        self._quic_factory = quic_factory
        self._session_factory = session_factory
        self.quic: QuicConnection | None = None
        self.session: Any = None
        #: durable streams (docs/durable.md): the client's DurableStreams or the server's DurableRegistry, set by
        #: whoever drives this Peer; handed to the session once the handshake says whether both ends offered them
        self.durable: Any = None
        self.selected: tuple[Address, Address] | None = None
        self._early_quic: deque[tuple[bytes, Address, Address]] = deque()
        self._events: deque[Any] = deque()
        self._ready = False
        self._closed = False
        self._closing_locally = False
        self._quic_done = False
        #: QUIC server: real path (socket, remote) <-> the virtual address aioquic knows it by
        self._virtual: dict[tuple[Address, Address], Address] = {}
        self._real: dict[Address, tuple[Address, Address]] = {}

    # ------------------------------------------------------------------------------------------ inputs

    def receive_datagram(self, data: bytes, local: Address, remote: Address, now: float) -> None:
        if self._closed and (self.quic is None or self._quic_done):
            return
        if classify(data, from_turn_server=self.ice.is_relay_server(local, remote)) == "turn":
            # Unwrapped payloads look as if a socket bound at the relayed address received them from the peer.
            for payload, relayed, peer in self.ice.receive_from_relay(data, local, remote, now):
                self._receive_path(payload, relayed, peer, now)
            self._pump(now)
            return
        self._receive_path(data, local, remote, now)

    def _receive_path(self, data: bytes, local: Address, remote: Address, now: float) -> None:
        if classify(data) == "stun":
            if self._closed:
                return
            self.ice.receive_datagram(data, local, remote, now)
            self._pump(now)
            return
        if self.selected is None:
            if not self.is_client and len(self._early_quic) < EARLY_QUIC_LIMIT:
                self._early_quic.append((data, local, remote))
            return
        if self.is_client:
            if (local, remote) != self.selected:
                # The client's QUIC talks to one server path, the one its own agent selected.
                return
        elif not self.ice.knows_path(local, remote):
            # The server's QUIC hears only paths ICE saw the peer on (signalled or authenticated by a check):
            # arbitrary senders cannot make aioquic track paths, and aioquic validates any move between known ones.
            return
        self._feed_quic(data, local, remote, now)
        self._pump(now)

    def handle_timer(self, now: float) -> None:
        if not self._closed:
            t = self.ice.get_timer()
            if t is not None and t <= now:
                self.ice.handle_timer(now)
        if self.quic is not None and not self._quic_done:
            # QUIC keeps running after the tunnel is reported closed: its closing period still sends CLOSE frames.
            t = self.quic.get_timer()
            if t is not None and t <= now:
                self.quic.handle_timer(now)
        if self.session is not None and not self._closed:
            t = self.session.get_timer()
            if t is not None and t <= now:
                self.session.handle_timer(now)
        if self._give_up_at is not None and now >= self._give_up_at and not self._closed:
            self._give_up(now, "ICE consent lost - the peer stopped answering connectivity checks")
        elif self._next_recheck is not None and now >= self._next_recheck:
            self._recheck(now)
        self._pump(now)

    def local_addresses_changed(self, added: list[Address], removed: list[str], now: float) -> None:
        """Roaming (issue 15 item 3): the adapter bound sockets at ``added`` and closed those on the IPs
        ``removed`` because the machine's addresses changed. The QUIC client re-checks the peer's candidates from
        where it is now and moves to a path that answers (``PathAnswered``); the server's QUIC validates the
        move."""
        if self._closed or self.selected is None:
            return
        for ip in removed:
            self.ice.retire_local_ip(ip)
        for addr in added:
            self.ice.add_roaming_address(addr, now)
        log.warning("Local addresses changed (%s); looking for a path from here",
                    ", ".join([*(f"+{_show(a)}" for a in added), *(f"-{ip}" for ip in removed)]))
        if self.is_client:
            self._recheck(now)
        self._pump(now)

    def _recheck(self, now: float) -> None:
        """One round of re-checks while the path is in doubt; the next one RECHECK_INTERVAL later."""
        self._next_recheck = None
        if self._closed or not self.is_client or not self._path_in_doubt():
            return
        if self.ice.recheck(now):
            self._rechecks += 1
        self._next_recheck = now + RECHECK_INTERVAL

    def _path_in_doubt(self) -> bool:
        return self._ready and (self.ice.consent_missing or self.ice.selected_base_retired)

    def _give_up(self, now: float, last: str) -> None:
        from tunnel_core.reconnect import gave_up

        lost_at = self._lost_at if self._lost_at is not None else now
        if self.is_client:
            reason = gave_up(now - lost_at, max(1, self._rechecks), last).message
        else:
            reason = f"Gave up waiting for the client to come back after {now - lost_at:.0f}s; last error: {last}"
        if self.quic is not None and not self._quic_done:
            self.quic.close(error_code=0, reason_phrase="ice disconnected")
        self._finish(TunnelClosed(reason=reason, was_up=True, by_peer=False), now)

    def close(self, now: float, reason: str = "done", error_code: int = 0) -> None:
        """Orderly stop: QUIC CONNECTION_CLOSE with code 0 "done" (as upstream), then the ICE agent."""
        if self._closed:
            return
        self._closing_locally = True
        if self.quic is not None:
            self.quic.close(error_code=error_code, reason_phrase=reason)
        else:
            self._finish(TunnelClosed(reason=reason, was_up=False, by_peer=False, error_code=error_code), now)

    # ------------------------------------------------------------------------------------------ outputs

    def datagrams_to_send(self, now: float) -> list[Transmit]:
        out = list(self.ice.datagrams_to_send(now))
        if self.quic is not None and self.selected is not None:
            for data, addr in self.quic.datagrams_to_send(now):
                path = self.selected if self.is_client else self._real.get(addr)
                if path is None:
                    continue
                local, remote = path
                if self.ice.is_relayed(local):
                    wrapped = self.ice.wrap(Transmit(data, local, remote), now)
                    if wrapped is not None:
                        out.append(wrapped)
                else:
                    out.append(Transmit(data, local, remote))
        self._pump(now)
        return out

    def get_timer(self) -> float | None:
        # Called after every flush: no temporary lists on this path.
        best: float | None = None
        if not self._closed:
            best = self.ice.get_timer()
            if self.session is not None:
                t = self.session.get_timer()
                if t is not None and (best is None or t < best):
                    best = t
        if self.quic is not None and not self._quic_done:
            t = self.quic.get_timer()
            if t is not None and (best is None or t < best):
                best = t
        if not self._closed:
            for t in (self._give_up_at, self._next_recheck):
                if t is not None and (best is None or t < best):
                    best = t
        return best

    def next_event(self) -> Any:
        """Peer events (IceConnected, TunnelReady, TunnelClosed) and forwarding events, in the order they arose."""
        if self._events:
            return self._events.popleft()
        if self.session is not None:
            return self.session.next_event()
        return None

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------------------------------ internals

    def _feed_quic(self, data: bytes, local: Address, remote: Address, now: float) -> None:
        if self.quic is None:
            if self.is_client:
                return
            odcid = _initial_dcid(data)
            if odcid is None:
                return
            self._create_quic(odcid, (local, remote), now)
        assert self.quic is not None
        self.quic.receive_datagram(data, VIRTUAL_PEER if self.is_client else self._virtual_for(local, remote), now)

    def _virtual_for(self, local: Address, remote: Address) -> Address:
        """The QUIC server's name for a real path; bounded by the paths ICE knows (``IceAgent.knows_path``)."""
        key = (local, remote)
        addr = self._virtual.get(key)
        if addr is None:
            addr = (VIRTUAL_PATH, len(self._virtual) + 1)
            self._virtual[key] = addr
            self._real[addr] = key
        return addr

    def _create_quic(self, odcid: bytes | None, path: tuple[Address, Address], now: float) -> None:
        local, remote = path
        self.quic = self._quic_factory(odcid, local, remote)
        if odcid is None:
            self.quic.connect(VIRTUAL_PEER, now)

    def _follow_quic_path(self, now: float) -> None:
        """QUIC server: once aioquic's active path is validated and differs from ICE's pair, ICE follows it."""
        assert self.quic is not None
        path = self._real.get(self.quic.get_peer_address())
        if path is None or path == self.selected or not _active_path_validated(self.quic):
            return
        if self.ice.follow_path(path[0], path[1], now):
            old, self.selected = self.selected, path
            if old is not None:
                log.info("Path moved from %s to %s (validated by QUIC)", _show(old[1]), _show(path[1]))

    def _pump(self, now: float) -> None:
        """Move events between the layers until nothing changes (bounded by the events themselves)."""
        while True:
            ev = self.ice.next_event()
            if ev is None:
                break
            self._on_ice_event(ev, now)
        if self.quic is None:
            return
        while True:
            qev = self.quic.next_event()
            if qev is None:
                break
            self._on_quic_event(qev, now)
        if not self.is_client and self._ready and not self._closed:
            self._follow_quic_path(now)

    def _on_ice_event(self, ev: Any, now: float) -> None:
        if isinstance(ev, ice_events.PairSelected):
            if self.selected is not None:
                return  # the agent selects once; later moves come from QUIC (_follow_quic_path)
            self.selected = (ev.local_address, ev.remote_address)
            self._events.append(
                IceConnected(
                    local=ev.local,
                    remote=ev.remote,
                    # The socket the adapter keeps: for a relayed pair, the one holding the TURN allocation.
                    local_address=self.ice.socket_for(ev.local_address),
                    remote_address=ev.remote_address,
                    connection_type=connection_type(ev.local, ev.remote),
                )
            )
            if self.is_client:
                self._create_quic(None, self.selected, now)
            else:
                early, self._early_quic = self._early_quic, deque()
                for data, local, remote in early:
                    if self.ice.knows_path(local, remote):
                        self._feed_quic(data, local, remote, now)
        elif isinstance(ev, ice_events.NominationIgnored):
            log.warning(
                "Ignored an ICE nomination from %s after the tunnel was up: the tunnel moves only to a path QUIC "
                "has validated (a peer that moved, or someone who saw the OFFER/ANSWER signalling)",
                _show(ev.remote_address))
        elif isinstance(ev, ice_events.IceFailed):
            self._finish(TunnelClosed(reason=ev.reason, was_up=False, by_peer=False), now)
        elif isinstance(ev, ice_events.ConsentDegraded):
            log.warning(
                "Tunnel degraded: no answer from the peer for %.0f s; holding on (consent limit %.0f s)",
                now - ev.since, self.ice.timing.consent_timeout)
            self._recheck(now)
        elif isinstance(ev, ice_events.ConsentRestored):
            if self._lost_at is not None:
                from tunnel_core.reconnect import back_line

                path = connection_type(*self.ice.selected_pair) if self.ice.selected_pair else "?"
                if self.is_client:
                    log.warning("%s", back_line(now - self._lost_at, max(1, self._rechecks), path))
                else:
                    log.warning("Tunnel back after %.1fs: the client is back: %s", now - self._lost_at, path)
                self._lost_at = self._give_up_at = None
                self._events.append(TunnelResumed())
            else:
                log.warning("Tunnel back after %.1f s without an answer from the peer", ev.outage)
            self._next_recheck = None
            self._prod_quic(now)
        elif isinstance(ev, ice_events.PathAnswered):
            self._on_path_answered(ev, now)
        elif isinstance(ev, ice_events.RoamingCandidate):
            kind = "relayed" if ev.candidate.type is CandidateType.RELAY else "server-reflexive"
            log.info("Gathered from %s: %s address %s", _show(ev.base), kind, _show(ev.candidate.address))
            if ev.candidate.type is CandidateType.RELAY:
                self._recheck(now)  # its pairs are new: check them now, not at the next round
        elif isinstance(ev, ice_events.RoamingRelayFailed):
            log.warning("No relay from %s: TURN server %s: %s", _show(ev.base), _show(ev.server), ev.reason)
        elif isinstance(ev, ice_events.ConsentLost) and self.hold > 0 and self._ready and not self._closed:
            from tunnel_core.reconnect import lost_line

            self._lost_at, self._give_up_at = now, now + self.hold
            silent = f"no answer from the peer for {self.ice.timing.consent_timeout:.0f} s"
            if self.is_client:
                log.warning("%s (the QUIC connection and its streams are kept)", lost_line(silent, self.hold))
            else:
                log.warning("Tunnel lost: %s. Keeping the session for the client to come back (giving up after "
                            "%gs)", silent, self.hold)
            self._events.append(TunnelHeld(now))
            self._recheck(now)
        elif isinstance(ev, ice_events.ConsentLost):
            reason = "ICE consent lost - the peer stopped answering connectivity checks"
            if self.quic is not None:
                self.quic.close(error_code=0, reason_phrase="ice disconnected")
            self._finish(TunnelClosed(reason=reason, was_up=self._ready, by_peer=True), now)
        else:
            # Gathering results and role changes are for the adapter (it prints them or waits on them).
            self._events.append(ev)

    def _prod_quic(self, now: float) -> None:
        probe = getattr(self.quic, "probe_now", None)  # TunnelQuicConnection's; a plain aioquic one has none
        if probe is not None and self._ready and not self._closed:
            # QUIC's probe timeout backed off during the cut: probe now rather than at the next late probe.
            probe(now)

    def _on_path_answered(self, ev: ice_events.PathAnswered, now: float) -> None:
        """QUIC client: a re-check found a working path while ours is in doubt - send from there from now on.

        The answer was authenticated with the peer's ICE password; the server's QUIC still validates the new path
        (PATH_CHALLENGE) before it moves, so this cannot move the server's end by itself."""
        if not self.is_client or self._closed or not self._path_in_doubt():
            return
        path = (ev.local_address, ev.remote_address)
        if path == self.selected:
            return
        missing = self.ice.consent_missing
        if not self.ice.move_to(path[0], path[1], now):
            return
        old, self.selected = self.selected, path
        log.warning("Path moved to %s -> %s: %s (was %s)", _show(path[0]), _show(path[1]),
                    connection_type(ev.local, ev.remote), _show(old[0]) if old else "-")
        if not missing:
            self._prod_quic(now)  # ConsentRestored prods QUIC when the path had been silent

    def _on_quic_event(self, ev: Any, now: float) -> None:
        if isinstance(ev, qe.HandshakeCompleted):
            self._ready = True
            self.session = self._session_factory(self.quic)
            self._events.append(TunnelReady())
            if self.durable is not None and hasattr(self.session, "enable_durable"):
                self.session.enable_durable(self.durable, now)
        elif isinstance(ev, qe.ConnectionTerminated):
            self._quic_done = True
            by_peer = not self._closing_locally
            orderly = ev.error_code == 0 and ev.reason_phrase in ("done", "")
            if self._lost_at is not None and not self._closed and not orderly:
                # Held past QUIC's own idle limit (aioquic reports it as a termination): that ends the hold too.
                self._give_up(now, f"QUIC: {quote_peer(ev.reason_phrase) or _close_reason(ev.error_code)}")
                return
            self._finish(
                TunnelClosed(
                    # The peer wrote the reason phrase: escaped and capped before anyone prints it.
                    reason=quote_peer(ev.reason_phrase) if ev.reason_phrase else _close_reason(ev.error_code),
                    was_up=self._ready,
                    by_peer=by_peer,
                    error_code=ev.error_code,
                ), now)
        elif isinstance(ev, PeerVerificationFailed):
            self._finish(
                TunnelClosed(reason=ev.reason, was_up=False, by_peer=False, error_code=0, auth_failed=True), now)
        elif self.session is not None:
            self.session.handle_quic_event(ev, now)

    def _finish(self, ev: TunnelClosed, now: float) -> None:
        if self._closed:
            return
        self._closed = True
        self._events.append(ev)
        if self.session is not None and hasattr(self.session, "report_stats"):
            self.session.report_stats()  # what happened to UDP datagrams (docs/datagrams.md)
        self.ice.close(now)  # also releases TURN allocations; the next flush sends the releases


def _show(addr: Address) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _active_path_validated(quic: QuicConnection) -> bool:
    """Whether aioquic's active path is validated (handshake or PATH_RESPONSE).

    aioquic 1.7 has no public accessor; tests/test_peer_paths.py pins this reading of its internals."""
    paths = getattr(quic, "_network_paths", None)
    return bool(paths) and bool(getattr(paths[0], "is_validated", False))


def _close_reason(code: int) -> str:
    if code == 0:
        return "connection closed"
    return f"connection closed with error {code:#x}"


def _initial_dcid(data: bytes) -> bytes | None:
    """The destination CID of a client Initial, which the QUIC server needs to start; None for anything else."""
    try:
        header = pull_quic_header(Buffer(data=data), host_cid_length=8)
    except ValueError:
        return None
    if header.packet_type != QuicPacketType.INITIAL or len(data) < 1200:
        return None
    return header.destination_cid


__all__ = [
    "EARLY_QUIC_LIMIT",
    "VIRTUAL_PEER",
    "IceConnected",
    "LocalProtocolError",
    "Peer",
    "TunnelClosed",
    "TunnelHeld",
    "TunnelReady",
    "TunnelResumed",
    "classify",
    "connection_type",
    "is_loopback_pair",
]
