"""TURN relaying inside the ICE agent: wrapping our traffic for a relayed path, unwrapping what the servers send.

Why here: relay candidates are paired and checked like host candidates, so the agent must be able to send "from" a
relayed address; this mixin turns such Transmits into ChannelData / Send indications on the allocation's socket and
hands unwrapped non-STUN payloads back to the caller (module docstring of ``tunnel_core.ice.agent``). State lives in
``IceAgent.__init__``.
"""

from __future__ import annotations

from tunnel_core import stun
from tunnel_core.candidate import (
    Candidate,
    CandidateType,
    compute_foundation,
    compute_priority,
    local_preference,
)
from tunnel_core.ice import events as ev
from tunnel_core.ice.checklist import is_ipv6, unspecified_address
from tunnel_core.turn import Allocated, AllocationFailed, DataReceived, TurnClient, TurnState
from tunnel_core.types import Address, Transmit


class RelayingMixin:
    """TURN allocations of the agent: wrap, unwrap, add relay candidates, release the unused ones."""

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
            elif isinstance(tev, AllocationFailed) and client.base in self._roaming_bases and not self._finished:
                self._events.append(ev.RoamingRelayFailed(server=client.server, base=client.base, reason=tev.reason))
            # AllocationLost is caught by consent freshness when the selected pair used it.
        self._maybe_gathering_complete(now)

    def _add_relay(self, client: TurnClient, allocated: Allocated, now: float) -> None:
        roaming = client.base in self._roaming_bases
        if (self.gathering_complete and not roaming) or self._finished:
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
            related_address=unspecified_address(relayed[0]),
            related_port=0,
        )
        self._locals.append((cand, relayed))
        if roaming:
            # Allocated after selection from a new address: pair it with every known remote candidate, let
            # their answers in, and the next re-check round (tunnel_core.ice.roaming) tries them.
            for remote in self._remotes:
                client.permit(remote.host, now)
            self._pair_local(cand, relayed)
            self._events.append(ev.RoamingCandidate(candidate=cand, base=client.base))

    def _release_unused_relays(self, keep: Address | None, now: float) -> None:
        for relayed, client in list(self._turn_by_relayed.items()):
            if relayed != keep:
                client.close(now)
        for client in self._turn_by_path.values():
            if client.state is TurnState.ALLOCATING:
                client.close(now)

    def _relay_live(self, relayed: Address) -> bool:
        """Whether the allocation behind relayed address ``relayed`` can carry checks (allocated, not released)."""
        client = self._turn_by_relayed.get(relayed)
        return client is not None and client.state is TurnState.ALLOCATED
