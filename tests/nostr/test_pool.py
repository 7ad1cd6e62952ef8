from __future__ import annotations

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
    assert isinstance(RelayUp(A), RelayUp)
