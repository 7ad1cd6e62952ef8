"""The ice-nostr mode as effect generators: the client asks through Nostr relays, the server keeps serving.

Same habit as tunnel_core.dialogue (whose effects and helpers this reuses): the dialogue is written once and every
runtime interprets it. Nostr adds a few effects - relay connections driven by a sans-IO RelayPool, publishing,
waiting for the next signal, reading the clocks - and ``Spawn`` so the server can run one sub-dialogue per session,
each with its own ICE agent, UDP sockets and QUIC connection (reference 5.5 point 7).

Security beyond upstream (docs/nostr.md): content is NIP-44 encrypted to the peer, and the client presents a QUIC
certificate whose fingerprint travels in the encrypted request; the server pins it, so a relay that saw the
signaling can neither read the ICE credentials nor complete the QUIC handshake in the client's place.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Generator, Sequence
from typing import Any

import attrs

from tunnel_core import manual as dialogue
from tunnel_core.blocks import ManualOffer, ManualReject, ManualRequest
from tunnel_core.dialogue import (
    DYNAMIC_SOURCE,
    QUIC_CONNECT_TIMEOUT,
    REVERSE_SCHEME,
    Effect,
    NewIdentity,
    Poke,
    Say,
    Wait,
    bind_reverse,
    client_end,
    client_forwards,
    closed_orderly,
    decide_source,
    failure,
    forward_routes,
    listen_all,
    old_server_error,
    requested_sources,
    say_reverse_verdicts,
    server_verdicts,
    several,
    start_peer,
    until_up,
)
from tunnel_core.errors import RemoteProtocolError
from tunnel_core.nostr.errors import NostrError
from tunnel_core.nostr.event import Event
from tunnel_core.nostr.keys import PublicKey, SecretKey
from tunnel_core.nostr.messages import (
    TYPE_OFFER,
    TYPE_REJECT,
    TYPE_REQUEST,
    Channel,
    NostrRequest,
    session_id,
)
from tunnel_core.nostr.options import NostrClientOptions, NostrServerOptions
from tunnel_core.nostr.pool import RelayPool, RelayUp
from tunnel_core.nostr.target import client_protocol
from tunnel_core.options import ExitCode, TunnelError
from tunnel_core.peer import IceConnected, Peer
from tunnel_core.peertext import quote_peer
from tunnel_core.policy import AccessPolicy, PolicyError, parse_source, parse_target
from tunnel_core.quic.identity import QuicIdentity
from tunnel_core.reconnect import keep_reconnecting

#: Reference 5.5: requests older than this are replays (some relays store ephemeral events anyway).
MAX_REQUEST_AGE = 30
#: How long the client's pool replays a request to a relay that (re)connects: it must still be fresh (above) when
#: the server reads it, with room for clock skew. Later, the client publishes it afresh instead (``_await_offer``).
REQUEST_REPLAY_TTL = MAX_REQUEST_AGE - 10
#: Session ids remembered for dedup, and how long an id is certainly kept once the table is full.
SEEN_SESSIONS_LIMIT = 1000
SEEN_SESSIONS_MIN_AGE = 60.0
#: The client's wait window grows to at most this (reference 5.5 point 3).
MAX_REPUBLISH_WINDOW = 60.0
RELAY_CONNECT_TIMEOUT = 10.0
#: The client leaves the relays this long after publishing its answer, so the answer gets out first.
CLIENT_RELAY_LINGER = 1.0

SERVER_BANNER = "Nostr Tunnel - Server Mode (Client-First)"
CLIENT_BANNER = "Nostr Tunnel - Client Mode (Client-First)"

# ------------------------------------------------------------------------------------------------ effects


@attrs.frozen
class OpenRelays:
    """Start driving ``pool`` (one WebSocket per relay, reconnecting as the pool decides). Returns the number of
    open relays once one is open, every relay was tried once, or ``timeout`` passed - whichever is first."""

    pool: RelayPool
    timeout: float = RELAY_CONNECT_TIMEOUT


@attrs.frozen
class Publish:
    """Hand a signed event to the pool (sent now to open relays, later to relays that come back)."""

    event: Event


@attrs.frozen
class NextMessage:
    """The next verified incoming event (an ``Event``), a relay that (re)connected (the pool's ``RelayUp``) or a
    ``SessionEnded`` of a spawned sub-dialogue; None when ``timeout`` passed first (None waits without limit)."""

    timeout: float | None


@attrs.frozen
class CloseRelays:
    """Leave the relays, after ``delay`` seconds in the background (the dialogue carries on at once)."""

    delay: float = 0.0


@attrs.frozen
class Clock:
    """Read the clocks; returns ``Times``."""


@attrs.frozen
class Times:
    monotonic: float
    wall: int


@attrs.frozen
class Spawn:
    """Run ``dialogue`` concurrently with its own sockets, peer and forwarding (a server session). Its Say lines are
    prefixed with ``label``. When it ends, the spawning dialogue's NextMessage returns ``SessionEnded(name, error)``."""

    name: str
    label: str
    dialogue: Any


@attrs.frozen
class SessionEnded:
    name: str
    #: None for a normal end; the user-facing message of the TunnelError otherwise.
    error: str | None


NostrEffect = Effect | OpenRelays | Publish | NextMessage | CloseRelays | Clock | Spawn
NostrDialogue = Generator[Any, Any, None]

# ------------------------------------------------------------------------------------------------ helpers


def _usage(message: str) -> TunnelError:
    return TunnelError(message, ExitCode.USAGE)


def parse_keys(nsec: str, peer: str) -> tuple[SecretKey, PublicKey]:
    if not nsec.strip():
        raise _usage("nsec is empty. Provide a valid nsec or hex private key.")
    try:
        secret = SecretKey.parse(nsec)
        public = PublicKey.parse(peer)
    except NostrError as exc:
        raise _usage(str(exc)) from None
    return secret, public


def format_relays(relays: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{r}"' for r in relays) + "]"


class SeenSessions:
    """Session-id dedup with upstream's eviction (reference 5.5 point 4): up to 1000 ids; when full, drop ids
    older than 60 s, then the oldest quarter."""

    def __init__(self, limit: int = SEEN_SESSIONS_LIMIT, min_age: float = SEEN_SESSIONS_MIN_AGE) -> None:
        self.limit = limit
        self.min_age = min_age
        self._ids: OrderedDict[str, float] = OrderedDict()

    def __contains__(self, sid: str) -> bool:
        return sid in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, sid: str, now: float) -> None:
        if len(self._ids) >= self.limit:
            for old in [k for k, t in self._ids.items() if now - t > self.min_age]:
                del self._ids[old]
            if len(self._ids) >= self.limit:
                for _ in range(max(1, self.limit // 4)):
                    self._ids.popitem(last=False)
        self._ids[sid] = now


def request_age(timestamp: int, wall_now: int) -> int:
    """Saturating ``now - timestamp``: a request from the future is age 0, as upstream."""
    return max(0, wall_now - timestamp)


def _start_checks(peer: Peer, ufrag: str, pwd: str, candidates: tuple[str, ...]) -> Generator[Any, Any, None]:
    try:
        remote = dialogue.remote_ice(ufrag, pwd, candidates)
    except RemoteProtocolError as exc:
        raise TunnelError(str(exc), ExitCode.CONNECT_FAILED) from None
    peer.ice.set_remote(remote.ufrag, remote.pwd, remote.candidates)
    yield Poke(peer.ice.connect)


# ------------------------------------------------------------------------------------------------ client


def nostr_client_dialogue(opts: NostrClientOptions, rng: Callable[[int], bytes]) -> NostrDialogue:
    first: tuple[str | None, str | None] = (None, None)
    if opts.source is not None and opts.target is not None:
        source, target = client_protocol(opts.source, opts.target)
        try:
            parse_target(target)
        except PolicyError as exc:
            raise _usage(str(exc)) from None
        first = (source.url(), target)
    forwards, reverses = yield from client_forwards(*first, opts.extra_forwards, opts.socks5, opts.reverse)
    secret, peer_key = parse_keys(opts.nsec, opts.peer_npub)
    channel = Channel(secret, peer_key, plaintext=opts.plaintext, kind=opts.event_kind)
    yield Say(CLIENT_BANNER)
    yield Say(f"Your pubkey: {secret.public_key.npub}")
    yield Say(f"Transfer ID: {channel.transfer_id}")
    yield Say(f"Relays: {format_relays(opts.relays)}")
    verdicts: list[Sequence[str] | None] = []  # the first session's per-forward verdicts (which listeners to open)

    def establish(remaining: float) -> Generator[Any, Any, IceConnected]:
        # A reconnect attempt waits for a relay and then for the server's offer no longer than the reconnect
        # budget left.
        return _client_session(attrs.evolve(opts, max_wait=min(opts.max_wait, remaining)), rng, channel, forwards,
                               verdicts, reverses, reconnecting=True)

    yield from _client_session(opts, rng, channel, forwards, verdicts, reverses)
    yield from listen_all(forwards, verdicts[0])
    if reverses and verdicts[0] is not None:
        yield from say_reverse_verdicts(reverses, verdicts[0], len(forwards))
    while True:
        closed = yield Wait("closed")
        # A new request through the relays builds a new tunnel; the listeners stay (docs/reconnect.md).
        yield from keep_reconnecting(establish, client_end(closed), opts.reconnect_timeout, Clock())


def _client_session(
    opts: NostrClientOptions, rng: Callable[[int], bytes], channel: Channel, forwards: Sequence[Any],
    verdicts: list[Sequence[str] | None], reverses: Sequence[Any] = (), reconnecting: bool = False,
) -> Generator[Any, Any, IceConnected]:
    """One tunnel: open the relays, request, answer, connect; the relays are left once the answer is out (or at
    once when this attempt fails, so a reconnect's next attempt starts clean). The server's per-forward verdicts
    are appended to ``verdicts``.

    The first session goes on with no relay open, as upstream (its request goes out when one connects); a
    reconnect attempt waits for a relay first (within ``max_wait``): while none is reachable the network is
    likely still cut, and candidates gathered now (no STUN answer) would be poorer than after it heals."""
    pool = RelayPool(opts.relays, filters=[channel.subscription_filter()], subscription_id=rng(8).hex(),
                     publish_ttl=REQUEST_REPLAY_TTL)
    opened = yield OpenRelays(pool)
    yield Say(f"Connected to {opened}/{len(opts.relays)} relay(s)")
    try:
        if reconnecting and not opened:
            yield from _await_relay(pool, opts.max_wait)
        return (yield from _client_request(opts, rng, channel, forwards, verdicts, reverses))
    except TunnelError:
        yield CloseRelays()
        raise


def _client_request(
    opts: NostrClientOptions, rng: Callable[[int], bytes], channel: Channel, forwards: Sequence[Any],
    verdicts: list[Sequence[str] | None], reverses: Sequence[Any] = (),
) -> Generator[Any, Any, IceConnected]:
    source = forwards[0].source if forwards else None
    urls = [f.url() for f in forwards] + [r.url() for r in reverses]
    identity: QuicIdentity | None = None if opts.plaintext else (yield NewIdentity())
    pins: dict[str, str] = {}
    spec: dict[str, Any] = {"protocol": "tcp" if source is None else source.protocol}
    peer, _ = yield from start_peer(opts.ice, rng=rng, is_client=True, controlling=False, identity=identity, pins=pins,
                                     session_spec=spec, durable=not opts.plaintext)
    times: Times = yield Clock()
    sid = session_id(rng)
    request = NostrRequest(
        ManualRequest(
            ice_ufrag=peer.ice.local_ufrag,
            ice_pwd=peer.ice.local_pwd,
            candidates=dialogue.candidate_strings(peer.ice),
            session_id=sid,
            timestamp=times.wall,
            source=urls[0],
            extra_sources=tuple(urls[1:]),
        ),
        quic_fingerprint=None if identity is None else identity.fingerprint,
    )
    yield Say(f"Session {sid[:8]}: requesting {', '.join(urls)}")
    try:
        offer = yield from _await_offer(channel, request, times, opts, rng)
    except TunnelError as exc:
        if exc.exit_code is ExitCode.AUTH and _not_understood(exc.message, urls[0]):
            raise old_server_error(forwards, reverses) from None
        raise
    verdict = offer.forward_verdicts if several(forwards, reverses) else None
    verdicts.append(verdict)
    spec["routes"] = forward_routes(forwards, verdict, reverses)

    answer_msg = dialogue.make_answer(peer.ice, "")
    answer_msg = attrs.evolve(answer_msg, quic_fingerprint=None, session_id=sid)
    now = yield Clock()
    yield Publish(channel.seal(answer_msg, created_at=now.wall, rng=rng))
    yield CloseRelays(delay=CLIENT_RELAY_LINGER)
    try:
        pins["server"] = dialogue.peer_fingerprint(offer.quic_fingerprint)
    except RemoteProtocolError as exc:
        raise TunnelError(str(exc), ExitCode.CONNECT_FAILED) from None
    yield from _start_checks(peer, offer.ice_ufrag, offer.ice_pwd, offer.candidates)
    return (yield from until_up(peer, "Timeout during QUIC handshake", "Connected to server over QUIC."))


def _await_relay(pool: RelayPool, wait: float) -> Generator[Any, Any, None]:
    """Until one of ``pool``'s relays is open (the pool keeps retrying them), at most ``wait`` seconds."""
    deadline = (yield Clock()).monotonic + wait
    while not pool.open_count:
        left = deadline - (yield Clock()).monotonic
        if left <= 0:
            raise TunnelError(f"No Nostr relay reachable within {wait:g}s", ExitCode.CONNECT_FAILED)
        yield NextMessage(left)  # a RelayUp wakes us; anything else left over from an earlier attempt is moot


def _not_understood(reason: str, first: str) -> bool:
    """An upstream or older server refusing a request whose first forward is a dynamic or reverse one names it as
    an unknown source ("Unknown protocol in source 'dynamic'", "Invalid source ..."); a server that knows these
    forwards never does."""
    special = first == DYNAMIC_SOURCE or first.startswith(REVERSE_SCHEME)
    return special and f"'{first}'" in reason


def _await_offer(
    channel: Channel, request: NostrRequest, start: Times, opts: NostrClientOptions, rng: Callable[[int], bytes]
) -> Generator[Any, Any, ManualOffer]:
    """Publish the request, then wait for the matching offer or reject, re-publishing with a doubling window.

    Every publication carries the time it is made (same session id, same ICE side): the server drops requests
    older than ``MAX_REQUEST_AGE``, so re-publishing the first timestamp (upstream, reference 5.5 point 3) is
    wasted after 30 s - and a reconnect whose relay came back 40 s into its wait was lost until ``max_wait``
    ended it (docs/reconnect.md). A relay that (re)connects after our last publication gets it afresh at once,
    not at the next window."""
    sid = request.request.session_id
    window = max(0.1, opts.republish_interval)
    deadline = start.monotonic + opts.max_wait
    next_publish = start.monotonic
    published_at = float("-inf")
    now = start
    fresh_relay = False
    while True:
        due = now.monotonic >= next_publish
        if due or fresh_relay:
            stamped = attrs.evolve(request, request=attrs.evolve(request.request, timestamp=now.wall))
            yield Publish(channel.seal(stamped, created_at=now.wall, rng=rng))
            published_at = now.monotonic
            fresh_relay = False
        if due:
            next_publish = now.monotonic + window
            window = min(window * 2, MAX_REPUBLISH_WINDOW)
        remaining = deadline - now.monotonic
        if remaining <= 0:
            raise TunnelError(f"Timeout waiting for offer from peer ({opts.max_wait:g}s)", ExitCode.CONNECT_FAILED)
        signal = yield NextMessage(min(remaining, max(0.0, next_publish - now.monotonic)))
        now = yield Clock()
        if isinstance(signal, RelayUp):
            fresh_relay = signal.at > published_at
            continue
        if not isinstance(signal, Event):
            continue
        try:
            received = channel.open(signal, (TYPE_OFFER, TYPE_REJECT))
        except NostrError:
            continue
        message = received.message
        if isinstance(message, ManualReject):
            if message.session_id != sid:
                yield Say(f"Ignoring reject for another session ({quote_peer(message.session_id[:8])})")
                continue
            raise TunnelError(f"Session rejected by server: {quote_peer(message.reason)}", ExitCode.AUTH)
        assert isinstance(message, ManualOffer)
        if message.session_id != sid:
            yield Say(f"Ignoring stale offer for session {quote_peer(str(message.session_id)[:8])}")
            continue
        yield Say("Received offer from server")
        return message


# ------------------------------------------------------------------------------------------------ server


def nostr_server_dialogue(opts: NostrServerOptions, rng: Callable[[int], bytes]) -> NostrDialogue:
    try:
        policy = AccessPolicy.from_strings(opts.allowed_tcp, opts.allowed_udp)
    except PolicyError as exc:
        raise _usage(str(exc)) from None
    secret, peer_key = parse_keys(opts.nsec, opts.peer_npub)
    channel = Channel(secret, peer_key, plaintext=opts.plaintext, kind=opts.event_kind)
    yield Say(SERVER_BANNER)
    yield Say(f"Your pubkey: {secret.public_key.npub}")
    yield Say(f"Transfer ID: {channel.transfer_id}")
    yield Say(f"Relays: {format_relays(opts.relays)}")
    pool = RelayPool(opts.relays, filters=[channel.subscription_filter()], subscription_id=rng(8).hex())
    opened = yield OpenRelays(pool)
    yield Say(f"Connected to {opened}/{len(opts.relays)} relay(s)")
    limit = "unlimited" if opts.max_sessions == 0 else str(opts.max_sessions)
    yield Say(f"Waiting for tunnel requests (max sessions: {limit})...")

    seen = SeenSessions()
    active: set[str] = set()
    while True:
        signal = yield NextMessage(None)
        if isinstance(signal, SessionEnded):
            active.discard(signal.name)
            ending = f"failed: {signal.error}" if signal.error else "ended"
            yield Say(f"Session {signal.name[:8]} {ending} ({len(active)} active)")
            continue
        if not isinstance(signal, Event):
            continue
        try:
            received = channel.open(signal, (TYPE_REQUEST,))
        except NostrError:
            continue
        message = received.message
        assert isinstance(message, NostrRequest)
        req = message.request
        now: Times = yield Clock()
        age = request_age(req.timestamp, now.wall)
        if age > MAX_REQUEST_AGE:
            yield Say(f"Ignoring stale request (age: {age}s > max {MAX_REQUEST_AGE}s)")
            continue
        if req.session_id in seen:
            continue
        seen.add(req.session_id, now.monotonic)
        if opts.max_sessions and len(active) >= opts.max_sessions:
            reason = f"Server at capacity ({len(active)}/{opts.max_sessions} sessions)"
            yield Say(f"Rejecting session {quote_peer(req.session_id[:8])}: {reason}")
            yield Publish(channel.seal(ManualReject(session_id=req.session_id, reason=reason),
                                       created_at=now.wall, rng=rng))
            continue
        active.add(req.session_id)
        yield Say(f"Session {quote_peer(req.session_id[:8])}: request for {quote_peer(str(req.source))} "
                  f"({len(active)} active)")
        yield Spawn(name=req.session_id, label=f"[{req.session_id[:8]}] ",
                    dialogue=server_session_dialogue(opts, policy, channel, message, rng))


def server_session_dialogue(
    opts: NostrServerOptions,
    policy: AccessPolicy,
    channel: Channel,
    message: NostrRequest,
    rng: Callable[[int], bytes],
) -> NostrDialogue:
    """One session: check the source, gather, publish the offer, run ICE (controlling) and serve QUIC."""
    req = message.request
    sid = req.session_id

    def reject(reason: str) -> Generator[Any, Any, None]:
        now: Times = yield Clock()
        yield Publish(channel.seal(ManualReject(session_id=sid, reason=reason), created_at=now.wall, rng=rng))

    if not req.source or not req.source.strip():
        raise TunnelError("Request missing source field", ExitCode.USAGE)
    first = req.source.strip()
    special = first == DYNAMIC_SOURCE or first.startswith(REVERSE_SCHEME)
    scheme = first.partition("://")[0].lower()
    if not special and scheme not in ("tcp", "udp"):
        reason = f"Unknown protocol in source '{quote_peer(str(req.source))}'. Use tcp:// or udp://"
        yield from reject(reason)
        raise TunnelError(reason, ExitCode.AUTH)
    try:
        source = None if special else parse_source(req.source)
        sources = requested_sources(req.source, req.extra_sources)
    except PolicyError as exc:
        yield from reject(str(exc))
        raise TunnelError(str(exc), ExitCode.AUTH) from None
    spec: dict[str, Any] = {"protocol": "tcp" if source is None else source.protocol}
    verdicts: list[str] | None = None
    if source is not None and len(sources) == 1:
        decision = yield from decide_source(policy, source)
        if not decision.allowed:
            reason = decision.reason or f"Source '{source.url()}' is not allowed"
            yield from reject(reason)
            raise TunnelError(reason, ExitCode.AUTH)
        spec["addresses"] = decision.addresses
    else:
        verdicts, spec["routes"] = yield from server_verdicts(policy, sources, opts.allow_listen)
        if all(verdicts):
            reason = f"No forward the client asked for is allowed: {verdicts[0]}"
            yield from reject(reason)
            raise TunnelError(reason, ExitCode.AUTH)
    identity: QuicIdentity = yield NewIdentity()
    pins: dict[str, str] = {}
    if message.quic_fingerprint is not None:
        try:
            pins["client"] = dialogue.peer_fingerprint(message.quic_fingerprint)
        except RemoteProtocolError as exc:
            yield from reject(str(exc))
            raise TunnelError(str(exc), ExitCode.AUTH) from None
    elif not opts.plaintext:
        reason = "Request carries no client certificate fingerprint (mutual authentication required)"
        yield from reject(reason)
        raise TunnelError(reason, ExitCode.AUTH)
    peer, _ = yield from start_peer(opts.ice, rng=rng, is_client=False, controlling=True, identity=identity, pins=pins,
                                     session_spec=spec, durable=not opts.plaintext)
    if verdicts is not None:
        yield from bind_reverse(sources, verdicts, spec["routes"])
        if all(verdicts):
            reason = f"No forward the client asked for is allowed: {verdicts[0]}"
            yield from reject(reason)
            raise TunnelError(reason, ExitCode.AUTH)
        yield Say(f"Serving {len(verdicts) - sum(map(bool, verdicts))} of {len(verdicts)} forwards in one session")
    offer = ManualOffer(
        ice_ufrag=peer.ice.local_ufrag,
        ice_pwd=peer.ice.local_pwd,
        candidates=dialogue.candidate_strings(peer.ice),
        quic_fingerprint=identity.fingerprint,
        session_id=sid,
        forward_verdicts=verdicts,
    )
    now: Times = yield Clock()
    yield Publish(channel.seal(offer, created_at=now.wall, rng=rng))
    yield Say("Published offer")
    yield from _start_checks(peer, req.ice_ufrag, req.ice_pwd, req.candidates)
    yield from until_up(peer, "Timeout waiting for QUIC connection", "Client connected over QUIC.")
    closed = yield Wait("closed")
    if closed_orderly(closed):
        yield Say("Connection closed.")
        return
    raise failure(closed)


__all__ = [
    "MAX_REQUEST_AGE",
    "QUIC_CONNECT_TIMEOUT",
    "Clock",
    "CloseRelays",
    "NextMessage",
    "OpenRelays",
    "Publish",
    "SeenSessions",
    "SessionEnded",
    "Spawn",
    "Times",
    "nostr_client_dialogue",
    "nostr_server_dialogue",
    "server_session_dialogue",
]


#: Old names, kept for embedders; docs/embedding.md.
nostr_client_flow = nostr_client_dialogue
nostr_server_flow = nostr_server_dialogue
