"""TunnelQuicConnection: pinning (both ways), consumption-based receive credit, keep-alive, send buffer size."""

from __future__ import annotations

import pytest
from aioquic.quic import events as qe

from test_quic_pair import PEER, Pair, cached_identity
from tunnel_core.errors import LocalProtocolError
from tunnel_core.quic import (
    FINGERPRINT_MISMATCH_ERROR,
    FINGERPRINT_MISMATCH_REASON,
    PeerVerificationFailed,
    TunnelQuicConnection,
    make_configuration,
)

# ------------------------------------------------------------------------------------------ server pinning


def _server_sends_half_rtt_data(pair: Pair) -> None:
    """Deliver the client's Initial, then let the server queue stream data before its first flight leaves.

    That data travels in the same flight as the server's handshake, so it reaches the client together with the
    certificate: the worst case for "nothing from an unverified peer surfaces".
    """
    for data, _ in pair.client.datagrams_to_send(pair.now):
        server = pair.server or pair._make_server(data)
        server.receive_datagram(data, PEER, pair.now)
    server = pair.conn("server")
    server.send_stream_data(server.get_next_available_stream_id(), b"secret from server")


def test_pin_accepts_the_expected_server() -> None:
    pair = Pair()
    _server_sends_half_rtt_data(pair)
    pair.run(lambda: pair.has("client", qe.StreamDataReceived))
    assert pair.has("client", qe.HandshakeCompleted)
    assert pair.client.peer_verified
    assert pair.client.peer_fingerprint == pair.server_identity.fingerprint
    assert b"".join(e.data for e in pair.of("client", qe.StreamDataReceived)) == b"secret from server"


def test_pin_mismatch_closes_before_anything_surfaces() -> None:
    pair = Pair(pin_server=cached_identity(1).fingerprint)
    _server_sends_half_rtt_data(pair)
    pair.run(lambda: pair.has("server", qe.ConnectionTerminated) and pair.has("client", qe.ConnectionTerminated))
    client_kinds = [type(e) for e in pair.events["client"]]
    assert client_kinds[0] is PeerVerificationFailed
    assert pair.events["client"][0].reason == FINGERPRINT_MISMATCH_REASON
    assert qe.HandshakeCompleted not in client_kinds
    assert qe.StreamDataReceived not in client_kinds
    assert not pair.client.peer_verified
    (terminated,) = pair.of("server", qe.ConnectionTerminated)
    assert terminated.error_code == FINGERPRINT_MISMATCH_ERROR == 0x12A
    assert terminated.reason_phrase == FINGERPRINT_MISMATCH_REASON


def test_pin_comparison_ignores_case() -> None:
    pair = Pair(pin_server=cached_identity(0).fingerprint.upper())
    pair.handshake()
    assert pair.client.peer_verified


def test_no_pin_means_no_check() -> None:
    pair = Pair(pin_server=None)
    pair.handshake()
    assert pair.client.peer_verified and pair.client.peer_fingerprint == pair.server_identity.fingerprint


# ------------------------------------------------------------------------------------------ mutual pinning


def _client_sends_on_handshake(pair: Pair) -> None:
    """The client writes application data the moment its handshake completes (as a session would)."""

    def on_event(side: str, ev: object) -> None:
        pair.events[side].append(ev)
        if side == "client" and isinstance(ev, qe.HandshakeCompleted):
            pair.client.send_stream_data(pair.client.get_next_available_stream_id(), b"secret from client")

    pair.on_event = on_event


def test_mutual_pinning_accepts_the_expected_client() -> None:
    client_id = cached_identity(2)
    pair = Pair(client_identity=client_id, pin_client=client_id.fingerprint, request_client_certificate=True)
    _client_sends_on_handshake(pair)
    pair.run(lambda: pair.has("server", qe.StreamDataReceived))
    server = pair.conn("server")
    assert server.peer_verified and server.peer_fingerprint == client_id.fingerprint
    assert pair.of("server", qe.StreamDataReceived)[0].data == b"secret from client"


def test_mutual_pinning_rejects_another_client_without_delivering_its_data() -> None:
    pair = Pair(
        client_identity=cached_identity(3),
        pin_client=cached_identity(2).fingerprint,
        request_client_certificate=True,
    )
    _client_sends_on_handshake(pair)
    pair.run(lambda: pair.has("client", qe.ConnectionTerminated) and pair.has("server", qe.ConnectionTerminated))
    server_kinds = [type(e) for e in pair.events["server"]]
    assert server_kinds[0] is PeerVerificationFailed
    assert qe.StreamDataReceived not in server_kinds and qe.HandshakeCompleted not in server_kinds
    (terminated,) = pair.of("client", qe.ConnectionTerminated)
    assert terminated.error_code == FINGERPRINT_MISMATCH_ERROR
    assert terminated.reason_phrase == FINGERPRINT_MISMATCH_REASON


def test_mutual_pinning_rejects_a_client_without_certificate() -> None:
    pair = Pair(pin_client=cached_identity(2).fingerprint, request_client_certificate=True)
    pair.run(lambda: pair.has("server", PeerVerificationFailed))
    assert pair.conn("server").peer_fingerprint is None
    pair.run(lambda: pair.has("client", qe.ConnectionTerminated))


def test_client_certificate_is_not_requested_by_default() -> None:
    pair = Pair(client_identity=cached_identity(2))
    pair.handshake()
    assert pair.conn("server").peer_fingerprint is None


def test_only_a_server_requests_client_certificates() -> None:
    with pytest.raises(LocalProtocolError):
        TunnelQuicConnection(configuration=make_configuration(is_client=True), request_client_certificate=True)


# ------------------------------------------------------------------------------------------ receive credit


WINDOW = 64 * 1024


def _bulk_sender(pair: Pair, total: int) -> tuple[int, list[int]]:
    """The server writes ``total`` bytes on a client-opened stream; returns the stream id and a byte counter."""
    pair.handshake()
    sid = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(sid, b"x")  # reveal the stream to the server
    received = [0]

    def on_event(side: str, ev: object) -> None:
        pair.events[side].append(ev)
        if side == "client" and isinstance(ev, qe.StreamDataReceived):
            received[0] += len(ev.data)

    pair.on_event = on_event
    pair.run(lambda: pair.has("server", qe.StreamDataReceived))
    pair.conn("server").send_stream_data(sid, b"y" * total)
    return sid, received


def test_receive_credit_is_withheld_until_consumed() -> None:
    pair = Pair(window=WINDOW)
    sid, received = _bulk_sender(pair, 10 * WINDOW)
    pair.idle(5.0)
    # Without consumption the server can send exactly one window, however long we wait.
    assert received[0] == WINDOW
    assert pair.client.receive_credit(sid) == WINDOW
    # Less than half a window consumed: no new credit is announced yet (MAX_STREAM_DATA stays rare).
    pair.client.consume(sid, WINDOW // 4)
    pair.idle(2.0)
    assert received[0] == WINDOW
    # Half a window consumed: credit moves to consumed + window.
    pair.client.consume(sid, WINDOW // 4)
    pair.run(lambda: received[0] == WINDOW + WINDOW // 2)
    pair.idle(2.0)
    assert received[0] == WINDOW + WINDOW // 2
    assert pair.client.receive_credit(sid) == pair.client.consumed(sid) + WINDOW


def test_consuming_everything_delivers_everything() -> None:
    pair = Pair(window=WINDOW)
    total = 20 * WINDOW
    sid, received = _bulk_sender(pair, total)
    consumed = 0
    for _ in range(1000):
        if received[0] >= total:
            break
        pair.run(lambda floor=consumed: received[0] > floor)
        assert received[0] <= consumed + WINDOW  # the peer never exceeds the credit
        pair.client.consume(sid, received[0] - consumed)
        consumed = received[0]
    assert received[0] == total


def test_consume_rejects_negative_and_ignores_unknown_streams() -> None:
    pair = Pair()
    with pytest.raises(LocalProtocolError):
        pair.client.consume(0, -1)
    pair.client.consume(0, 0)
    pair.client.consume(400, 10)  # unknown stream: remembered harmlessly
    assert pair.client.receive_credit(400) == 0


# ------------------------------------------------------------------------------------------ keep-alive


def test_keepalive_holds_an_idle_connection_open() -> None:
    pair = Pair(idle_timeout=30.0, keepalive_interval=10.0)
    pair.handshake()
    pair.idle(200.0)
    assert not pair.has("client", qe.ConnectionTerminated) and not pair.has("server", qe.ConnectionTerminated)
    # Keep-alive pings are ours: their acknowledgements are not passed on.
    assert not pair.has("client", qe.PingAcknowledged)


def test_without_keepalive_the_idle_timeout_ends_the_connection() -> None:
    pair = Pair(idle_timeout=30.0, keepalive_interval=None)
    pair.handshake()
    pair.idle(200.0)
    (terminated,) = pair.of("client", qe.ConnectionTerminated)
    assert terminated.reason_phrase == "Idle timeout"


def test_keepalive_is_in_get_timer_and_sends_a_ping() -> None:
    pair = Pair(keepalive_interval=15.0)
    pair.handshake()
    pair.idle(1.0)
    last = pair.now
    timer = pair.client.get_timer()
    assert timer is not None and timer <= last + 15.0
    sent_before = pair.datagrams["client"]
    pair.idle(16.0)
    assert pair.datagrams["client"] > sent_before


def test_user_pings_are_still_reported() -> None:
    pair = Pair()
    pair.handshake()
    pair.client.send_ping(7)
    pair.run(lambda: pair.has("client", qe.PingAcknowledged))
    assert [e.uid for e in pair.of("client", qe.PingAcknowledged)] == [7]


def test_keepalive_interval_must_be_positive() -> None:
    with pytest.raises(LocalProtocolError):
        TunnelQuicConnection(configuration=make_configuration(is_client=True), keepalive_interval=0)


# ------------------------------------------------------------------------------------------ send buffer, streams


def test_send_buffer_size_counts_unacknowledged_bytes() -> None:
    pair = Pair()
    pair.handshake()
    sid = pair.client.get_next_available_stream_id()
    assert pair.client.send_buffer_size(sid) == 0
    pair.client.send_stream_data(sid, b"z" * 100_000)
    assert pair.client.send_buffer_size(sid) == 100_000
    pair.run(lambda: pair.client.send_buffer_size(sid) == 0)
    received = sum(len(e.data) for e in pair.of("server", qe.StreamDataReceived))
    assert received == 100_000
    assert pair.client.send_buffer_size(12345) == 0


def test_unidirectional_streams_are_not_allowed() -> None:
    pair = Pair()
    pair.handshake()
    sid = pair.client.get_next_available_stream_id(is_unidirectional=True)
    pair.client.send_stream_data(sid, b"nope")
    pair.idle(2.0)
    assert not pair.has("server", qe.StreamDataReceived)


def test_get_timer_is_cached_until_the_next_input() -> None:
    """The cache must never hide a timer change: every input clears it (connection.py, get_timer)."""
    from tests.test_quic_pair import Pair

    from tunnel_core.quic.connection import _NO_CACHE

    pair = Pair()
    pair.run(lambda: pair.client.peer_verified and pair.server is not None and pair.server.peer_verified)
    client = pair.client
    first = client.get_timer()
    assert client.get_timer() == first and client._timer_cache == first
    client.send_ping(7)
    assert client._timer_cache is _NO_CACHE  # cleared by the command
    pair.flush()
    fresh = client.get_timer()
    client._timer_cache = -1.0  # a stale value would show
    client.handle_timer(pair.now)
    assert client.get_timer() != -1.0
    client._timer_cache = -1.0
    pair.flush()  # datagrams_to_send and receive_datagram clear it
    assert client.get_timer() != -1.0
    assert fresh is not None


def test_probe_now_forgets_the_backoff_of_a_cut_and_pings_at_once() -> None:
    """After a cut QUIC's probe timeout has doubled many times; probe_now resets it (aioquic 1.7 keeps the count in
    ``_loss._pto_count``, which this test pins) and sends a PING whose acknowledgement is ours, not the user's."""
    pair = Pair()
    pair.handshake()
    stream = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(stream, b"x" * 10_000)
    pair.drop = lambda side, data: True  # the cut
    pair.idle(20.0)
    assert pair.client._loss._pto_count >= 5
    late_probe = pair.client.get_timer()
    assert late_probe is not None and late_probe - pair.now > 5.0
    pair.drop = lambda side, data: False
    sent_before = pair.datagrams["client"]
    pair.client.probe_now(pair.now)
    assert pair.client._loss._pto_count == 0
    pair.flush()
    assert pair.datagrams["client"] > sent_before
    pair.run(lambda: pair.client._loss.bytes_in_flight == 0, max_time=2.0)
    assert not pair.has("client", qe.PingAcknowledged)


def test_probe_now_does_nothing_before_the_handshake_or_after_close() -> None:
    pair = Pair()
    pair.client.probe_now(pair.now)  # the Initial is in flight, nothing is established: no PING
    assert not pair.client._keepalive_uids
    done = Pair()
    done.handshake()
    done.client.close()
    done.idle(5.0)
    sent = done.datagrams["client"]
    done.client.probe_now(done.now)
    done.flush()
    assert done.datagrams["client"] == sent
