"""The relay server machine with a virtual clock: handshake, policy, forwarding, queues, pings, limits, shutdown."""

from __future__ import annotations

import itertools

from tunnel_core.iroh_relay import RelayPolicy, RelayServer
from tunnel_core.iroh_relay import frames as fr
from tunnel_core.iroh_relay.events import (
    ClientAuthenticated,
    ClientDenied,
    ClientLeft,
    CloseCode,
    CloseConnection,
    OutputReady,
)
from tunnel_core.iroh_relay.handshake import sign_challenge
from tunnel_core.iroh_relay.server import PROTOCOL_V1, choose_subprotocol
from tunnel_core.keys import endpoint_id_from_secret


def counter_rng():
    counter = itertools.count()
    return lambda n: bytes((next(counter) + i) % 256 for i in range(n))


def secret(n: int) -> bytes:
    return bytes([n] * 32)


class Harness:
    def __init__(self, **policy) -> None:
        self.server = RelayServer(rng=counter_rng(), policy=RelayPolicy(**policy))
        self.now = 0.0
        self.events: list = []

    def drain(self) -> list:
        out = []
        while (event := self.server.next_event()) is not None:
            out.append(event)
        self.events.extend(out)
        return out

    def frames(self, conn: int) -> list[fr.Frame]:
        return [fr.decode_frame(data) for data in self.server.take_outgoing(conn)]

    def join(self, key: int, *, token: str | None = None, version: int = 2) -> int:
        conn = self.server.connect(self.now, version=version, token=token)
        (challenge,) = self.frames(conn)
        assert isinstance(challenge, fr.ServerChallenge)
        self.server.receive_frame(conn, fr.encode_frame(sign_challenge(secret(key), challenge)), self.now)
        return conn

    def send(self, conn: int, dst_key: int, data: bytes, *, batch: int | None = None, ecn: int = 0) -> None:
        dst = endpoint_id_from_secret(secret(dst_key))
        frame: fr.Frame = (fr.ClientToRelayDatagram(dst, ecn, data) if batch is None
                           else fr.ClientToRelayDatagramBatch(dst, ecn, batch, data))
        self.server.receive_frame(conn, fr.encode_frame(frame), self.now)

    def closed(self) -> dict[int, CloseConnection]:
        return {e.conn_id: e for e in self.drain() + self.events if isinstance(e, CloseConnection)}


def eid(key: int) -> bytes:
    return endpoint_id_from_secret(secret(key))


def test_subprotocol_negotiation_picks_highest() -> None:
    assert choose_subprotocol(["iroh-relay-v2", " iroh-relay-v1"]) == "iroh-relay-v2"
    assert choose_subprotocol(["iroh-relay-v1"]) == "iroh-relay-v1"
    assert choose_subprotocol(["chat"]) is None


def test_handshake_confirms_and_forwarding_swaps_ids() -> None:
    h = Harness()
    a, b = h.join(1), h.join(2)
    assert h.frames(a) == [fr.ServerConfirmsAuth()] and h.frames(b) == [fr.ServerConfirmsAuth()]
    assert {e.endpoint_id for e in h.drain() if isinstance(e, ClientAuthenticated)} == {eid(1), eid(2)}
    h.send(a, 2, b"quic-packet", ecn=3)
    h.send(a, 2, b"abcdefghij", batch=4, ecn=1)
    assert h.frames(b) == [fr.RelayToClientDatagram(eid(1), 3, b"quic-packet"),
                           fr.RelayToClientDatagramBatch(eid(1), 1, 4, b"abcdefghij")]
    assert h.server.stats.frames_forwarded == 2


def test_output_ready_once_per_empty_to_full_transition() -> None:
    h = Harness()
    a, b = h.join(1), h.join(2)
    h.frames(a), h.frames(b), h.drain()
    for _ in range(3):
        h.send(a, 2, b"x")
    assert [e for e in h.drain() if isinstance(e, OutputReady)] == [OutputReady(b)]


def test_bad_signature_denied() -> None:
    h = Harness()
    conn = h.server.connect(0.0)
    h.frames(conn)
    forged = sign_challenge(secret(1), fr.ServerChallenge(bytes(16)))
    h.server.receive_frame(conn, fr.encode_frame(forged), 0.0)
    out = h.frames(conn)
    assert isinstance(out[0], fr.ServerDeniesAuth)
    assert h.closed()[conn].code is CloseCode.POLICY_VIOLATION


def test_token_and_allowlist() -> None:
    h = Harness(tokens=frozenset({"s3cret"}), allowed_endpoints=frozenset({eid(1), eid(2)}))
    good = h.join(1, token="s3cret")
    wrong = h.join(2, token="nope")
    missing = h.join(2)
    stranger = h.join(3, token="s3cret")
    assert h.frames(good) == [fr.ServerConfirmsAuth()]
    for conn in (wrong, missing, stranger):
        (deny,) = h.frames(conn)
        assert isinstance(deny, fr.ServerDeniesAuth) and "not authorized" in deny.reason
    assert set(h.closed()) == {wrong, missing, stranger}
    assert sum(isinstance(e, ClientDenied) for e in h.events) == 3


def test_token_with_lone_surrogate_is_denied_not_a_crash() -> None:
    # An adapter decoding headers with surrogateescape hands such a token over; it is just a wrong token.
    h = Harness(tokens=frozenset({"s3cret"}))
    odd = h.join(1, token="s3\udcffcret")
    (deny,) = h.frames(odd)
    assert isinstance(deny, fr.ServerDeniesAuth) and "not authorized" in deny.reason


def test_garbage_closes_only_that_client() -> None:
    h = Harness()
    a, b, c = h.join(1), h.join(2), h.join(3)
    h.server.receive_frame(c, b"\xff\xff garbage", 0.0)
    h.server.receive_frame(b, b"\x04" + bytes(33 + fr.MAX_PACKET_SIZE), 0.0)
    closed = h.closed()
    assert set(closed) == {b, c} and all(e.code is CloseCode.PROTOCOL_ERROR for e in closed.values())
    h.frames(a)
    h.send(a, 2, b"to-closed")  # b is gone: dropped, a unaffected
    h.send(a, 1, b"to-self")
    assert h.frames(a) == [fr.RelayToClientDatagram(eid(1), 0, b"to-self")]
    assert h.server.stats.dropped_no_destination == 1


def test_unexpected_frames_close() -> None:
    h = Harness()
    conn = h.server.connect(0.0)
    h.server.receive_frame(conn, fr.encode_frame(fr.Ping(bytes(8))), 0.0)  # before auth
    a = h.join(1)
    h.server.receive_frame(a, fr.encode_frame(fr.RelayToClientDatagram(eid(1), 0, b"x")), 0.0)
    assert set(h.closed()) == {conn, a}


def test_queue_bounded_drop_on_full() -> None:
    h = Harness(queue_depth=8)
    a, b = h.join(1), h.join(2)
    h.frames(b)
    for i in range(50):
        h.send(a, 2, bytes([i]))
    assert h.server.pending(b) == 8
    assert h.server.stats.dropped_queue_full == 42
    assert [f.contents for f in h.frames(b)] == [bytes([i]) for i in range(8)]  # type: ignore[union-attr]
    h.send(a, 2, b"after")
    assert h.frames(b) == [fr.RelayToClientDatagram(eid(1), 0, b"after")]


def test_newest_connection_wins_and_old_is_promoted_back() -> None:
    h = Harness()
    a, old = h.join(1), h.join(2)
    v1_old = h.join(3, version=PROTOCOL_V1)
    h.frames(old), h.frames(v1_old)
    new = h.join(2)
    new_v1 = h.join(3, version=PROTOCOL_V1)
    assert h.frames(old) == [fr.Status(fr.StatusCode.SAME_ENDPOINT_ID_CONNECTED)]
    (health,) = h.frames(v1_old)
    assert isinstance(health, fr.Health) and "same endpoint id" in health.problem
    h.frames(new), h.frames(new_v1)
    h.send(a, 2, b"hi")
    assert h.frames(new) == [fr.RelayToClientDatagram(eid(1), 0, b"hi")] and h.frames(old) == []
    h.server.connection_lost(new, 1.0)
    assert h.frames(old) == [fr.Status(fr.StatusCode.HEALTHY)]
    h.send(a, 2, b"again")
    assert h.frames(old) == [fr.RelayToClientDatagram(eid(1), 0, b"again")]
    assert h.server.active_connection(eid(2)) == old


def test_endpoint_gone_to_peers_it_sent_to() -> None:
    h = Harness()
    a, b, c = h.join(1), h.join(2), h.join(3)
    for conn in (a, b, c):
        h.frames(conn)
    h.send(a, 2, b"x")
    h.frames(b)
    h.server.connection_lost(a, 1.0)
    assert h.frames(b) == [fr.EndpointGone(eid(1))]
    assert h.frames(c) == []
    assert any(isinstance(e, ClientLeft) and e.endpoint_id == eid(1) for e in h.drain())


def test_ping_pong_and_timeout() -> None:
    h = Harness(ping_interval=15.0, pong_timeout=5.0)
    a = h.join(1)
    h.frames(a)
    timer = h.server.get_timer()
    assert timer is not None and 16.0 <= timer <= 20.0
    h.server.handle_timer(timer)
    (ping,) = h.frames(a)
    assert isinstance(ping, fr.Ping)
    h.server.receive_frame(a, fr.encode_frame(fr.Pong(ping.data)), timer + 0.1)
    timer2 = h.server.get_timer()
    assert timer2 is not None and timer2 >= timer + 16
    h.server.handle_timer(timer2)
    h.frames(a)
    h.server.handle_timer(timer2 + 5.0)
    assert h.closed()[a].reason == "ping timeout"
    assert h.server.stats.ping_timeouts == 1


def test_client_ping_answered_and_traffic_postpones_server_ping() -> None:
    h = Harness()
    a = h.join(1)
    h.frames(a)
    h.server.receive_frame(a, fr.encode_frame(fr.Ping(b"12345678")), 10.0)
    assert h.frames(a) == [fr.Pong(b"12345678")]
    first = h.server.get_timer()
    assert first is not None
    h.server.handle_timer(first)
    assert h.frames(a) == []  # activity at t=10 moved the ping later
    later = h.server.get_timer()
    assert later is not None and later > first


def test_handshake_timeout() -> None:
    h = Harness(auth_timeout=10.0)
    conn = h.server.connect(0.0)
    h.server.handle_timer(10.0)
    assert h.closed()[conn].reason == "handshake timed out"


def test_rate_limit_pauses_reading_and_notifies_once() -> None:
    h = Harness(rate_limit=100_000, rate_burst=1)
    a, b = h.join(1), h.join(2)
    h.frames(a)
    chunk = bytes(60_000)
    for _ in range(20):  # 1.2 MB at t=0 against a 1 MiB bucket
        h.send(a, 2, chunk)
    pause = h.server.read_pause(a, 0.0)
    assert 0.5 < pause < 3.0
    assert h.frames(a) == [fr.Status(fr.StatusCode.RATE_LIMITED)]
    h.send(a, 2, chunk)
    assert h.frames(a) == []
    assert h.server.read_pause(a, 100.0) == 0.0
    assert h.server.read_pause(b, 0.0) == 0.0


def test_bytes_outside_relay_frames_count_against_the_rate_limit() -> None:
    """Issue 18 item 5: WebSocket pings (answered by the adapter's WebSocket layer) are charged too."""
    h = Harness(rate_limit=100_000, rate_burst=1)
    a, b = h.join(1), h.join(2)
    h.frames(a)
    for _ in range(10_000):  # 1.27 MB of 127-byte pings at t=0 against a 1 MiB bucket
        h.server.charge(a, 127, 0.0)
    assert 0.5 < h.server.read_pause(a, 0.0) < 3.0
    assert h.frames(a) == [fr.Status(fr.StatusCode.RATE_LIMITED)]
    assert h.server.read_pause(b, 0.0) == 0.0
    h.server.charge(99, 10**9, 0.0)  # an unknown connection is ignored
    assert Harness().server.read_pause(a, 0.0) == 0.0  # no limit, nothing to charge


def test_shutdown_sends_restarting_and_closes_all() -> None:
    h = Harness(restart_reconnect_in_ms=1500, restart_try_for_ms=4000)
    a, b = h.join(1), h.join(2)
    pending = h.server.connect(0.0)
    h.frames(a), h.frames(b), h.frames(pending)
    h.server.shutdown(1.0)
    assert h.frames(a) == [fr.Restarting(1500, 4000)] and h.frames(b) == [fr.Restarting(1500, 4000)]
    closed = h.closed()
    assert set(closed) == {a, b, pending} and closed[a].code is CloseCode.GOING_AWAY
    late = h.server.connect(2.0)
    assert late in h.closed()
