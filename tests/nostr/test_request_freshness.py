"""The client's request stays fresh while it waits (docs/reconnect.md, issue 15): every (re)publication carries the
time it is made, and a relay that (re)connects after the last one gets a fresh copy at once.

Why it matters: the server drops requests older than 30 s (reference 5.5). Upstream re-publishes the first
timestamp, so a request whose relay came back 40 s into the wait was dropped until ``--max-wait`` ended the
attempt - a nostr tunnel came back 70 s after a 90 s cut healed. Virtual time: the dialogue's generator is stepped
by hand, its effects answered by the test.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

from tunnel_core.blocks import ManualOffer, ManualRequest
from tunnel_core.dialogue import Say
from tunnel_core.dialogue_nostr import (
    MAX_REQUEST_AGE,
    Clock,
    NextMessage,
    Publish,
    Times,
    _await_offer,
    _await_relay,
    request_age,
)
from tunnel_core.nostr.keys import SecretKey
from tunnel_core.nostr.messages import TYPE_REQUEST, Channel, NostrRequest
from tunnel_core.nostr.options import NostrClientOptions
from tunnel_core.nostr.pool import RelayPool, RelayUp
from tunnel_core.options import TunnelError

CLIENT, SERVER = SecretKey.generate(os.urandom), SecretKey.generate(os.urandom)
WALL0 = 1_800_000_000
SID = "0123456789abcdef"
RELAY = "ws://127.0.0.1:1"


def _setup() -> tuple[Channel, Channel, NostrRequest, NostrClientOptions]:
    client = Channel(CLIENT, SERVER.public_key)
    server = Channel(SERVER, CLIENT.public_key)
    request = NostrRequest(ManualRequest(ice_ufrag="uf", ice_pwd="pw" * 11, candidates=(), session_id=SID,
                                         timestamp=WALL0, source="tcp://127.0.0.1:22"), quic_fingerprint="ab" * 32)
    opts = NostrClientOptions(source="tcp://127.0.0.1:22", target="127.0.0.1:2222", nsec="", peer_npub="",
                              republish_interval=5.0, max_wait=120.0)
    return client, server, request, opts


class Steps:
    """Answers the dialogue's effects: the clock is ``self.now`` (wall = WALL0 + monotonic), NextMessage takes
    the next scripted answer (an item, or None = its timeout passed, which advances the clock by that timeout)."""

    def __init__(self, gen: Generator[Any, Any, Any], server: Channel) -> None:
        self.gen, self.server, self.now = gen, server, 0.0
        self.published: list[tuple[float, int]] = []  # (monotonic, the request's timestamp)
        self.effect = gen.send(None)

    def run_until_wait(self) -> NextMessage:
        while not isinstance(self.effect, NextMessage):
            self.effect = self.gen.send(self._answer(self.effect))
        return self.effect

    def _answer(self, effect: Any) -> Any:
        if isinstance(effect, Clock):
            return Times(self.now, WALL0 + int(self.now))
        if isinstance(effect, Publish):
            message = self.server.open(effect.event, (TYPE_REQUEST,)).message
            assert isinstance(message, NostrRequest) and message.request.session_id == SID
            self.published.append((self.now, message.request.timestamp))
            return 1
        if isinstance(effect, Say):
            return None
        raise AssertionError(f"unexpected effect {effect!r}")

    def answer_wait(self, item: Any, at: float | None = None) -> None:
        wait = self.run_until_wait()
        self.now = at if at is not None else self.now + (wait.timeout or 0.0)
        self.effect = self.gen.send(item)
        self.run_until_wait()  # what the dialogue does about it, up to its next wait


def test_every_republication_carries_its_own_time_and_the_server_would_accept_it() -> None:
    client, server, request, opts = _setup()
    steps = Steps(_await_offer(client, request, Times(0.0, WALL0), opts, os.urandom), server)
    for _ in range(4):
        steps.answer_wait(None)  # nothing came: the window passes, it publishes again
    steps.run_until_wait()
    assert [t for t, _ in steps.published] == [0.0, 5.0, 15.0, 35.0, 75.0]  # the doubling window, as upstream
    for at, stamp in steps.published:
        assert stamp == WALL0 + int(at)  # upstream would send WALL0 every time: 75 s old at the last one
        assert request_age(stamp, WALL0 + int(at) + 2) <= MAX_REQUEST_AGE
    with pytest.raises(TunnelError, match=r"Timeout waiting for offer from peer \(120s\)"):
        steps.answer_wait(None)


def test_a_relay_that_comes_back_after_the_last_publication_gets_a_fresh_copy_at_once() -> None:
    client, server, request, opts = _setup()
    steps = Steps(_await_offer(client, request, Times(0.0, WALL0), opts, os.urandom), server)
    steps.answer_wait(None)  # 5 s: second publication, next window 10 s
    assert [t for t, _ in steps.published] == [0.0, 5.0]
    steps.answer_wait(RelayUp(RELAY, 4.0), at=5.5)  # came up before the last publication: it has it already
    assert len(steps.published) == 2
    steps.answer_wait(RelayUp(RELAY, 12.0), at=12.0)  # came back 7 s after it: published afresh now
    steps.run_until_wait()
    assert steps.published[-1] == (12.0, WALL0 + 12)
    wait = steps.run_until_wait()
    assert wait.timeout == pytest.approx(15.0 - 12.0)  # the doubling schedule is unchanged


def test_a_waiting_attempt_gives_up_when_no_relay_opens_in_time() -> None:
    pool = RelayPool([RELAY], filters=[{}], subscription_id="s")
    gen = _await_relay(pool, 30.0)
    effect = gen.send(None)
    now = 0.0
    with pytest.raises(TunnelError, match="No Nostr relay reachable within 30s"):
        while True:
            if isinstance(effect, Clock):
                effect = gen.send(Times(now, WALL0))
            else:
                assert isinstance(effect, NextMessage) and effect.timeout is not None
                now += effect.timeout
                effect = gen.send(None)


def test_a_waiting_attempt_goes_on_once_a_relay_opened() -> None:
    pool = RelayPool([RELAY], filters=[{}], subscription_id="s")
    gen = _await_relay(pool, 30.0)
    effect = gen.send(None)
    assert isinstance(effect, Clock)
    effect = gen.send(Times(0.0, WALL0))
    assert isinstance(effect, Clock)
    effect = gen.send(Times(0.0, WALL0))
    assert isinstance(effect, NextMessage)
    pool.connections_wanted(3.0)
    pool.connected(RELAY, 3.0)
    with pytest.raises(StopIteration):
        gen.send(RelayUp(RELAY, 3.0))


def test_an_offer_for_the_session_ends_the_wait() -> None:
    client, server, request, opts = _setup()
    steps = Steps(_await_offer(client, request, Times(0.0, WALL0), opts, os.urandom), server)
    steps.run_until_wait()
    offer = ManualOffer(ice_ufrag="su", ice_pwd="sp" * 11, candidates=(), quic_fingerprint="cd" * 32, session_id=SID)
    event = server.seal(offer, created_at=WALL0 + 1, rng=os.urandom)
    with pytest.raises(StopIteration) as done:
        steps.answer_wait(event, at=1.0)
    assert done.value.value == offer
