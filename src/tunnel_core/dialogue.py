"""Mode dialogues as generators of effects: the whole ice-manual dialogue, written once for every runtime.

Why generators: the sequence of a tunnel's life (bind, gather, print the offer, read the answer, check the source,
wait for ICE, wait for QUIC, listen, wait for the end) is the same on asyncio, trio and gevent; only *how* to wait or
read stdin differs. A dialogue yields small effect values; each adapter interprets them (about a dozen) and sends the
result back. The dialogue never touches I/O, clocks or randomness (``rng`` is injected), so it stays in the core and
the three runtimes cannot drift apart.

Interpreter contract: ``gen.send(result)`` after performing an effect; on SIGINT/SIGTERM ``gen.throw(Stopped())``
at the current wait (the dialogue lets it propagate; the adapter exits 0 after closing the tunnel with "done").
The dialogue raises ``TunnelError`` for every user-facing failure.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any, Literal

import attrs

from tunnel_core import assembly, manual
from tunnel_core.blocks import MAX_FORWARDS, ManualAnswer, ManualOffer, decode_answer, decode_offer, encode_block
from tunnel_core.candidate import CandidateType
from tunnel_core.errors import RemoteProtocolError
from tunnel_core.forwarding import Route
from tunnel_core.ice.events import GatheringComplete
from tunnel_core.options import (
    ExitCode,
    Forward,
    IceOptions,
    ManualClientOptions,
    ManualServerOptions,
    SocksListen,
    TunnelError,
)
from tunnel_core.peer import IceConnected, Peer, TunnelClosed
from tunnel_core.policy import AccessPolicy, NeedsResolution, PolicyError, Source, parse_source, parse_target
from tunnel_core.quic.identity import QuicIdentity
from tunnel_core.reverse import REVERSE_SCHEME, cannot_listen, listen_allowed, listen_refusal
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
    """Read lines from stdin until one whole BEGIN/END block of ``kind`` arrived; returns the block text.

    With ``interrupt`` (a ``Wait`` kind), the read also ends when that milestone of the running tunnel (or its
    end) comes first; the milestone's event is returned instead and the read goes on for the next ReadBlock."""

    kind: Literal["OFFER", "ANSWER"]
    interrupt: str | None = None


class EndOfInput(TunnelError):
    """stdin ended before a block began (``ReadBlock``); exit 2 like any other missing block."""


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
    """Call ``fn(now)`` on the running machine, then flush it: how a dialogue starts gathering or checks."""

    fn: Callable[[float], None]


#: "held" / "back": a held tunnel lost its path / found it again (``TunnelHeld`` / ``TunnelResumed``; each clears
#: the other, so they can be waited for again and again).
WaitKind = Literal["gathered", "connected", "ready", "closed", "held", "back"]


@attrs.frozen
class Wait:
    """Wait for a milestone of the started peer. Returns its event, or the TunnelClosed event if the tunnel ended
    first. With ``timeout``, a missed milestone is returned as None."""

    kind: WaitKind
    timeout: float | None = None


@attrs.frozen
class Listen:
    """Open the client's local listener (TCP server or UDP socket) at ip:port for ``forward`` (its index among
    the tunnel's forwards); returns the bound address."""

    protocol: Literal["tcp", "udp", "dynamic"]
    ip: str
    port: int
    forward: int = 0
    #: ``protocol`` "dynamic": a SOCKS5 listener, with these credentials if any.
    credentials: tuple[str, str] | None = attrs.field(default=None, repr=False)
    #: Bound now but accepting only once the tunnel is ready (a server's reverse forward, bound before its answer
    #: so a failure can still be told to the client).
    held: bool = False


@attrs.frozen
class Detach:
    """Let go of the lost tunnel (its peer, driver and UDP sockets) but keep the local listeners bound: open local
    connections are reset with one line each, new ones wait in the listen backlog until the next tunnel is ready
    (docs/reconnect.md). The next ``BindHostSockets``/``Start`` build a fresh tunnel."""


@attrs.frozen
class Sleep:
    """Wait ``seconds`` (reconnect backoff); a stop request ends the wait like any other."""

    seconds: float


@attrs.frozen
class AskTerminal:
    """Whether stdin is a terminal a person can paste into; returns a bool (docs/reconnect.md, fresh paste)."""


@attrs.frozen
class OnSpare:
    """Perform ``effect`` (BindHostSockets, Start, Poke, Wait; others as usual) on a *spare* tunnel built beside
    the running one, which keeps going meanwhile (manual mode's fresh paste, tunnel_core.repaste)."""

    effect: Any


@attrs.frozen
class Promote:
    """The spare tunnel is ready: let go of the running one (like ``Detach``: its open local connections reset
    with one line each) and carry the local listeners over to the spare, which becomes the tunnel."""


@attrs.frozen
class DropSpare:
    """Close the spare tunnel (its peer, driver and sockets), if there is one."""


class Stopped(Exception):
    """Thrown into a dialogue by its interpreter when the user asked the program to stop."""


Effect = (
    Say | PrintBlock | ReadBlock | BindHostSockets | Resolve | NewIdentity | Start | Poke | Wait | Listen | Detach
    | Sleep | AskTerminal | OnSpare | Promote | DropSpare
)
Dialogue = Generator[Effect, Any, None]

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


def mapped(gen: Generator[Any, Any, Any], change: Callable[[Any], Any]) -> Generator[Any, Any, Any]:
    """Run the step ``gen`` with every effect it yields passed through ``change`` first (None: skip the effect,
    send None back); results, errors and stop requests go back into ``gen`` untouched. How a step written for
    one situation is reused in another (manual mode's spare tunnel, tunnel_core.repaste)."""
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            effect = gen.throw(error) if error is not None else gen.send(result)
        except StopIteration as stop:
            return stop.value
        result, error = None, None
        effect = change(effect)
        if effect is None:
            continue
        try:
            result = yield effect
        except GeneratorExit:
            gen.close()
            raise
        except BaseException as exc:  # a stop request or a failed effect: the inner step decides
            error = exc


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

    Public so every ICE mode's dialogue (manual here, nostr in dialogue_nostr) resolves TURN the same way."""
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
    hold: float = 0.0,
    durable: bool = True,
) -> Generator[Effect, Any, tuple[Peer, GatheringComplete]]:
    """Bind, build the Peer (ICE -> QUIC -> forwarding), gather; shared by every ICE-mode role.

    ``is_client`` is the QUIC/forwarding role. ICE's controlling role defaults to it (manual mode); ice-nostr
    passes the opposite. ``durable`` offers durable streams in the QUIC handshake (docs/durable.md; off for
    upstream's wire formats). ``pins`` is read when QUIC starts (the answer arrives after gathering): "server" pins the
    server's certificate on the client, "client" the client's on the server. ``hold``: see ``Peer`` (manual mode
    holds on past the consent limit, docs/reconnect.md).
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
            congestion=ice.congestion,
            datagrams=ice.udp_over != "stream",
            pmtu_ceiling=assembly.pmtu_ceiling_for(ice.packet_size, local, remote),
            durable=durable,
        )

    def session_factory(quic: Any) -> Any:
        return assembly.new_session(quic, is_client=is_client, protocol=session_spec["protocol"],
                                    targets=session_spec.get("addresses", ()), routes=session_spec.get("routes"))

    peer = assembly.new_peer(agent, is_client=is_client, quic_factory=quic_factory, session_factory=session_factory,
                             hold=hold)
    yield Start(peer)
    yield Poke(agent.gather)
    gathered = yield Wait("gathered")
    if isinstance(gathered, TunnelClosed):
        raise failure(gathered)
    for problem in gathered.relay_errors:
        yield Say(f"Warning: no relay candidate from {problem}")
    if not gathered.candidates:
        raise TunnelError(manual.NO_CANDIDATES, ExitCode.CONNECT_FAILED)
    yield Say(f"Gathered {manual.describe_candidates(gathered.candidates)} candidate(s)")
    return peer, gathered


def _checked_ice(remote: ManualOffer | ManualAnswer) -> manual.RemoteIce:
    """The pasted block's ICE side, checked before anything is printed or started (exit 2 otherwise)."""
    try:
        return manual.remote_ice(remote.ice_ufrag, remote.ice_pwd, remote.candidates)
    except RemoteProtocolError as exc:
        raise _input_error(exc) from None


def _start_checks(peer: Peer, remote: manual.RemoteIce) -> Generator[Effect, Any, None]:
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
    for line in manual.connected_lines(connected.connection_type, shown_local, connected.remote_address):
        yield Say(line)
    ready = yield Wait("ready", timeout=QUIC_CONNECT_TIMEOUT)
    if ready is None:
        raise TunnelError(ready_message, ExitCode.CONNECT_FAILED)
    if isinstance(ready, TunnelClosed):
        raise failure(ready)
    yield Say(ready_line)
    return connected


# ------------------------------------------------------------------------------------------------ manual mode


#: What a dynamic (SOCKS5) forward asks for in the signaling, where other forwards give their source URL.
DYNAMIC_SOURCE = "dynamic"


@attrs.frozen
class LocalForward:
    """A client's forward, checked: what it asks the server for and where it listens. ``source`` None is a
    dynamic forward (a SOCKS5 listener whose applications name their targets, docs/forwards.md)."""

    source: Source | None
    listen: str  # as the user wrote it, for messages
    ip: str
    port: int
    credentials: tuple[str, str] | None = attrs.field(default=None, repr=False)

    @property
    def protocol(self) -> Literal["tcp", "udp", "dynamic"]:
        return "dynamic" if self.source is None else self.source.protocol

    def url(self) -> str:
        return DYNAMIC_SOURCE if self.source is None else self.source.url()

    def name(self) -> str:
        """How messages name this forward: the user's own words."""
        return f"socks5 {self.listen}" if self.source is None else f"{self.listen}={self.source.url()}"


#: A client asked for several forwards and the server's answer carried no verdicts: an upstream or older server.
OLD_SERVER_FORWARDS = ("The server does not support several forwards in one tunnel (upstream tunnel-rs or an older "
                       "tunnel); run one client per forward")


def old_server_error(forwards: Sequence[LocalForward], reverses: Sequence[ReverseForward] = ()) -> TunnelError:
    """A server that answered without per-forward verdicts (upstream tunnel-rs or an older tunnel) and so cannot
    serve what this client asked for; the message names what it lacks (docs/forwards.md, exit 1)."""
    wanted = (["dynamic forwarding (--socks5)"] if any(f.source is None for f in forwards) else []) + \
        (["reverse forwards (--reverse)"] if reverses else [])
    if not wanted:
        return TunnelError(OLD_SERVER_FORWARDS, ExitCode.GENERAL)
    return TunnelError(f"The server does not support {' or '.join(wanted)} (upstream tunnel-rs or an older "
                       "tunnel)", ExitCode.GENERAL)


def local_forwards(
    source: str | None, target: str | None, extra: Sequence[Forward], socks5: SocksListen | None = None
) -> Generator[Effect, Any, list[LocalForward]]:
    """Parse and resolve every forward of a client (the first one is ``source``/``target`` when given, a dynamic
    one last); exit 2 on bad input."""
    wanted = [(f.source, f.listen) for f in extra]
    if source is not None and target is not None:
        wanted.insert(0, (source, target))
    if socks5 is not None:
        wanted.append((None, socks5.listen))
    out: list[LocalForward] = []
    for src, listen in wanted:
        try:
            parsed = None if src is None else parse_source(src)
            host, port = parse_target(listen)
        except PolicyError as exc:
            raise _input_error(exc) from None
        ip = yield from listen_ip(host, port, listen)
        credentials = socks5.credentials if src is None and socks5 is not None else None
        out.append(LocalForward(parsed, listen, ip, port, credentials))
    return out


@attrs.frozen
class ReverseForward:
    """A reverse forward: the server listens at ``listen`` (ip:port) and the client dials ``addresses`` (the
    resolved ``target``) for every connection it accepts."""

    listen: str
    target: Source
    addresses: tuple[Address, ...]

    def url(self) -> str:
        return REVERSE_SCHEME + self.listen

    def name(self) -> str:
        return f"reverse {self.listen}={self.target.url()}"


def reverse_forwards(wanted: Sequence[Forward]) -> Generator[Effect, Any, list[ReverseForward]]:
    """Check every ``--reverse`` and resolve its client-side target (it is dialled from here)."""
    out: list[ReverseForward] = []
    for fwd in wanted:
        try:
            target = parse_source(fwd.source)
            parse_target(fwd.listen)
        except PolicyError as exc:
            raise _input_error(exc) from None
        if target.protocol != "tcp":
            raise TunnelError(f"Reverse forward '{fwd.listen}={fwd.source}': only tcp:// targets", ExitCode.USAGE)
        ips = yield Resolve(target.host, target.port)
        if not ips:
            raise TunnelError(f"Reverse forward target '{fwd.source}' does not resolve", ExitCode.USAGE)
        out.append(ReverseForward(fwd.listen, target, tuple((ip, target.port) for ip in ips)))
    return out


def client_forwards(
    source: str | None, target: str | None, extra: Sequence[Forward], socks5: SocksListen | None,
    reverse: Sequence[Forward],
) -> Generator[Effect, Any, tuple[list[LocalForward], list[ReverseForward]]]:
    """Every forward of an ICE-mode client, checked: local ones (``local_forwards``) and reverse ones, at least one
    and at most MAX_FORWARDS in all (exit 2 otherwise)."""
    forwards = yield from local_forwards(source, target, extra, socks5)
    reverses = yield from reverse_forwards(reverse)
    if not forwards and not reverses:
        raise TunnelError("No forward given", ExitCode.USAGE)
    count = len(forwards) + len(reverses)
    if count > MAX_FORWARDS:
        raise TunnelError(f"At most {MAX_FORWARDS} forwards per tunnel (got {count})", ExitCode.USAGE)
    return forwards, reverses


def several(forwards: Sequence[LocalForward], reverses: Sequence[ReverseForward] = ()) -> bool:
    """Whether the client needs the forwards extension (several forwards, a dynamic or a reverse one)."""
    return len(forwards) + len(reverses) > 1 or any(f.source is None for f in forwards) or bool(reverses)


def forward_routes(
    forwards: Sequence[LocalForward], verdicts: Sequence[str] | None, reverses: Sequence[ReverseForward] = ()
) -> list[Route] | None:
    """The client's session routes once the server answered; None keeps upstream's one-forward wire."""
    if not several(forwards, reverses):
        return None
    if verdicts is None:
        raise old_server_error(forwards, reverses)
    if len(verdicts) != len(forwards) + len(reverses):
        raise TunnelError("The server answered for a different number of forwards", ExitCode.USAGE)
    return [Route(f.protocol) for f in forwards] + [Route("reverse", r.addresses) for r in reverses]


def say_reverse_verdicts(
    reverses: Sequence[ReverseForward], verdicts: Sequence[str], first: int
) -> Generator[Effect, Any, None]:
    for index, rev in enumerate(reverses, first):
        if verdicts[index]:
            yield Say(f"Forward {rev.name()} refused by the server: {verdicts[index]}")
        else:
            yield Say(f"The server listens on {rev.listen} for reverse forward to {rev.target.url()}")


def listen_all(forwards: Sequence[LocalForward], verdicts: Sequence[str] | None) -> Generator[Effect, Any, None]:
    """Open the listener of every accepted forward; name every refused one."""
    for index, fwd in enumerate(forwards):
        reason = verdicts[index] if verdicts is not None else ""
        if reason:
            yield Say(f"Forward {fwd.name()} refused by the server: {reason}")
            continue
        try:
            bound = yield Listen(fwd.protocol, fwd.ip, fwd.port, index, fwd.credentials)
        except OSError as exc:
            raise TunnelError(f"Failed to listen on {fwd.listen}: {exc.strerror or exc}", ExitCode.GENERAL) from None
        if fwd.source is None:
            auth = " (username/password required)" if fwd.credentials else ""
            yield Say(f"Listening on SOCKS5 {manual.format_address(bound)}{auth} - point your applications' "
                      f"socks5h proxy here")
            continue
        what = "connect" if fwd.source.protocol == "tcp" else "send"
        suffix = f" (forward to {fwd.source.url()})" if len(forwards) > 1 else ""
        yield Say(f"Listening on {fwd.source.protocol.upper()} {manual.format_address(bound)} - configure your "
                  f"client to {what} here{suffix}")


@attrs.frozen
class ReverseListen:
    """A reverse forward as the server sees it: where the client asks it to listen."""

    ip: str
    port: int
    text: str


Requested = Source | ReverseListen | None


def requested_sources(source: str | None, extra: Sequence[str]) -> list[Requested]:
    """The forwards a client's signaling asks for (None: a dynamic one); PolicyError on a malformed source."""
    out: list[Requested] = []
    for text in (s.strip() for s in (source or "", *extra)):
        if text == DYNAMIC_SOURCE:
            out.append(None)
        elif text.startswith(REVERSE_SCHEME):
            listen = text[len(REVERSE_SCHEME):]
            host, port = parse_target(listen)
            out.append(ReverseListen(host, port, listen))
        else:
            out.append(parse_source(text))
    return out


def server_verdicts(
    policy: AccessPolicy, sources: Sequence[Requested], allow_listen: Sequence[str] = ()
) -> Generator[Effect, Any, tuple[list[str], list[Route]]]:
    """The server's verdict on every forward a client asked for (each checked alone by the policy), and the
    session routes that follow from them (a refused forward gets a route without addresses). A dynamic forward
    is accepted: each of its targets is checked by the same policy when the application names it. A reverse one
    only if ``allow_listen`` names its exact address."""
    verdicts: list[str] = []
    routes: list[Route] = []
    for source in sources:
        if isinstance(source, ReverseListen):
            if listen_allowed(allow_listen, source.ip, source.port):
                verdicts.append("")
                routes.append(Route("reverse", granted=True))
                yield Say(f"Client requests a reverse forward on {source.text} (allowed)")
            else:
                reason = listen_refusal(source.text)
                verdicts.append(reason)
                routes.append(Route("reverse"))
                yield Say(f"Client requests a reverse forward on {source.text} (refused: {reason})")
            continue
        if source is None:
            verdicts.append("")
            routes.append(Route("dynamic", policy=policy))
            yield Say("Client requests a dynamic (SOCKS5) forward (each target checked by the allowlist)")
            continue
        decision = yield from decide_source(policy, source)
        if decision.allowed:
            verdicts.append("")
            routes.append(Route(source.protocol, tuple(decision.addresses)))
            yield Say(f"Client requests {source.url()} (allowed)")
        else:
            reason = decision.reason or f"Source '{source.url()}' is not allowed"
            verdicts.append(reason)
            routes.append(Route(source.protocol))
            yield Say(f"Client requests {source.url()} (refused: {reason})")
    return verdicts, routes


def manual_client_dialogue(opts: ManualClientOptions, rng: Callable[[int], bytes]) -> Dialogue:
    forwards, reverses = yield from client_forwards(opts.source, opts.target, opts.extra_forwards, opts.socks5,
                                                    opts.reverse)
    urls = [f.url() for f in forwards] + [r.url() for r in reverses]
    yield Say(manual.CLIENT_BANNER)
    pins: dict[str, str] = {}
    first = forwards[0].source if forwards else None
    spec: dict[str, Any] = {"protocol": "tcp" if first is None else first.protocol}
    peer, _ = yield from start_peer(opts.ice, rng=rng, is_client=True, identity=None, pins=pins,
                                     session_spec=spec, hold=opts.reconnect_timeout,
                                     durable=False)  # a held path keeps QUIC: nothing to resume
    yield Say(manual.OFFER_TITLE)
    offer = manual.make_offer(peer.ice, urls[0], urls[1:])
    yield PrintBlock(encode_block("OFFER", offer))
    yield Say(manual.PROMPT_FOR_ANSWER)
    text = yield ReadBlock("ANSWER")
    try:
        answer = decode_answer(text)
        pins["server"] = manual.answer_fingerprint(answer)
    except RemoteProtocolError as exc:
        raise _input_error(exc) from None
    verdicts = answer.forward_verdicts if several(forwards, reverses) else None
    spec["routes"] = forward_routes(forwards, verdicts, reverses)
    yield from _start_checks(peer, _checked_ice(answer))
    yield from until_up(peer, "Timeout during QUIC handshake", "Connected to server over QUIC.")
    yield from listen_all(forwards, verdicts)
    if reverses and verdicts is not None:
        yield from say_reverse_verdicts(reverses, verdicts, len(forwards))
    if opts.reconnect_timeout > 0 and opts.fresh_paste and (yield AskTerminal()):
        from tunnel_core.repaste import hold_or_paste  # it builds on this module's steps

        yield from hold_or_paste(opts, rng, forwards, reverses, spec["protocol"])
        return
    closed = yield Wait("closed")
    raise client_end(closed)


def manual_server_dialogue(opts: ManualServerOptions, rng: Callable[[int], bytes]) -> Dialogue:
    try:
        policy = AccessPolicy.from_strings(opts.allowed_tcp, opts.allowed_udp)
    except PolicyError as exc:
        raise _input_error(exc) from None
    yield Say(manual.SERVER_BANNER)
    identity = yield NewIdentity()
    spec: dict[str, Any] = {}
    # Gather before reading the offer (as upstream), so the answer can be printed at once.
    peer, _ = yield from start_peer(opts.ice, rng=rng, is_client=False, identity=identity, pins={},
                                     session_spec=spec, hold=opts.reconnect_timeout,
                                     durable=False)  # a held path keeps QUIC: nothing to resume
    yield Say(manual.PROMPT_FOR_OFFER)
    text = yield ReadBlock("OFFER")
    try:
        offer = decode_offer(text)
        first = (offer.source or "").strip()
        special = first == DYNAMIC_SOURCE or first.startswith(REVERSE_SCHEME)
        source = None if special else manual.offer_source(offer)  # its own messages for a missing source
        sources = requested_sources(offer.source, offer.extra_sources)
    except (RemoteProtocolError, PolicyError) as exc:
        raise TunnelError(str(exc), ExitCode.USAGE) from None
    remote = _checked_ice(offer)  # before the ANSWER is printed: a bad offer gets no answer (item 7)
    verdicts: list[str] | None = None
    if source is not None and len(sources) == 1:
        decision = yield from decide_source(policy, source)
        if not decision.allowed:
            raise TunnelError(decision.reason or f"Source '{source.url()}' is not allowed", ExitCode.AUTH)
        spec["protocol"] = source.protocol
        spec["addresses"] = decision.addresses
        yield Say(f"Client requests {source.url()} (allowed)")
    else:
        verdicts, routes = yield from server_verdicts(policy, sources, opts.allow_listen)
        yield from bind_reverse(sources, verdicts, routes)
        if all(verdicts):
            raise TunnelError(f"No forward the client asked for is allowed: {verdicts[0]}", ExitCode.AUTH)
        spec["protocol"] = "tcp"
        spec["routes"] = routes
        yield Say(f"Serving {len(routes) - sum(map(bool, verdicts))} of {len(routes)} forwards in one session")
    yield Say(manual.ANSWER_TITLE)
    answer = manual.make_answer(peer.ice, identity.fingerprint, verdicts)
    yield PrintBlock(encode_block("ANSWER", answer))
    yield from _start_checks(peer, remote)
    yield from until_up(peer, "Timeout waiting for QUIC connection", "Client connected over QUIC.")
    closed = yield Wait("closed")
    if closed_orderly(closed):
        yield Say("Connection closed.")
        return
    raise failure(closed)


def bind_reverse(
    sources: Sequence[Requested], verdicts: list[str], routes: list[Route]
) -> Generator[Effect, Any, None]:
    """Server: bind the listener of every granted reverse forward before the answer goes out, accepting only once
    the tunnel is ready. One that cannot be bound (port in use, permission) becomes a refusal in ``verdicts``, so
    the client names it (docs/forwards.md); the other forwards carry on."""
    for index, source in enumerate(sources):
        if not isinstance(source, ReverseListen) or verdicts[index]:
            continue
        try:
            bound = yield Listen("tcp", source.ip, source.port, index, held=True)
        except OSError as exc:
            reason = cannot_listen(source.text, exc.strerror or str(exc))
            verdicts[index] = reason
            routes[index] = Route("reverse")
            yield Say(f"Warning: {reason}")
            continue
        yield Say(f"Listening on TCP {manual.format_address(bound)} for the client's reverse forward")


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


#: Old names (before dialogues were called dialogues), kept for embedders; docs/embedding.md.
manual_client_flow = manual_client_dialogue
manual_server_flow = manual_server_dialogue
Flow = Dialogue
