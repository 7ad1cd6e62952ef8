"""How the ICE modes put a tunnel together, identical for every runtime.

Adapters supply what only they can (sockets, a clock, OS randomness, a freshly generated key); this module decides
the rest - packet size per path, QUIC configuration and pinning, which forwarding session - so asyncio, trio and
gevent tunnels are interchangeable on the wire (the conformance suite runs mixed pairs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from tunnel_core.forwarding import ForwardingSession, Route
from tunnel_core.ice.agent import IceAgent
from tunnel_core.ice.timing import IceTiming
from tunnel_core.peer import Peer, is_loopback_pair
from tunnel_core.quic.config import (
    DEFAULT_PACKET_SIZE,
    MAX_PACKET_SIZE,
    clamp_packet_size,
    make_configuration,
)
from tunnel_core.quic.connection import TunnelQuicConnection
from tunnel_core.quic.identity import QuicIdentity
from tunnel_core.quic.pmtu import ETHERNET_UDP_PAYLOAD_V4, ETHERNET_UDP_PAYLOAD_V6
from tunnel_core.turn import TurnServer
from tunnel_core.types import Address

Rng = Callable[[int], bytes]


def packet_size_for(configured: int | None, local: Address, remote: Address) -> int:
    """Loopback has a 64 KiB MTU and per-packet cost dominates aioquic, so use the largest safe size there;
    real paths get a size that fits a 1500-byte MTU with room for IPv6 and tunnels."""
    if configured:
        return clamp_packet_size(configured)
    if is_loopback_pair(local, remote):
        return MAX_PACKET_SIZE
    return DEFAULT_PACKET_SIZE


def pmtu_ceiling_for(configured: int | None, local: Address, remote: Address) -> int | None:
    """Path MTU discovery runs where the size was not configured and the path is not loopback: it searches up to
    what a 1500-byte Ethernet MTU carries for the path's IP version (docs/congestion.md)."""
    if configured or is_loopback_pair(local, remote):
        return None
    return ETHERNET_UDP_PAYLOAD_V6 if ":" in remote[0] else ETHERNET_UDP_PAYLOAD_V4


def new_agent(*, controlling: bool, rng: Rng, stun_servers: Sequence[Address] = (),
              timing: IceTiming | None = None, turn_servers: Sequence[TurnServer] = ()) -> IceAgent:
    return IceAgent(controlling=controlling, rng=rng, stun_servers=tuple(stun_servers), timing=timing or IceTiming(),
                    turn_servers=tuple(turn_servers))


def new_quic(
    *,
    is_client: bool,
    odcid: bytes | None,
    identity: QuicIdentity | None,
    expected_fingerprint: str | None,
    packet_size: int,
    datagrams: bool = True,
    congestion: str | None = None,
    pmtu_ceiling: int | None = None,
    durable: bool = False,
) -> TunnelQuicConnection:
    """The QUIC end of a tunnel. ``expected_fingerprint`` pins the peer: on the client the server's certificate
    (always, ICE modes); on the server the client's, when the mode has one to pin (ice-nostr's mutual pinning) -
    the server then asks the client for its certificate. ``datagrams=False`` behaves like versions without
    tunnel datagrams (UDP on streams only; docs/datagrams.md). ``durable`` offers durable streams
    (docs/durable.md)."""
    config = make_configuration(is_client=is_client, identity=identity, packet_size=packet_size, datagrams=datagrams,
                                congestion_control=congestion)
    if is_client:
        return TunnelQuicConnection(configuration=config, expected_peer_fingerprint=expected_fingerprint,
                                    pmtu_ceiling=pmtu_ceiling, durable=durable)
    return TunnelQuicConnection(configuration=config, original_destination_connection_id=odcid,
                                expected_peer_fingerprint=expected_fingerprint, pmtu_ceiling=pmtu_ceiling,
                                request_client_certificate=expected_fingerprint is not None, durable=durable)


def new_session(quic: TunnelQuicConnection, *, is_client: bool, protocol: Literal["tcp", "udp"],
                targets: Sequence[Address], routes: Sequence[Route] | None = None) -> ForwardingSession:
    """``routes``: several forwards in this session (docs/forwards.md); None keeps upstream's single forward."""
    return ForwardingSession(quic, is_client=is_client, protocol=protocol, target_addresses=tuple(targets),
                             routes=routes)


def new_peer(
    agent: IceAgent,
    *,
    is_client: bool,
    quic_factory: Callable[[bytes | None, Address, Address], Any],
    session_factory: Callable[[Any], Any],
    hold: float = 0.0,
) -> Peer:
    return Peer(ice=agent, is_client=is_client, quic_factory=quic_factory, session_factory=session_factory,
                hold=hold)
