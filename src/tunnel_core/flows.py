"""Mode flows as generators of effects: the whole ice-manual dialogue, written once for every runtime.

Why generators: the sequence of a tunnel's life (bind, gather, print the offer, read the answer, check the source,
wait for ICE, wait for QUIC, listen, wait for the end) is the same on asyncio, trio and gevent; only *how* to wait or
read stdin differs. A flow yields small effect values; each adapter interprets them (about a dozen) and sends the
result back. The flow never touches I/O, clocks or randomness (``rng`` is injected), so it stays in the core and
the three runtimes cannot drift apart.

Interpreter contract: ``gen.send(result)`` after performing an effect; on SIGINT/SIGTERM ``gen.throw(Stopped())``
at the current wait (the flow lets it propagate; the adapter exits 0 after closing the tunnel with "done"). The flow
raises ``TunnelError`` for every user-facing failure.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any, Literal

import attrs

from tunnel_core import assembly
from tunnel_core import manual as dialogue
from tunnel_core.candidate import CandidateType
from tunnel_core.errors import RemoteProtocolError
from tunnel_core.ice.events import GatheringComplete
from tunnel_core.options import ExitCode, IceOptions, ManualClientOptions, ManualServerOptions, TunnelError
from tunnel_core.peer import IceConnected, Peer, TunnelClosed
from tunnel_core.policy import AccessPolicy, NeedsResolution, PolicyError, Source, parse_source, parse_target
from tunnel_core.quic.identity import QuicIdentity
from tunnel_core.signal import ManualAnswer, ManualOffer, decode_answer, decode_offer, encode_block
from tunnel_core.turn import TurnServer, parse_turn_url
from tunnel_core.types import Address

QUIC_CONNECT_TIMEOUT = 30.0

# ------------------------------------------------------------------------------------------------ effects


@attrs.frozen
class Say:
    """A line for the person (stderr)."""

    text: str


@attrs.frozen
class PrintBlock:
    """A block to copy (stdout, nothing else goes there)."""

    text: str


@attrs.frozen
class ReadBlock:
    """Read lines from stdin until one whole BEGIN/END block of ``kind`` arrived; returns the block text."""

    kind: Literal["OFFER", "ANSWER"]


@attrs.frozen
class BindHostSockets:
    """Bind one UDP socket per chosen host address (tunnel_core.hostaddr rules); returns their local addresses."""

    wanted: tuple[str, ...]


@attrs.frozen
class Resolve:
    """Name resolution; returns a list of IP literals (empty when the name does not resolve)."""

    host: str
    port: int


@attrs.frozen
class NewIdentity:
    """A fresh self-signed QUIC identity (needs OS randomness and the wall clock); returns a QuicIdentity."""


@attrs.frozen
class Start:
    """Drive ``peer`` on the bound sockets from now on (driver + local forwarding I/O)."""

    peer: Peer


@attrs.frozen
class Poke:
    """Call ``fn(now)`` on the running machine, then flush it: how a flow starts gathering or checks."""

    fn: Callable[[float], None]


WaitKind = Literal["gathered", "connected", "ready", "closed"]


@attrs.frozen
class Wait:
    """Wait for a milestone of the started peer. Returns its event, or the TunnelClosed event if the tunnel ended
    first. With ``timeout``, a missed milestone is returned as None."""

    kind: WaitKind
    timeout: float | None = None


@attrs.frozen
class Listen:
    """Open the client's local listener (TCP server or UDP socket) at ip:port; returns the bound address."""

    protocol: Literal["tcp", "udp"]
    ip: str
    port: int


@attrs.frozen
class Detach:
    """Let go of the lost tunnel (its peer, driver and UDP sockets) but keep the local listeners bound: open local
    connections are reset with one line each, new ones wait in the listen backlog until the next tunnel is ready
    (docs/reconnect.md). The next ``BindHostSockets``/``Start`` build a fresh tunnel."""


@attrs.frozen
class Sleep:
    """Wait ``seconds`` (reconnect backoff); a stop request ends the wait like any other."""

    seconds: float


class Stopped(Exception):
    """Thrown into a flow by its interpreter when the user asked the program to stop."""


Effect = (
    Say | PrintBlock | ReadBlock | BindHostSockets | Resolve | NewIdentity | Start | Poke | Wait | Listen | Detach
    | Sleep
)
Flow = Generator[Effect, Any, None]

# ------------------------------------------------------------------------------------------------ shared steps


def failure(ev: TunnelClosed) -> TunnelError:
    """Map how a tunnel ended to the documented exit codes."""
    if ev.auth_failed:
        return TunnelError(ev.reason, ExitCode.AUTH)
    if ev.was_up:
        return TunnelError(ev.reason, ExitCode.CONNECTION_LOST)
    return TunnelError(ev.reason, ExitCode.CONNECT_FAILED)


def closed_orderly(ev: TunnelClosed) -> bool:
    """The other side ended the tunnel on purpose (CONNECTION_CLOSE 0 "done": stopped, or its session is over)."""
    return ev.by_peer and ev.error_code == 0 and ev.reason in ("done", "")


def client_end(ev: TunnelClosed) -> TunnelError:
    """How a client's tunnel ended, for the user: an orderly close by the server says so (it is still the end of
    the tunnel the user asked for, hence CONNECTION_LOST), anything else is ``failure``."""
    if closed_orderly(ev):
        return TunnelError("The server closed the tunnel", ExitCode.CONNECTION_LOST)
    return failure(ev)


def _input_error(exc: RemoteProtocolError) -> TunnelError:
    return TunnelError(str(exc), ExitCode.USAGE)


def _resolve_stun(servers: Sequence[str]) -> Generator[Effect, Any, list[Address]]:
    out: list[Address] = []
    for text in servers:
        host, _, port_text = text.rpartition(":")
        host = host.strip("[]")
        if not port_text.isdigit():
            continue
        port = int(port_text)
        for ip in (yield Resolve(host, port)):
            if (ip, port) not in out:
                out.append((ip, port))
    return out


def resolve_turn(ice: IceOptions) -> Generator[Effect, Any, list[TurnServer]]:
    """Every address of every configured TURN server, each with the shared long-term credentials.

    Public so every ICE mode's flow (manual here, nostr in flows_nostr) resolves TURN the same way."""
    out: list[TurnServer] = []
    if not ice.turn_servers or not ice.turn_user or not ice.turn_password:
        return out
    for text in ice.turn_servers:
        try:
            host, port = parse_turn_url(text)
        except ValueError:
            continue  # the CLI layer already refused it; an embedding program gets no relay from it
        for ip in (yield Resolve(host, port)):
            if all(t.address != (ip, port) for t in out):
                out.append(TurnServer((ip, port), ice.turn_user, ice.turn_password))
    return out


def start_peer(
    ice: IceOptions,
    *,
    rng: Callable[[int], bytes],
    is_client: bool,
    identity: QuicIdentity | None,
    pins: dict[str, str],
    session_spec: dict[str, Any],
    controlling: bool | None = None,
) -> Generator[Effect, Any, tuple[Peer, GatheringComplete]]:
    """Bind, build the Peer (ICE -> QUIC -> forwarding), gather; shared by every ICE-mode role.

    ``is_client`` is the QUIC/forwarding role. ICE's controlling role defaults to it (manual mode); ice-nostr
    passes the opposite. ``pins`` is read when QUIC starts (the answer arrives after gathering): "server" pins the
    server's certificate on the client, "client" the client's on the server.
    """
    addresses = yield BindHostSockets(ice.host_candidates)
    stun = yield from _resolve_stun(ice.stun_servers)
    turn = yield from resolve_turn(ice)
    agent = assembly.new_agent(controlling=is_client if controlling is None else controlling, rng=rng,
                               stun_servers=stun, turn_servers=turn)
    for addr in addresses:
        agent.add_local_address(addr)

    def quic_factory(odcid: bytes | None, local: Address, remote: Address) -> Any:
        return assembly.new_quic(
            is_client=is_client, odcid=odcid, identity=identity,
            expected_fingerprint=pins.get("server" if is_client else "client"),
            packet_size=assembly.packet_size_for(ice.packet_size, local, remote),
        )

    def session_factory(quic: Any) -> Any:
        return assembly.new_session(quic, is_client=is_client, protocol=session_spec["protocol"],
                                    targets=session_spec.get("addresses", ()))

    peer = assembly.new_peer(agent, is_client=is_client, quic_factory=quic_factory, session_factory=session_factory)
    yield Start(peer)
    yield Poke(agent.gather)
    gathered = yield Wait("gathered")
    if isinstance(gathered, TunnelClosed):
        raise failure(gathered)
    for problem in gathered.relay_errors:
        yield Say(f"Warning: no relay candidate from {problem}")
    if not gathered.candidates:
        raise TunnelError(dialogue.NO_CANDIDATES, ExitCode.CONNECT_FAILED)
    yield Say(f"Gathered {dialogue.describe_candidates(gathered.candidates)} candidate(s)")
    return peer, gathered


def _checked_ice(remote: ManualOffer | ManualAnswer) -> dialogue.RemoteIce:
    """The pasted block's ICE side, checked before anything is printed or started (exit 2 otherwise)."""
    try:
        return dialogue.remote_ice(remote.ice_ufrag, remote.ice_pwd, remote.candidates)
    except RemoteProtocolError as exc:
        raise _input_error(exc) from None


def _start_checks(peer: Peer, remote: dialogue.RemoteIce) -> Generator[Effect, Any, None]:
    peer.ice.set_remote(remote.ufrag, remote.pwd, remote.candidates)
    yield Poke(peer.ice.connect)


def until_up(peer: Peer, ready_message: str, ready_line: str) -> Generator[Effect, Any, IceConnected]:
    """Wait for ICE, then QUIC; say so; return ICE's result (its ``connection_type`` names the path)."""
    connected = yield Wait("connected")
    if isinstance(connected, TunnelClosed):
        raise failure(connected)
    assert isinstance(connected, IceConnected)
    # A relayed path is shown by its relayed address: the socket behind it only talks to the TURN server.
    shown_local = connected.local.address if connected.local.type is CandidateType.RELAY else connected.local_address
    for line in dialogue.connected_lines(connected.connection_type, shown_local, connected.remote_address):
        yield Say(line)
    ready = yield Wait("ready", timeout=QUIC_CONNECT_TIMEOUT)
    if ready is None:
        raise TunnelError(ready_message, ExitCode.CONNECT_FAILED)
    if isinstance(ready, TunnelClosed):
        raise failure(ready)
    yield Say(ready_line)
    return connected


# ------------------------------------------------------------------------------------------------ manual mode


def manual_client_flow(opts: ManualClientOptions, rng: Callable[[int], bytes]) -> Flow:
    try:
        source = parse_source(opts.source)
        listen_host, listen_port = parse_target(opts.target)
    except PolicyError as exc:
        raise _input_error(exc) from None
    local_ip = yield from listen_ip(listen_host, listen_port, opts.target)
    yield Say(dialogue.CLIENT_BANNER)
    pins: dict[str, str] = {}
    peer, _ = yield from start_peer(opts.ice, rng=rng, is_client=True, identity=None, pins=pins,
                                     session_spec={"protocol": source.protocol})
    yield Say(dialogue.OFFER_TITLE)
    yield PrintBlock(encode_block("OFFER", dialogue.make_offer(peer.ice, source.url())))
    yield Say(dialogue.PROMPT_FOR_ANSWER)
    text = yield ReadBlock("ANSWER")
    try:
        answer = decode_answer(text)
        pins["server"] = dialogue.answer_fingerprint(answer)
    except RemoteProtocolError as exc:
        raise _input_error(exc) from None
    yield from _start_checks(peer, _checked_ice(answer))
    yield from until_up(peer, "Timeout during QUIC handshake", "Connected to server over QUIC.")
    yield from listen_locally(source.protocol, local_ip, listen_port, opts.target)
    closed = yield Wait("closed")
    raise client_end(closed)


def listen_locally(protocol: Literal["tcp", "udp"], ip: str, port: int, target: str) -> Generator[Effect, Any, None]:
    """The client's local listener, and the line that tells the user where to connect; shared by the ICE modes."""
    try:
        bound = yield Listen(protocol, ip, port)
    except OSError as exc:
        raise TunnelError(f"Failed to listen on {target}: {exc.strerror or exc}", ExitCode.GENERAL) from None
    what = "connect" if protocol == "tcp" else "send"
    yield Say(f"Listening on {protocol.upper()} {dialogue.format_address(bound)} - configure your client "
              f"to {what} here")


def manual_server_flow(opts: ManualServerOptions, rng: Callable[[int], bytes]) -> Flow:
    try:
        policy = AccessPolicy.from_strings(opts.allowed_tcp, opts.allowed_udp)
    except PolicyError as exc:
        raise _input_error(exc) from None
    yield Say(dialogue.SERVER_BANNER)
    identity = yield NewIdentity()
    spec: dict[str, Any] = {}
    # Gather before reading the offer (as upstream), so the answer can be printed at once.
    peer, _ = yield from start_peer(opts.ice, rng=rng, is_client=False, identity=identity, pins={},
                                     session_spec=spec)
    yield Say(dialogue.PROMPT_FOR_OFFER)
    text = yield ReadBlock("OFFER")
    try:
        offer = decode_offer(text)
        source = dialogue.offer_source(offer)
    except RemoteProtocolError as exc:
        raise _input_error(exc) from None
    remote = _checked_ice(offer)  # before the ANSWER is printed: a bad offer gets no answer (item 7)
    decision = yield from decide_source(policy, source)
    if not decision.allowed:
        raise TunnelError(decision.reason or f"Source '{source.url()}' is not allowed", ExitCode.AUTH)
    spec["protocol"] = source.protocol
    spec["addresses"] = decision.addresses
    yield Say(f"Client requests {source.url()} (allowed)")
    yield Say(dialogue.ANSWER_TITLE)
    yield PrintBlock(encode_block("ANSWER", dialogue.make_answer(peer.ice, identity.fingerprint)))
    yield from _start_checks(peer, remote)
    yield from until_up(peer, "Timeout waiting for QUIC connection", "Client connected over QUIC.")
    closed = yield Wait("closed")
    if closed_orderly(closed):
        yield Say("Connection closed.")
        return
    raise failure(closed)


def decide_source(policy: AccessPolicy, source: Source) -> Generator[Effect, Any, Any]:
    verdict = policy.decide(source)
    if isinstance(verdict, NeedsResolution):
        addresses = yield Resolve(verdict.host, verdict.port)
        verdict = policy.decide_resolved(source, addresses)
    return verdict


def listen_ip(host: str, port: int, original: str) -> Generator[Effect, Any, str]:
    """IP literal fast path; otherwise one address, IPv4 preferred (upstream `resolve_listen_addr`)."""
    import ipaddress

    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    ips = list((yield Resolve(host, port)))
    if not ips:
        raise TunnelError(
            f"Invalid target '{original}'. Expected format: host:port (e.g., localhost:2222 or 127.0.0.1:2222)",
            ExitCode.USAGE,
        )
    ips.sort(key=lambda ip: ":" in ip)
    return str(ips[0])
