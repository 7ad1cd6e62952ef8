"""TurnClient against a scripted server: the auth dance, retries, refreshes, permissions, channels, hostile input."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel_core import stun
from tunnel_core.errors import LocalProtocolError
from tunnel_core.turn import (
    CHANNEL_MIN,
    Allocated,
    AllocationFailed,
    AllocationLost,
    DataReceived,
    TurnClient,
    TurnServer,
    TurnState,
    TurnTiming,
    is_channel_data,
    parse_turn_url,
)

SERVER = ("198.51.100.10", 3478)
BASE = ("10.0.1.2", 40000)
RELAYED = ("198.51.100.10", 49152)
MAPPED = ("198.51.100.101", 40000)
PEER = ("198.51.100.102", 5555)
REALM = "lab.test"
KEY = stun.long_term_key("u", REALM, "p")


def rng_of(seed: int = 1):  # type: ignore[no-untyped-def]
    r = random.Random(seed)
    return lambda n: bytes(r.getrandbits(8) for _ in range(n))


def new_client(password: str = "p", timing: TurnTiming = TurnTiming()) -> TurnClient:  # noqa: B008
    return TurnClient(server=TurnServer(SERVER, "u", password), base=BASE, rng=rng_of())


def sent(client: TurnClient, now: float = 0.0) -> list[stun.StunMessage]:
    out = client.datagrams_to_send(now)
    assert all(t.local == BASE and t.remote == SERVER for t in out)
    return [stun.decode(t.data) for t in out]


def reply(req: stun.StunMessage, cls: stun.MessageClass, attributes: tuple = (), key: bytes | None = KEY) -> bytes:
    msg = stun.StunMessage(req.method, cls, req.transaction_id, attributes)
    return stun.encode(msg, integrity_key=key, fingerprint=True)


def challenge(req: stun.StunMessage, code: int = 401, nonce: str = "n1") -> bytes:
    return reply(req, stun.MessageClass.ERROR, (
        (stun.Attr.ERROR_CODE, stun.ErrorCode(code, "Unauthorized" if code == 401 else "Stale Nonce")),
        (stun.Attr.REALM, REALM), (stun.Attr.NONCE, nonce)), key=None)


def events(client: TurnClient) -> list[object]:
    out = []
    while (ev := client.next_event()) is not None:
        out.append(ev)
    return out


def allocated_client(lifetime: int = 600) -> TurnClient:
    client = new_client()
    client.allocate(0.0)
    (first,) = sent(client)
    client.receive_datagram(challenge(first), 0.01)
    (second,) = sent(client)
    client.receive_datagram(reply(second, stun.MessageClass.SUCCESS, (
        (stun.Attr.XOR_RELAYED_ADDRESS, RELAYED), (stun.Attr.XOR_MAPPED_ADDRESS, MAPPED),
        (stun.Attr.LIFETIME, lifetime))), 0.02)
    return client


def test_allocate_answers_the_challenge_with_long_term_credentials() -> None:
    client = new_client()
    client.allocate(0.0)
    (first,) = sent(client)
    assert first.method == stun.Method.ALLOCATE and not first.has_integrity
    assert first.get(stun.Attr.REQUESTED_TRANSPORT) == 17
    client.receive_datagram(challenge(first), 0.01)
    (second,) = sent(client)
    assert second.transaction_id != first.transaction_id
    assert second.get(stun.Attr.USERNAME) == "u"
    assert second.get(stun.Attr.REALM) == REALM and second.get(stun.Attr.NONCE) == "n1"
    assert second.check_integrity(KEY)
    client.receive_datagram(reply(second, stun.MessageClass.SUCCESS, (
        (stun.Attr.XOR_RELAYED_ADDRESS, RELAYED), (stun.Attr.XOR_MAPPED_ADDRESS, MAPPED),
        (stun.Attr.LIFETIME, 600))), 0.02)
    assert events(client) == [Allocated(relayed=RELAYED, mapped=MAPPED, lifetime=600)]
    assert client.state is TurnState.ALLOCATED
    assert client.get_timer() == pytest.approx(0.02 + 540)


def test_unsigned_success_after_authenticating_is_ignored() -> None:
    client = new_client()
    client.allocate(0.0)
    (first,) = sent(client)
    client.receive_datagram(challenge(first), 0.01)
    (second,) = sent(client)
    client.receive_datagram(reply(second, stun.MessageClass.SUCCESS,
                                  ((stun.Attr.XOR_RELAYED_ADDRESS, RELAYED),), key=None), 0.02)
    assert client.state is TurnState.ALLOCATING and events(client) == []


def test_stale_nonce_is_retried_with_the_new_nonce() -> None:
    client = new_client()
    client.allocate(0.0)
    (first,) = sent(client)
    client.receive_datagram(challenge(first), 0.01)
    (second,) = sent(client)
    client.receive_datagram(challenge(second, 438, "n2"), 0.02)
    (third,) = sent(client)
    assert third.get(stun.Attr.NONCE) == "n2" and third.check_integrity(KEY)


def test_refused_credentials_fail_with_the_error_code() -> None:
    client = new_client(password="bad")
    client.allocate(0.0)
    (first,) = sent(client)
    client.receive_datagram(challenge(first), 0.01)
    (second,) = sent(client)
    client.receive_datagram(challenge(second), 0.02)
    (ev,) = events(client)
    assert isinstance(ev, AllocationFailed) and "401" in ev.reason and "bad" not in ev.reason
    assert client.state is TurnState.FAILED and client.get_timer() is None


def test_silence_fails_after_the_retransmissions() -> None:
    client = new_client()
    client.allocate(0.0)
    sends = len(sent(client))
    now = 0.0
    for _ in range(100):
        timer = client.get_timer()
        if timer is None:
            break
        now = timer
        client.handle_timer(now)
        sends += len(client.datagrams_to_send(now))
    assert sends == 1 + TurnTiming().max_retransmits
    assert [type(e) for e in events(client)] == [AllocationFailed]
    assert 10 < now < 40


def test_refresh_before_expiry_and_loss_on_refusal() -> None:
    client = allocated_client(lifetime=120)
    events(client)
    timer = client.get_timer()
    assert timer == pytest.approx(0.02 + 60)
    client.handle_timer(timer)
    (refresh,) = sent(client)
    assert refresh.method == stun.Method.REFRESH and refresh.get(stun.Attr.LIFETIME) == 600
    client.receive_datagram(reply(refresh, stun.MessageClass.ERROR,
                                  ((stun.Attr.ERROR_CODE, stun.ErrorCode(437, "Allocation Mismatch")),)), timer)
    (ev,) = events(client)
    assert isinstance(ev, AllocationLost) and "437" in ev.reason


def test_send_waits_for_the_permission_then_uses_indications_then_channel_data() -> None:
    client = allocated_client()
    events(client)
    assert client.send(PEER, b"hello", 1.0) is None  # held until the permission exists
    reqs = sent(client, 1.0)
    perm = next(m for m in reqs if m.method == stun.Method.CREATE_PERMISSION)
    bind = next(m for m in reqs if m.method == stun.Method.CHANNEL_BIND)
    assert perm.get(stun.Attr.XOR_PEER_ADDRESS)[0] == PEER[0] and perm.check_integrity(KEY)
    assert bind.get(stun.Attr.CHANNEL_NUMBER) == CHANNEL_MIN and bind.get(stun.Attr.XOR_PEER_ADDRESS) == PEER
    client.receive_datagram(reply(perm, stun.MessageClass.SUCCESS), 1.01)
    (held,) = sent(client, 1.01)
    assert held.method == stun.Method.SEND and held.message_class == stun.MessageClass.INDICATION
    assert held.get(stun.Attr.DATA) == b"hello" and held.get(stun.Attr.XOR_PEER_ADDRESS) == PEER
    t = client.send(PEER, b"again", 1.02)
    assert t is not None and stun.decode(t.data).get(stun.Attr.DATA) == b"again"
    client.receive_datagram(reply(bind, stun.MessageClass.SUCCESS), 1.03)
    t = client.send(PEER, b"fast", 1.04)
    assert t is not None and is_channel_data(t.data)
    assert stun.decode_channel_data(t.data) == (CHANNEL_MIN, b"fast")
    # Inbound both ways.
    client.receive_datagram(stun.encode_channel_data(CHANNEL_MIN, b"in1"), 1.05)
    ind = stun.StunMessage(stun.Method.DATA, stun.MessageClass.INDICATION, b"x" * 12,
                           ((stun.Attr.XOR_PEER_ADDRESS, PEER), (stun.Attr.DATA, b"in2")))
    client.receive_datagram(stun.encode(ind), 1.06)
    client.receive_datagram(stun.encode_channel_data(CHANNEL_MIN + 9, b"unknown channel"), 1.07)
    assert events(client) == [DataReceived(PEER, b"in1"), DataReceived(PEER, b"in2")]
    # Permission and channel are refreshed before they lapse (5 and 10 minutes).
    assert client.get_timer() == pytest.approx(1.01 + 240)
    client.handle_timer(1.01 + 240)
    assert [m.method for m in sent(client)] == [stun.Method.CREATE_PERMISSION]


def test_close_releases_with_lifetime_zero_and_goes_quiet() -> None:
    client = allocated_client()
    client.close(5.0)
    (release,) = sent(client, 5.0)
    assert release.method == stun.Method.REFRESH and release.get(stun.Attr.LIFETIME) == 0
    assert client.get_timer() is None and client.send(PEER, b"x", 6.0) is None


def test_allocate_twice_is_our_mistake() -> None:
    client = new_client()
    client.allocate(0.0)
    with pytest.raises(LocalProtocolError):
        client.allocate(0.0)


def test_password_is_not_in_the_repr() -> None:
    assert "sekrit" not in repr(TurnServer(SERVER, "u", "sekrit"))


@pytest.mark.parametrize(("text", "expected"), [
    ("turn:198.51.100.10:3478", ("198.51.100.10", 3478)),
    ("turn:turn.example.org", ("turn.example.org", 3478)),
    ("turn:[2001:db8::1]:3479", ("2001:db8::1", 3479)),
    ("turn:h:5349?transport=udp", ("h", 5349)),
])
def test_parse_turn_url(text: str, expected: tuple[str, int]) -> None:
    assert parse_turn_url(text) == expected


@pytest.mark.parametrize("text", ["198.51.100.10:3478", "turns:h:5349", "turn:h:0", "turn::1:3478",
                                  "turn:h:99999", "turn:h:5349?transport=tcp", "turn:", "turn:[::1"])
def test_parse_turn_url_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="TURN server"):
        parse_turn_url(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=8))
def test_arbitrary_server_bytes_never_raise(datagrams: list[bytes]) -> None:
    client = allocated_client()
    client.send(PEER, b"x", 1.0)
    for data in datagrams:
        client.receive_datagram(data, 1.0)
        client.receive_datagram(b"\x40\x00" + data, 1.0)
    assert client.state is TurnState.ALLOCATED
