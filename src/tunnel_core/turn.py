"""A sans-IO TURN client (RFC 8656) over UDP: one allocation on one server, from one local socket.

Why our own: the ICE agent must gather relay candidates and carry checks, consent and QUIC through the relay on
whatever runtime drives it, so the client is a machine of the usual contract (inputs carry ``now``, randomness is
injected, outputs are pulled) that the agent owns next to its STUN transactions. It never picks a socket: every
datagram it emits goes from ``base`` (the local socket) to ``server``.

What it does: Allocate with long-term credentials (an unauthenticated first request, then 401 -> REALM/NONCE ->
signed retry; 438 Stale Nonce -> retry with the new nonce), Refresh before the lifetime runs out,
CreatePermission per peer IP (refreshed every 4 minutes, they last 5), ChannelBind per peer (refreshed every
9 minutes, they last 10) and the two data paths: ChannelData once a channel is confirmed, Send/Data indications
before that. A failed or closed client stays so; data for it is dropped.

Credentials: the password only ever becomes the MD5 long-term key; it is not kept in any repr or event.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import deque
from collections.abc import Callable

import attrs

from tunnel_core import stun
from tunnel_core.errors import LocalProtocolError
from tunnel_core.types import Address, Transmit

__all__ = [
    "CHANNEL_MAX",
    "CHANNEL_MIN",
    "MAX_PEERS",
    "Allocated",
    "AllocationFailed",
    "AllocationLost",
    "DataReceived",
    "TurnClient",
    "TurnEvent",
    "TurnServer",
    "TurnState",
    "TurnTiming",
    "is_channel_data",
    "parse_turn_url",
]

CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x4FFF  # RFC 8656 12: 0x4000-0x4FFF (0x5000-0x7FFF are reserved for the demultiplexer)
#: Permissions and channels per allocation: enough for every candidate a peer can signal, bounded all the same.
MAX_PEERS = 256
#: Datagrams held per peer IP while its permission is being installed (a permission takes one round trip).
PENDING_LIMIT = 16
UDP_TRANSPORT = 17
#: How many times one request may be re-signed after 401/438 before we give up on the server.
MAX_AUTH_RETRIES = 3


def is_channel_data(data: bytes) -> bool:
    """RFC 7983 / 8656 demultiplexing: a first byte of 0x40-0x4F from a TURN server is ChannelData."""
    return len(data) >= 4 and 0x40 <= data[0] <= 0x4F


def parse_turn_url(text: str) -> tuple[str, int]:
    """``turn:HOST:PORT`` (or ``turn:HOST``, port 3478; ``[v6]`` brackets allowed) -> (host, port).

    Only UDP is spoken, so ``turns:`` and ``?transport=tcp`` are refused rather than silently ignored."""
    body = text.strip()
    if not body.lower().startswith("turn:"):
        raise ValueError(f"Invalid TURN server '{text}'. Expected format: turn:HOST:PORT")
    body = body[5:]
    body, _, query = body.partition("?")
    if query and query.lower() != "transport=udp":
        raise ValueError(f"Invalid TURN server '{text}': only UDP transport is supported")
    if body.startswith("["):
        host, sep, rest = body[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"Invalid TURN server '{text}'. Expected format: turn:HOST:PORT")
        port_text = rest[1:] if rest else "3478"
    elif body.count(":") == 1:
        host, port_text = body.split(":")
    elif ":" not in body:
        host, port_text = body, "3478"
    else:
        raise ValueError(f"Invalid TURN server '{text}': put IPv6 addresses in brackets")
    if not host or not port_text.isdigit() or not 0 < int(port_text) <= 0xFFFF:
        raise ValueError(f"Invalid TURN server '{text}'. Expected format: turn:HOST:PORT")
    return host, int(port_text)


@attrs.frozen
class TurnServer:
    """One configured server, already resolved to an address. The password is kept out of every repr."""

    address: Address
    username: str
    password: str = attrs.field(repr=False)


@attrs.frozen
class TurnTiming:
    """Seconds. Retransmission as RFC 8489 6.2.1 (RTO doubling, Rc sends); refresh margins per RFC 8656."""

    initial_rto: float = 0.5
    max_rto: float = 3.0
    max_retransmits: int = 6
    lifetime: int = 600
    #: refresh the allocation this long before it would expire (never earlier than half its lifetime)
    refresh_margin: float = 60.0
    permission_refresh: float = 240.0
    channel_refresh: float = 540.0


# ---------------------------------------------------------------------------------------------------- events


@attrs.frozen
class Allocated:
    """The server gave us ``relayed`` (the relay candidate) and saw us at ``mapped`` (a server-reflexive one)."""

    relayed: Address
    mapped: Address | None
    lifetime: int


@attrs.frozen
class AllocationFailed:
    """No allocation: wrong credentials, server refusal or silence. ``reason`` is fit for a log line."""

    reason: str


@attrs.frozen
class AllocationLost:
    """An allocation we had could not be refreshed; the relayed address is gone."""

    reason: str


@attrs.frozen
class DataReceived:
    """A datagram ``peer`` sent to our relayed address (unwrapped from ChannelData or a Data indication)."""

    peer: Address
    data: bytes


TurnEvent = Allocated | AllocationFailed | AllocationLost | DataReceived


class TurnState(enum.Enum):
    NEW = "new"
    ALLOCATING = "allocating"
    ALLOCATED = "allocated"
    FAILED = "failed"
    CLOSED = "closed"


class _Kind(enum.Enum):
    ALLOCATE = stun.Method.ALLOCATE
    REFRESH = stun.Method.REFRESH
    PERMISSION = stun.Method.CREATE_PERMISSION
    CHANNEL = stun.Method.CHANNEL_BIND


@attrs.define(eq=False)
class _Request:
    kind: _Kind
    tid: bytes
    data: bytes
    attributes: tuple[tuple[int, object], ...]
    rto: float
    sends_left: int
    next_send: float | None
    expires: float
    auth_retries: int = 0
    #: PERMISSION: the peer IP; CHANNEL: (peer, channel)
    subject: object = None


@attrs.define(eq=False)
class _Permission:
    ip: str
    confirmed: bool = False
    refresh_at: float = 0.0
    in_flight: bool = False
    pending: list[tuple[Address, bytes]] = attrs.Factory(list)


@attrs.define(eq=False)
class _Channel:
    number: int
    peer: Address
    confirmed: bool = False
    refresh_at: float = 0.0
    in_flight: bool = False


class TurnClient:
    """See the module docstring."""

    def __init__(
        self,
        *,
        server: TurnServer,
        base: Address,
        rng: Callable[[int], bytes],
        timing: TurnTiming = TurnTiming(),
        software: str | None = None,
    ) -> None:
        self.server = server.address
        self.base = base
        self._username = server.username
        self._password = server.password
        self._rng = rng
        self.timing = timing
        self._software = software
        self.state = TurnState.NEW
        self.relayed: Address | None = None
        self.mapped: Address | None = None
        self.lifetime = 0
        self._realm: str | None = None
        self._nonce: str | None = None
        self._key: bytes | None = None
        self._requests: dict[bytes, _Request] = {}
        self._outbox: list[Transmit] = []
        self._events: deque[TurnEvent] = deque()
        self._refresh_at: float | None = None
        self._expires_at: float | None = None
        self._permissions: dict[str, _Permission] = {}
        self._channels_by_peer: dict[Address, _Channel] = {}
        self._channels_by_number: dict[int, _Channel] = {}
        self._next_channel = CHANNEL_MIN
        self._now = float("-inf")

    # ------------------------------------------------------------------------------------------ commands

    def allocate(self, now: float) -> None:
        if self.state is not TurnState.NEW:
            raise LocalProtocolError("allocate() may be called once")
        self.state = TurnState.ALLOCATING
        self._now = max(self._now, now)
        self._request(_Kind.ALLOCATE, (
            (stun.Attr.REQUESTED_TRANSPORT, UDP_TRANSPORT),
            (stun.Attr.LIFETIME, self.timing.lifetime),
        ), now, authenticated=False)

    def permit(self, ip: str, now: float) -> None:
        """Install (and keep refreshing) a permission for ``ip``, so its datagrams reach us through the relay."""
        if self.state is not TurnState.ALLOCATED:
            return
        ip = _canonical(ip)
        if ip is None or self._family_mismatch(ip) or ip in self._permissions:
            return
        if len(self._permissions) >= MAX_PEERS:
            return
        perm = _Permission(ip)
        self._permissions[ip] = perm
        self._send_permission(perm, now)

    def send(self, peer: Address, data: bytes, now: float) -> Transmit | None:
        """Wrap ``data`` for ``peer``: ChannelData when a channel is confirmed, else a Send indication.

        Returns the datagram to send from ``base`` to the server at once (None when it must wait for a
        permission, or the client is not usable). Also starts the permission and the channel for ``peer``."""
        if self.state is not TurnState.ALLOCATED:
            return None
        self._now = max(self._now, now)
        channel = self._channels_by_peer.get(peer)
        if channel is not None and channel.confirmed:
            return Transmit(stun.encode_channel_data(channel.number, data), self.base, self.server)
        ip = _canonical(peer[0])
        if ip is None or self._family_mismatch(ip):
            return None
        peer = (ip, peer[1])
        perm = self._permissions.get(ip)
        if perm is None:
            self.permit(ip, now)
            perm = self._permissions.get(ip)
            if perm is None:
                return None
        if channel is None:
            self._bind_channel(peer, now)
        if not perm.confirmed:
            if len(perm.pending) < PENDING_LIMIT:
                perm.pending.append((peer, bytes(data)))
            return None
        return Transmit(self._send_indication(peer, data), self.base, self.server)

    def close(self, now: float) -> None:
        """Release the allocation (Refresh with LIFETIME 0, sent once) and stop; a closed client sends nothing."""
        if self.state is TurnState.ALLOCATED and self._key is not None:
            msg = self._message(stun.Method.REFRESH, ((stun.Attr.LIFETIME, 0),), authenticated=True)
            self._outbox.append(Transmit(self._encode(msg, True), self.base, self.server))
        if self.state not in (TurnState.FAILED,):
            self.state = TurnState.CLOSED
        self._requests.clear()
        self._refresh_at = None

    # ------------------------------------------------------------------------------------------ outputs

    def datagrams_to_send(self, now: float) -> list[Transmit]:
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> TurnEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        if self.state in (TurnState.FAILED, TurnState.CLOSED, TurnState.NEW):
            return None
        times = [r.next_send if r.next_send is not None else r.expires for r in self._requests.values()]
        if self._refresh_at is not None:
            times.append(self._refresh_at)
        for perm in self._permissions.values():
            if perm.confirmed and not perm.in_flight:
                times.append(perm.refresh_at)
        for channel in self._channels_by_peer.values():
            if channel.confirmed and not channel.in_flight:
                times.append(channel.refresh_at)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        if self.state in (TurnState.FAILED, TurnState.CLOSED, TurnState.NEW):
            return
        self._now = max(self._now, now)
        for req in list(self._requests.values()):
            if req.next_send is not None and now >= req.next_send:
                req.sends_left -= 1
                req.rto = min(req.rto * 2, self.timing.max_rto)
                req.expires = now + req.rto
                req.next_send = req.expires if req.sends_left > 0 else None
                self._outbox.append(Transmit(req.data, self.base, self.server))
            elif req.next_send is None and now >= req.expires:
                del self._requests[req.tid]
                self._on_failure(req, "no response", now)
                if self.state in (TurnState.FAILED, TurnState.CLOSED):
                    return
        if self.state is not TurnState.ALLOCATED:
            return
        if self._refresh_at is not None and now >= self._refresh_at:
            self._refresh_at = None
            self._request(_Kind.REFRESH, ((stun.Attr.LIFETIME, self.timing.lifetime),), now)
        for perm in self._permissions.values():
            if perm.confirmed and not perm.in_flight and now >= perm.refresh_at:
                self._send_permission(perm, now)
        for channel in self._channels_by_peer.values():
            if channel.confirmed and not channel.in_flight and now >= channel.refresh_at:
                self._send_channel_bind(channel, now)

    # ------------------------------------------------------------------------------------------ input

    def receive_datagram(self, data: bytes, now: float) -> None:
        """A datagram the base socket received from the server: a response, a Data indication or ChannelData."""
        if self.state in (TurnState.FAILED, TurnState.CLOSED, TurnState.NEW):
            return
        self._now = max(self._now, now)
        if is_channel_data(data):
            try:
                number, payload = stun.decode_channel_data(data)
            except stun.StunError:
                return
            channel = self._channels_by_number.get(number)
            if channel is not None:
                self._events.append(DataReceived(channel.peer, payload))
            return
        if not stun.is_stun(data):
            return
        try:
            msg = stun.decode(data)
        except stun.StunError:
            return
        if msg.message_class == stun.MessageClass.INDICATION:
            if msg.method == stun.Method.DATA:
                peer = msg.get(stun.Attr.XOR_PEER_ADDRESS)
                payload = msg.get(stun.Attr.DATA)
                if isinstance(peer, tuple) and isinstance(payload, bytes):
                    self._events.append(DataReceived(peer, payload))
            return
        if msg.message_class in (stun.MessageClass.SUCCESS, stun.MessageClass.ERROR):
            req = self._requests.get(msg.transaction_id)
            if req is None or msg.method != req.kind.value:
                return
            self._on_response(req, msg, now)

    # ------------------------------------------------------------------------------------------ requests

    def _message(self, method: int, attributes: tuple[tuple[int, object], ...], authenticated: bool,
                 tid: bytes | None = None) -> stun.StunMessage:
        attrs_out = list(attributes)
        if authenticated:
            assert self._realm is not None and self._nonce is not None
            attrs_out += [
                (stun.Attr.USERNAME, self._username),
                (stun.Attr.REALM, self._realm),
                (stun.Attr.NONCE, self._nonce),
            ]
        if self._software:
            attrs_out.append((stun.Attr.SOFTWARE, self._software))
        return stun.StunMessage(
            method=method,
            message_class=stun.MessageClass.REQUEST,
            transaction_id=tid if tid is not None else stun.transaction_id(self._rng),
            attributes=tuple(attrs_out),
        )

    def _encode(self, msg: stun.StunMessage, authenticated: bool) -> bytes:
        return stun.encode(msg, integrity_key=self._key if authenticated else None, fingerprint=True)

    def _request(self, kind: _Kind, attributes: tuple[tuple[int, object], ...], now: float, *,
                 authenticated: bool = True, auth_retries: int = 0, subject: object = None) -> _Request:
        msg = self._message(kind.value, attributes, authenticated)
        data = self._encode(msg, authenticated)
        req = _Request(
            kind=kind, tid=msg.transaction_id, data=data, attributes=attributes, rto=self.timing.initial_rto,
            sends_left=self.timing.max_retransmits, next_send=now + self.timing.initial_rto,
            expires=now + self.timing.initial_rto, auth_retries=auth_retries, subject=subject,
        )
        self._requests[req.tid] = req
        self._outbox.append(Transmit(data, self.base, self.server))
        return req

    def _on_response(self, req: _Request, msg: stun.StunMessage, now: float) -> None:
        if self._key is not None and not msg.check_integrity(self._key):
            # RFC 8489 9.2.5: once we authenticate, unsigned or forged responses are as if never received,
            # except the 401/438 challenges, which cannot be signed with a key the server says is stale.
            error = msg.get(stun.Attr.ERROR_CODE)
            if not (msg.message_class == stun.MessageClass.ERROR and isinstance(error, stun.ErrorCode)
                    and error.code in (401, 438)):
                return
        del self._requests[req.tid]
        if msg.message_class == stun.MessageClass.SUCCESS:
            self._on_success(req, msg, now)
            return
        error = msg.get(stun.Attr.ERROR_CODE)
        code = error.code if isinstance(error, stun.ErrorCode) else 0
        reason = error.reason if isinstance(error, stun.ErrorCode) else ""
        if code in (401, 438) and req.auth_retries < MAX_AUTH_RETRIES:
            realm = msg.get(stun.Attr.REALM)
            nonce = msg.get(stun.Attr.NONCE)
            if isinstance(nonce, str) and (isinstance(realm, str) or self._realm is not None):
                first_challenge = self._key is None
                if code == 401 and not first_challenge:
                    # Our key was already in use and still refused: the credentials are wrong.
                    self._on_failure(req, f"credentials refused ({code} {reason})".strip(), now)
                    return
                if isinstance(realm, str):
                    self._realm = realm
                self._nonce = nonce
                assert self._realm is not None
                self._key = stun.long_term_key(self._username, self._realm, self._password)
                self._request(req.kind, req.attributes, now, auth_retries=req.auth_retries + 1,
                              subject=req.subject)
                return
        self._on_failure(req, f"{req.kind.name.lower()} failed: {code} {reason}".strip(), now)

    def _on_success(self, req: _Request, msg: stun.StunMessage, now: float) -> None:
        if req.kind is _Kind.ALLOCATE:
            relayed = msg.get(stun.Attr.XOR_RELAYED_ADDRESS)
            if not isinstance(relayed, tuple):
                self._fail("allocate response without XOR-RELAYED-ADDRESS")
                return
            mapped = msg.get(stun.Attr.XOR_MAPPED_ADDRESS)
            lifetime = msg.get(stun.Attr.LIFETIME)
            self.relayed = relayed
            self.mapped = mapped if isinstance(mapped, tuple) else None
            self.lifetime = lifetime if isinstance(lifetime, int) else self.timing.lifetime
            self.state = TurnState.ALLOCATED
            self._schedule_refresh(now)
            self._events.append(Allocated(relayed=relayed, mapped=self.mapped, lifetime=self.lifetime))
        elif req.kind is _Kind.REFRESH:
            lifetime = msg.get(stun.Attr.LIFETIME)
            if isinstance(lifetime, int):
                self.lifetime = lifetime
            self._schedule_refresh(now)
        elif req.kind is _Kind.PERMISSION:
            perm = self._permissions.get(str(req.subject))
            if perm is None:
                return
            perm.in_flight = False
            perm.confirmed = True
            perm.refresh_at = now + self.timing.permission_refresh
            pending, perm.pending = perm.pending, []
            for peer, data in pending:
                self._outbox.append(Transmit(self._send_indication(peer, data), self.base, self.server))
        elif req.kind is _Kind.CHANNEL:
            peer = req.subject
            channel = self._channels_by_peer.get(peer)  # type: ignore[arg-type]
            if channel is None:
                return
            channel.in_flight = False
            channel.confirmed = True
            channel.refresh_at = now + self.timing.channel_refresh

    def _on_failure(self, req: _Request, reason: str, now: float) -> None:
        if req.kind is _Kind.ALLOCATE:
            self._fail(reason)
        elif req.kind is _Kind.REFRESH:
            self.state = TurnState.FAILED
            self._requests.clear()
            self._events.append(AllocationLost(reason))
        elif req.kind is _Kind.PERMISSION:
            perm = self._permissions.pop(str(req.subject), None)
            if perm is not None:
                perm.pending.clear()
        elif req.kind is _Kind.CHANNEL:
            # The Send/Data path keeps working without a channel; forget it so a later send may retry.
            channel = self._channels_by_peer.pop(req.subject, None)  # type: ignore[arg-type]
            if channel is not None:
                self._channels_by_number.pop(channel.number, None)

    def _fail(self, reason: str) -> None:
        self.state = TurnState.FAILED
        self._requests.clear()
        self._events.append(AllocationFailed(reason))

    def _schedule_refresh(self, now: float) -> None:
        margin = min(self.timing.refresh_margin, self.lifetime / 2)
        self._refresh_at = now + max(self.lifetime - margin, 1.0)

    def _send_permission(self, perm: _Permission, now: float) -> None:
        perm.in_flight = True
        self._request(_Kind.PERMISSION, ((stun.Attr.XOR_PEER_ADDRESS, (perm.ip, 0)),), now, subject=perm.ip)

    def _bind_channel(self, peer: Address, now: float) -> None:
        if self._next_channel > CHANNEL_MAX or len(self._channels_by_peer) >= MAX_PEERS:
            return
        channel = _Channel(number=self._next_channel, peer=peer)
        self._next_channel += 1
        self._channels_by_peer[peer] = channel
        self._channels_by_number[channel.number] = channel
        self._send_channel_bind(channel, now)

    def _send_channel_bind(self, channel: _Channel, now: float) -> None:
        channel.in_flight = True
        self._request(_Kind.CHANNEL, (
            (stun.Attr.CHANNEL_NUMBER, channel.number),
            (stun.Attr.XOR_PEER_ADDRESS, channel.peer),
        ), now, subject=channel.peer)

    def _send_indication(self, peer: Address, data: bytes) -> bytes:
        msg = stun.StunMessage(
            method=stun.Method.SEND,
            message_class=stun.MessageClass.INDICATION,
            transaction_id=stun.transaction_id(self._rng),
            attributes=((stun.Attr.XOR_PEER_ADDRESS, peer), (stun.Attr.DATA, bytes(data))),
        )
        return stun.encode(msg)

    def _family_mismatch(self, ip: str) -> bool:
        if self.relayed is None:
            return True
        return (":" in ip) != (":" in self.relayed[0])


def _canonical(ip: str) -> str | None:
    try:
        return ipaddress.ip_address(ip).compressed
    except ValueError:
        return None
