from __future__ import annotations

import itertools
import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel_core.nostr.errors import NostrError
from tunnel_core.nostr.event import sign_event
from tunnel_core.nostr.keys import SecretKey
from tunnel_core.nostr.pool import (
    Backoff,
    Dropped,
    EventReceived,
    PublishResult,
    RelayDown,
    RelayPool,
    RelayState,
    RelayUp,
)
from tunnel_core.nostr.relay import (
    ClosedMessage,
    EoseMessage,
    EventMessage,
    NoticeMessage,
    OkMessage,
    Unknown,
    encode_close,
    encode_event,
    encode_req,
    parse_relay_message,
)

KEY = SecretKey.generate(os.urandom)
A, B, C = "ws://127.0.0.1:1", "ws://127.0.0.1:2", "ws://127.0.0.1:3"
SUB = "sub1"


def _ev(content: str = "x", created_at: int = 1) -> object:
    return sign_event(KEY, created_at=created_at, kind=24242, tags=[["t", "a"]], content=content, rng=os.urandom)


def _events(pool: RelayPool) -> list:
    out = []
    while (ev := pool.next_event()) is not None:
        out.append(ev)
    return out


def _pool(*urls: str) -> RelayPool:
    return RelayPool(urls or (A, B), filters=[{"kinds": [24242]}], subscription_id=SUB,
                     backoff=Backoff(initial=1.0, maximum=8.0))


def test_relay_message_codec() -> None:
    ev = _ev()
    assert json.loads(encode_event(ev))[0] == "EVENT"  # type: ignore[arg-type]
    assert json.loads(encode_req("s", [{"kinds": [1]}])) == ["REQ", "s", {"kinds": [1]}]
    assert json.loads(encode_close("s")) == ["CLOSE", "s"]
    assert parse_relay_message(json.dumps(["EVENT", "s", ev.to_dict()])) == EventMessage("s", ev)  # type: ignore[union-attr]
    assert parse_relay_message('["OK","ab",false,"invalid: bad sig"]') == OkMessage("ab", False, "invalid: bad sig")
    assert parse_relay_message('["EOSE","s"]') == EoseMessage("s")
    assert parse_relay_message('["CLOSED","s","auth-required: x"]') == ClosedMessage("s", "auth-required: x")
    assert parse_relay_message('["NOTICE","hi"]') == NoticeMessage("hi")
    assert parse_relay_message('["AUTH","challenge"]') == Unknown("AUTH")
    for bad in ("", "{}", "[]", "[1]", '["OK","a"]', '["EVENT","s",{}]', '["EOSE"]', "[" * 100000):
        with pytest.raises(NostrError):
            parse_relay_message(bad)


@given(st.text(max_size=300))
def test_arbitrary_relay_text_raises_only_nostr_error(text: str) -> None:
    try:
        parse_relay_message(text)
    except NostrError:
        pass


def test_connect_subscribe_and_dedup_across_relays() -> None:
    pool = _pool()
    assert pool.connections_wanted(0.0) == [A, B]
    assert pool.connections_wanted(0.0) == []
    pool.connected(A, 0.1)
    pool.connected(B, 0.1)
    sent = pool.texts_to_send()
    assert sorted(url for url, _ in sent) == [A, B]
    assert all(json.loads(text) == ["REQ", SUB, {"kinds": [24242]}] for _, text in sent)
    ev = _ev()
    frame = json.dumps(["EVENT", SUB, ev.to_dict()])  # type: ignore[union-attr]
    pool.receive_text(A, frame, 0.2)
    pool.receive_text(B, frame, 0.2)
    received = [e for e in _events(pool) if isinstance(e, EventReceived)]
    assert received == [EventReceived(ev, A)]  # type: ignore[arg-type]


def test_tampered_and_foreign_events_are_dropped() -> None:
    pool = _pool(A)
    pool.connections_wanted(0.0)
    pool.connected(A, 0.0)
    _events(pool)
    obj = _ev().to_dict()  # type: ignore[union-attr]
    obj["content"] = "tampered"
    pool.receive_text(A, json.dumps(["EVENT", SUB, obj]), 0.1)
    pool.receive_text(A, json.dumps(["EVENT", "other-sub", _ev("y").to_dict()]), 0.1)  # type: ignore[union-attr]
    pool.receive_text(A, "not json", 0.1)
    events = _events(pool)
    assert not any(isinstance(e, EventReceived) for e in events)
    assert sum(isinstance(e, Dropped) for e in events) == 2
    # The forged copy must not poison dedup: the genuine event still gets through.
    genuine = _ev("z")
    pool.receive_text(A, json.dumps(["EVENT", SUB, genuine.to_dict()]), 0.2)  # type: ignore[union-attr]
    assert [e for e in _events(pool) if isinstance(e, EventReceived)] == [EventReceived(genuine, A)]  # type: ignore[arg-type]


def test_dead_relay_backoff_and_reconnect() -> None:
    pool = _pool()
    pool.connections_wanted(0.0)
    pool.connected(A, 0.0)
    pool.disconnected(B, 0.0, "refused")
    assert pool.settled and pool.open_count == 1
    assert pool.get_timer() == 1.0
    assert pool.connections_wanted(0.5) == []
    retry_times = []
    now = 0.0
    for _ in range(5):
        now = pool.get_timer()  # type: ignore[assignment]
        assert pool.connections_wanted(now) == [B]
        pool.disconnected(B, now, "refused")
        retry_times.append(pool.get_timer() - now)  # type: ignore[operator]
    assert retry_times == [2.0, 4.0, 8.0, 8.0, 8.0]
    downs = [e for e in _events(pool) if isinstance(e, RelayDown)]
    assert len(downs) == 6 and downs[0].reason == "refused"


def test_settled_when_all_failed_once() -> None:
    pool = _pool()
    pool.connections_wanted(0.0)
    assert not pool.settled
    pool.disconnected(A, 0.0, "x")
    assert not pool.settled
    pool.disconnected(B, 0.0, "x")
    assert pool.settled and pool.open_count == 0


def test_publications_replay_to_late_and_returning_relays() -> None:
    pool = _pool()
    pool.connections_wanted(0.0)
    pool.connected(A, 0.0)
    pool.texts_to_send()
    ev = _ev()
    assert pool.publish(ev, 1.0) == 1  # type: ignore[arg-type]
    assert [url for url, _ in pool.texts_to_send()] == [A]
    pool.connected(B, 2.0)  # late relay gets REQ then the active event
    sent = [json.loads(t) for url, t in pool.texts_to_send() if url == B]
    assert [s[0] for s in sent] == ["REQ", "EVENT"]
    pool.disconnected(A, 3.0, "reset")
    pool.connections_wanted(10.0)
    pool.connected(A, 10.0)
    assert [json.loads(t)[0] for _, t in pool.texts_to_send()] == ["REQ", "EVENT"]
    pool.forget(ev.id)  # type: ignore[union-attr]
    pool.disconnected(A, 11.0, "reset")
    pool.connections_wanted(20.0)
    pool.connected(A, 20.0)
    assert [json.loads(t)[0] for _, t in pool.texts_to_send()] == ["REQ"]


def test_publications_expire() -> None:
    pool = RelayPool([A], filters=[{}], subscription_id=SUB, publish_ttl=5.0)
    pool.publish(_ev(), 0.0)  # type: ignore[arg-type]
    pool.connections_wanted(10.0)
    pool.connected(A, 10.0)
    assert [json.loads(t)[0] for _, t in pool.texts_to_send()] == ["REQ"]


def test_ok_and_close() -> None:
    pool = _pool(A)
    pool.connections_wanted(0.0)
    pool.connected(A, 0.0)
    pool.receive_text(A, '["OK","ab",true,""]', 0.0)
    assert PublishResult(A, "ab", True, "") in _events(pool)
    pool.texts_to_send()
    pool.close()
    assert [json.loads(t) for _, t in pool.texts_to_send()] == [["CLOSE", SUB]]
    assert pool.connections_to_close() == [A]
    pool.disconnected(A, 1.0)
    assert pool.state(A) is RelayState.CLOSED
    assert pool.connections_wanted(100.0) == [] and pool.get_timer() is None


def test_seen_set_is_bounded() -> None:
    pool = RelayPool([A], filters=[{}], subscription_id=SUB, seen_limit=3)
    pool.connections_wanted(0.0)
    pool.connected(A, 0.0)
    evs = [_ev(str(i)) for i in range(5)]
    for ev in evs:
        pool.receive_text(A, json.dumps(["EVENT", SUB, ev.to_dict()]), 0.0)  # type: ignore[union-attr]
    assert len(pool._seen) == 3
    assert sum(isinstance(e, EventReceived) for e in _events(pool)) == 5
    assert isinstance(RelayUp(A, 0.0), RelayUp)


# ------------------------------------------------------------------------------------- pacing (virtual time)

#: Linux sends a connection's SYN at these offsets (initial RTO 1 s, doubling); the adapter gives up at 10 s.
SYN_AT = (0.0, 1.0, 3.0, 7.0)
CONNECT_TIMEOUT = 10.0


def _through_a_cut(heal: float, horizon: float = 600.0) -> tuple[float, int]:
    """Drive one relay of a default pool through a cut ending at ``heal``: an attempt connects at the first SYN sent
    after the heal, else times out. Returns (when it opened, attempts started)."""
    pool = RelayPool([A], filters=[{}], subscription_id=SUB)
    now, attempts = 0.0, 0
    while now < horizon:
        if pool.connections_wanted(now):
            attempts += 1
            syn = next((now + s for s in SYN_AT if now + s >= heal), None)
            if syn is not None and syn < now + CONNECT_TIMEOUT:
                pool.connected(A, syn)
                return syn, attempts
            now += CONNECT_TIMEOUT
            pool.disconnected(A, now, "timed out")
            continue
        timer = pool.get_timer()
        assert timer is not None and timer >= now
        now = timer
    raise AssertionError("never connected")


def test_a_relay_behind_a_cut_is_found_within_seconds_of_the_heal_and_not_hammered() -> None:
    """The pacing that brings a nostr tunnel back after a long cut (docs/reconnect.md): a timed-out attempt is
    followed by the next at once (the relay heard nothing), so the heal is noticed by the next SYN - at most 4 s
    later (the widest gap of SYN_AT) - and a cut costs one attempt per connect timeout, not more."""
    worst = 0.0
    for tenth in range(0, 3000, 7):  # cuts ending anywhere in 0..300 s
        heal = tenth / 10
        opened, attempts = _through_a_cut(heal)
        worst = max(worst, opened - heal)
        assert attempts <= heal // CONNECT_TIMEOUT + 2, (heal, attempts)
    assert worst <= 4.0, worst


def test_a_relay_that_answers_hears_at_most_one_attempt_per_backoff_cap() -> None:
    """A relay that refuses at once (it is down, or rate limits) is tried 1, 2, 4, 8 and then every 10 s, counted
    from one attempt's start to the next; ten minutes of refusals cost it about 60 connections."""
    pool = RelayPool([A], filters=[{}], subscription_id=SUB)
    starts, now = [], 0.0
    while now < 600.0:
        assert pool.connections_wanted(now) == [A]
        starts.append(now)
        pool.disconnected(A, now + 0.01, "Connection refused")
        now = pool.get_timer()  # type: ignore[assignment]
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(starts)]
    assert gaps[:6] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert min(gaps) >= 1.0 and max(gaps) == 10.0
    assert len(starts) <= 600 / 10 + 5


def test_only_a_connection_that_stayed_open_resets_the_backoff() -> None:
    """A relay that accepts and drops at once keeps backing off; one that stayed open 30 s starts again at 1 s,
    counted from the loss."""
    pool = RelayPool([A], filters=[{}], subscription_id=SUB)
    now = 0.0
    for expected in (1.0, 2.0, 4.0, 8.0, 10.0):
        pool.connections_wanted(now)
        pool.connected(A, now + 0.1)
        pool.disconnected(A, now + 0.2, "closed")
        assert pool.get_timer() == pytest.approx(now + 0.2 + expected)
        now = pool.get_timer()  # type: ignore[assignment]
    pool.connections_wanted(now)
    pool.connected(A, now)
    pool.disconnected(A, now + 30.0, "closed")
    assert pool.get_timer() == pytest.approx(now + 31.0)
    ups = [e for e in _events(pool) if isinstance(e, RelayUp)]
    assert [u.at for u in ups][-1] == now  # RelayUp says when: a waiting client compares it with its publication
