"""The relay server as a sans-IO machine: handshake, registry, forwarding, queues, pings, rate limits, shutdown.

The adapter owns sockets, HTTP and WebSocket framing; it hands this machine one binary message at a time and
carries out its events. Keeping the policy here means every decision a real iroh client depends on (who gets
which datagram, when a connection is replaced, when a peer is gone) is testable with a virtual clock and no
network, and the same machine can serve any runtime.

Behaviour follows iroh-relay 1.x (``server/clients.rs``, ``server/client.rs``):

* a connection gets a 16-byte challenge; a valid ``ClientAuth`` plus the access policy (Bearer token, endpoint
  allow-list) decide between ``ServerConfirmsAuth`` and ``ServerDeniesAuth``;
* datagram frames are forwarded byte for byte with the destination id replaced by the source id (4 -> 6,
  5 -> 7); a full destination queue drops the datagram, an unknown destination drops it silently;
* a second connection with the same endpoint id becomes the active one; the older one receives
  ``Status(SameEndpointIdConnected)`` (``Health`` text for v1) and stays connected but receives nothing, and is
  promoted back (``Status(Healthy)``) if the newer one leaves first;
* when an id's last connection leaves, every peer it had sent datagrams to receives ``EndpointGone``;
* pings every ``ping_interval`` + 1..5 s of jitter after the last received frame, closed after ``pong_timeout``;
* an optional token bucket on the bytes a client sends, with a one-off ``Status(RateLimited)``;
* ``shutdown`` queues ``Restarting`` to everyone and closes them.
"""

from __future__ import annotations

import enum
import hmac
from collections import deque
from collections.abc import Callable

import attrs

from tunnel_core.errors import LocalProtocolError
from tunnel_core.iroh_relay import frames as fr
from tunnel_core.iroh_relay.config import RelayPolicy
from tunnel_core.iroh_relay.events import (
    ClientAuthenticated,
    ClientDenied,
    ClientLeft,
    CloseCode,
    CloseConnection,
    Event,
    OutputReady,
)
from tunnel_core.iroh_relay.handshake import new_challenge, verify_client_auth

__all__ = ["PROTOCOL_V1", "PROTOCOL_V2", "SUBPROTOCOLS", "RelayServer", "RelayStats", "choose_subprotocol"]

PROTOCOL_V1 = 1
PROTOCOL_V2 = 2
#: WebSocket subprotocol names, highest first: the server picks the highest one the client offers.
SUBPROTOCOLS: dict[str, int] = {"iroh-relay-v2": PROTOCOL_V2, "iroh-relay-v1": PROTOCOL_V1}
#: Control frames (pong, status, gone, restarting) may exceed the datagram depth by this much, so a client that
#: stops reading still learns why it is being closed, while a ping flood still cannot grow the queue forever.
CONTROL_HEADROOM = 64


def choose_subprotocol(offered: list[str]) -> str | None:
    """The highest relay protocol version in the client's ``Sec-WebSocket-Protocol`` list, or None."""
    wanted = {name.strip() for name in offered}
    for name in SUBPROTOCOLS:
        if name in wanted:
            return name
    return None


class _State(enum.Enum):
    AUTHENTICATING = "authenticating"
    ACTIVE = "active"
    CLOSING = "closing"


@attrs.define
class RelayStats:
    """Counters for /healthz, logs and tests."""

    connections: int = 0
    clients_accepted: int = 0
    clients_denied: int = 0
    frames_forwarded: int = 0
    bytes_forwarded: int = 0
    dropped_no_destination: int = 0
    dropped_queue_full: int = 0
    protocol_errors: int = 0
    ping_timeouts: int = 0
    rate_limited: int = 0


@attrs.define(eq=False)
class _Client:
    conn_id: int
    version: int
    token: str | None
    challenge: fr.ServerChallenge
    state: _State = _State.AUTHENTICATING
    endpoint_id: bytes | None = None
    queue: deque[bytes] = attrs.Factory(deque)
    deadline: float | None = None  # auth deadline, next ping, or pong deadline (whichever applies)
    ping_data: bytes | None = None
    last_activity: float = 0.0
    tokens: float = 0.0
    refilled_at: float = 0.0
    rate_notified: bool = False


class RelayServer:
    """One relay's worth of clients. Connection ids are chosen here and never reused."""

    def __init__(self, *, rng: Callable[[int], bytes], policy: RelayPolicy | None = None) -> None:
        self._rng = rng
        self.policy = policy if policy is not None else RelayPolicy()
        if self.policy.queue_depth < 1:
            raise LocalProtocolError("queue_depth must be at least 1")
        burst = self.policy.rate_burst or 0
        self._burst = float(max(burst, fr.MAX_FRAME_SIZE, self.policy.rate_limit or 0))
        self._clients: dict[int, _Client] = {}
        #: endpoint id -> connection ids, oldest first; the last one is the active connection.
        self._by_id: dict[bytes, list[int]] = {}
        #: endpoint id -> ids it has sent datagrams to (told EndpointGone when it leaves).
        self._sent_to: dict[bytes, set[bytes]] = {}
        self._events: deque[Event] = deque()
        self._next_conn = 1
        self._shutting_down = False
        self.stats = RelayStats()

    # ------------------------------------------------------------------------------------------ adapter inputs

    def connect(self, now: float, *, version: int = PROTOCOL_V2, token: str | None = None) -> int:
        """A WebSocket was accepted with relay protocol ``version`` and this Bearer token; the challenge is queued."""
        if version not in (PROTOCOL_V1, PROTOCOL_V2):
            raise LocalProtocolError(f"unknown relay protocol version {version}")
        conn_id = self._next_conn
        self._next_conn += 1
        client = _Client(conn_id=conn_id, version=version, token=token, challenge=new_challenge(self._rng))
        client.deadline = now + self.policy.auth_timeout
        client.last_activity = now
        client.tokens = self._burst
        client.refilled_at = now
        self._clients[conn_id] = client
        self.stats.connections += 1
        if self._shutting_down:
            self._close(client, CloseCode.GOING_AWAY, "relay is shutting down")
        else:
            self._push(client, fr.encode_frame(client.challenge), control=True)
        return conn_id

    def receive_frame(self, conn_id: int, data: bytes, now: float) -> None:
        """One binary WebSocket message from the client. Bad input closes only this client (CloseConnection)."""
        client = self._clients.get(conn_id)
        if client is None or client.state is _State.CLOSING:
            return
        client.last_activity = now
        if self.policy.rate_limit is not None:
            self._charge(client, len(data), now)
        try:
            if client.state is _State.AUTHENTICATING:
                self._handle_auth(client, data, now)
                return
            if data and data[0] in (fr.FrameType.CLIENT_TO_RELAY_DATAGRAM, fr.FrameType.CLIENT_TO_RELAY_DATAGRAM_BATCH):
                dst, out = fr.forward_datagram(data, client.endpoint_id)  # type: ignore[arg-type]
                self._forward(client, dst, out)
                return
            frame = fr.decode_frame(data)
        except fr.FrameError as exc:
            self.stats.protocol_errors += 1
            self._close(client, CloseCode.PROTOCOL_ERROR, str(exc))
            return
        if isinstance(frame, fr.Ping):
            self._push(client, fr.encode_frame(fr.Pong(frame.data)), control=True)
        elif isinstance(frame, fr.Pong):
            if client.ping_data is not None and frame.data == client.ping_data:
                client.ping_data = None
                client.deadline = now + self._ping_period()
        elif isinstance(frame, fr.ClientToRelayDatagram | fr.ClientToRelayDatagramBatch):
            # A non-canonical (multi-byte) varint type: rare but legal, so re-encode and forward normally.
            canonical = fr.encode_frame(frame)
            dst, out = fr.forward_datagram(canonical, client.endpoint_id)  # type: ignore[arg-type]
            self._forward(client, dst, out)
        else:
            self.stats.protocol_errors += 1
            self._close(client, CloseCode.PROTOCOL_ERROR, f"unexpected frame from client: {type(frame).__name__}")

    def connection_lost(self, conn_id: int, now: float, reason: str = "connection closed") -> None:
        """The transport is gone (client closed, reset, or we finished closing it). Safe to call twice."""
        client = self._clients.pop(conn_id, None)
        if client is None:
            return
        if client.state is not _State.CLOSING:
            self._unregister(client, reason)

    def take_outgoing(self, conn_id: int, limit: int | None = None) -> list[bytes]:
        """Frames to write to this client now, oldest first. Call when its transport can take more."""
        client = self._clients.get(conn_id)
        if client is None or not client.queue:
            return []
        queue = client.queue
        if limit is None or limit >= len(queue):
            out = list(queue)
            queue.clear()
            return out
        return [queue.popleft() for _ in range(limit)]

    def pending(self, conn_id: int) -> int:
        client = self._clients.get(conn_id)
        return len(client.queue) if client is not None else 0

    def charge(self, conn_id: int, size: int, now: float) -> None:
        """Count ``size`` bytes the client sent outside relay frames (WebSocket pings, pongs, text) against its rate
        limit: issue 18 item 5, a client flooding WebSocket pings got past ``--rate-limit``."""
        client = self._clients.get(conn_id)
        if client is not None and client.state is not _State.CLOSING and self.policy.rate_limit is not None:
            self._charge(client, size, now)

    def read_pause(self, conn_id: int, now: float) -> float:
        """Seconds the adapter should stop reading this client to honour the rate limit (0 = keep reading)."""
        client = self._clients.get(conn_id)
        if client is None or self.policy.rate_limit is None:
            return 0.0
        self._refill(client, now)
        if client.tokens >= 0:
            return 0.0
        return -client.tokens / self.policy.rate_limit

    def shutdown(self, now: float) -> None:
        """Tell every client to come back later (``Restarting``) and close them all."""
        self._shutting_down = True
        restart = fr.encode_frame(fr.Restarting(self.policy.restart_reconnect_in_ms, self.policy.restart_try_for_ms))
        for client in list(self._clients.values()):
            if client.state is _State.ACTIVE:
                self._push(client, restart, control=True)
            if client.state is not _State.CLOSING:
                self._close(client, CloseCode.GOING_AWAY, "relay is shutting down")

    def get_timer(self) -> float | None:
        deadlines = [c.deadline for c in self._clients.values() if c.deadline is not None]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        for client in list(self._clients.values()):
            if client.deadline is None or client.deadline > now:
                continue
            if client.state is _State.AUTHENTICATING:
                self._close(client, CloseCode.POLICY_VIOLATION, "handshake timed out")
            elif client.ping_data is not None:
                self.stats.ping_timeouts += 1
                self._close(client, CloseCode.GOING_AWAY, "ping timeout")
            elif now - client.last_activity < self.policy.ping_interval:
                # Traffic arrived since the timer was set; iroh resets the ping interval on every frame.
                client.deadline = client.last_activity + self._ping_period()
            else:
                client.ping_data = self._rng(fr.PING_LEN)
                client.deadline = now + self.policy.pong_timeout
                self._push(client, fr.encode_frame(fr.Ping(client.ping_data)), control=True)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def endpoint_of(self, conn_id: int) -> bytes | None:
        client = self._clients.get(conn_id)
        return client.endpoint_id if client is not None else None

    def active_connection(self, endpoint_id: bytes) -> int | None:
        conns = self._by_id.get(endpoint_id)
        return conns[-1] if conns else None

    @property
    def client_count(self) -> int:
        return len(self._by_id)

    # ------------------------------------------------------------------------------------------ internals

    def _ping_period(self) -> float:
        return self.policy.ping_interval + 1 + self._rng(1)[0] % 5  # iroh: interval + 1..=5 s

    def _handle_auth(self, client: _Client, data: bytes, now: float) -> None:
        frame = fr.decode_frame(data)
        if not isinstance(frame, fr.ClientAuth):
            raise fr.FrameError(f"Unexpected frame during handshake: {type(frame).__name__}")
        if not verify_client_auth(client.challenge, frame):
            self._deny(client, None, "signature invalid")
            return
        endpoint_id = frame.public_key
        if self.policy.tokens and not self._token_ok(client.token):
            self._deny(client, endpoint_id, "not authorized: missing or wrong token")
            return
        allowed = self.policy.allowed_endpoints
        if allowed is not None and endpoint_id not in allowed:
            self._deny(client, endpoint_id, "not authorized: endpoint not allowed")
            return
        self._push(client, fr.encode_frame(fr.ServerConfirmsAuth()), control=True)
        client.state = _State.ACTIVE
        client.endpoint_id = endpoint_id
        client.deadline = now + self._ping_period()
        conns = self._by_id.setdefault(endpoint_id, [])
        if conns:
            self._send_status(self._clients[conns[-1]], fr.StatusCode.SAME_ENDPOINT_ID_CONNECTED)
        conns.append(client.conn_id)
        self.stats.clients_accepted += 1
        self._events.append(ClientAuthenticated(client.conn_id, endpoint_id, client.version))

    def _token_ok(self, token: str | None) -> bool:
        if token is None:
            return False
        # surrogateescape: whatever an adapter decoded the header with, a strange token is a wrong token, not a crash.
        given = token.encode("utf-8", "surrogateescape")
        # Compare against every token without stopping early, so timing reveals nothing about which is close.
        return any([hmac.compare_digest(given, t.encode()) for t in self.policy.tokens])

    def _deny(self, client: _Client, endpoint_id: bytes | None, reason: str) -> None:
        self.stats.clients_denied += 1
        self._push(client, fr.encode_frame(fr.ServerDeniesAuth(reason)), control=True)
        self._events.append(ClientDenied(client.conn_id, endpoint_id, reason))
        self._close(client, CloseCode.POLICY_VIOLATION, reason)

    def _send_status(self, client: _Client, code: fr.StatusCode) -> None:
        if client.version >= PROTOCOL_V2:
            frame: fr.Frame = fr.Status(int(code))
        else:
            frame = fr.Health(fr.STATUS_TEXT[code])
        self._push(client, fr.encode_frame(frame), control=True)

    def _forward(self, client: _Client, dst: bytes, out: bytes) -> None:
        conns = self._by_id.get(dst)
        if not conns:
            self.stats.dropped_no_destination += 1
            return
        target = self._clients[conns[-1]]
        if self._push(target, out, control=False):
            self.stats.frames_forwarded += 1
            self.stats.bytes_forwarded += len(out)
            src = client.endpoint_id
            assert src is not None
            peers = self._sent_to.get(src)
            if peers is None:
                self._sent_to[src] = {dst}
            elif dst not in peers:
                peers.add(dst)
        else:
            self.stats.dropped_queue_full += 1

    def _push(self, client: _Client, data: bytes, *, control: bool) -> bool:
        if client.state is _State.CLOSING:
            return False
        queue = client.queue
        limit = self.policy.queue_depth + (CONTROL_HEADROOM if control else 0)
        if len(queue) >= limit:
            return False
        queue.append(data)
        if len(queue) == 1:
            self._events.append(OutputReady(client.conn_id))
        return True

    def _close(self, client: _Client, code: CloseCode, reason: str) -> None:
        if client.state is _State.CLOSING:
            return
        self._unregister(client, reason)
        client.state = _State.CLOSING
        client.deadline = None
        self._events.append(CloseConnection(client.conn_id, code, reason))

    def _unregister(self, client: _Client, reason: str) -> None:
        endpoint_id = client.endpoint_id
        if client.state is not _State.ACTIVE or endpoint_id is None:
            return
        conns = self._by_id.get(endpoint_id, [])
        was_active = bool(conns) and conns[-1] == client.conn_id
        if client.conn_id in conns:
            conns.remove(client.conn_id)
        self._events.append(ClientLeft(client.conn_id, endpoint_id, reason))
        if conns:
            if was_active:
                promoted = self._clients.get(conns[-1])
                if promoted is not None:
                    self._send_status(promoted, fr.StatusCode.HEALTHY)
            return
        self._by_id.pop(endpoint_id, None)
        gone = fr.encode_frame(fr.EndpointGone(endpoint_id))
        for peer in self._sent_to.pop(endpoint_id, ()):
            peer_conns = self._by_id.get(peer)
            if peer_conns:
                self._push(self._clients[peer_conns[-1]], gone, control=True)

    def _refill(self, client: _Client, now: float) -> None:
        rate = self.policy.rate_limit
        assert rate is not None
        elapsed = now - client.refilled_at
        if elapsed > 0:
            client.tokens = min(self._burst, client.tokens + elapsed * rate)
            client.refilled_at = now

    def _charge(self, client: _Client, size: int, now: float) -> None:
        self._refill(client, now)
        client.tokens -= size
        if client.tokens < 0:
            self.stats.rate_limited += 1
            if not client.rate_notified and client.state is _State.ACTIVE:
                client.rate_notified = True
                self._send_status(client, fr.StatusCode.RATE_LIMITED)
