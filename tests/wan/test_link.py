"""The WAN link itself: its model (pure, exact) and the real link process in namespaces (loose bounds).

The namespace tests assert properties a busy 2-core machine cannot break: a delay is never shorter than configured,
a loss ratio within wide binomial bounds, a rate never exceeded, a queue that drops, a cut that drops everything,
an address change that moves the path. No test asserts a speed the link must reach.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from tests.nat.lab import is_root, reap_stale_labs
from tests.wan.lab import PROFILES, WanLab, link_delta
from tests.wan.link import Direction
from tests.wan.tunnels import probe, service

# ------------------------------------------------------------------------------------------------ the model


def test_rate_limit_tail_drops_beyond_the_queue() -> None:
    d = Direction(random.Random(1))
    d.configure({"rate_mbit": 8, "queue_bytes": 10_000})  # 1 MB/s, 10 kB queue
    for _ in range(20):
        d.admit(b"x" * 1000, now=0.0)
    assert d.counts["drop_queue"] == 10
    assert len(d.flight) == 10
    # Serialised at the rate: the 10th frame leaves 10 ms after the first byte entered.
    assert d.flight[-1][0] == pytest.approx(0.010)
    # Once the queue has drained, frames are admitted again.
    d.admit(b"x" * 1000, now=0.011)
    assert len(d.flight) == 11


def test_delay_and_jitter_keep_order_and_stay_in_bounds() -> None:
    d = Direction(random.Random(2))
    d.configure({"delay_ms": 25, "jitter_ms": 5})
    delays = []
    for i in range(20_000):
        now = i * 0.0005
        d.admit(i.to_bytes(4, "big"), now)
        due, frame = d.flight[-1]
        assert int.from_bytes(frame, "big") == i
        delays.append(due - now)
    dues = [due for due, _ in d.flight]
    assert dues == sorted(dues)  # never reordered
    assert min(delays) >= 0.025 - 0.010 - 1e-9
    assert max(delays) <= 0.025 + 0.010 + 0.001  # +2 jitter, plus what the order clamp may add
    spread = sorted(delays)
    assert spread[-len(spread) // 10] - spread[len(spread) // 10] > 0.004  # the jitter is really there


def test_loss_ratio_and_cut() -> None:
    d = Direction(random.Random(3))
    d.configure({"loss": 0.1})
    for i in range(10_000):
        d.admit(b"y", i * 1e-4)
    assert 800 <= d.counts["drop_loss"] <= 1200
    in_flight = len(d.flight)
    d.cut()
    assert not d.flight and d.counts["drop_cut"] == in_flight


# ----------------------------------------------------------------------------------- the real link process


@pytest.fixture(scope="module")
def lab() -> Iterator[WanLab]:
    if not is_root():
        pytest.fail("the WAN lab builds network namespaces and must run as root (CI does)", pytrace=False)
    reap_stale_labs()
    with WanLab(profile=PROFILES["lan"]) as lab:
        echo = service(lab, "b", "tcp-echo", "0.0.0.0", 7000)
        try:
            yield lab
        finally:
            echo.stop()


@pytest.fixture
def clean(lab: WanLab) -> Iterator[WanLab]:
    """Every test starts and ends on an unimpaired link."""
    assert lab.link is not None
    lab.link.cut(False)
    lab.link.set(delay_ms=0, jitter_ms=0, loss=0, rate_mbit=0)
    yield lab
    lab.link.cut(False)
    lab.link.set(delay_ms=0, jitter_ms=0, loss=0, rate_mbit=0)


def _blast_into_sink(lab: WanLab, count: int, size: int, rate: float, sink_seconds: float, port: int) -> dict:
    sink = service_sink(lab, port, sink_seconds)
    sent = probe(lab, "a", "udp-blast", lab.addr["b"], port, "--count", str(count), "--size", str(size),
                 "--rate", str(rate))
    assert sent.get("sent") == count, sent
    out, _ = sink.communicate(timeout=sink_seconds + 30)
    import json

    return dict(json.loads(out.strip().splitlines()[-1]))


def service_sink(lab: WanLab, port: int, seconds: float):
    import subprocess

    from tests.wan.tunnels import PROBE, PYTHON

    proc = subprocess.Popen(lab.in_ns("b", [PYTHON, PROBE, "udp-sink", lab.addr["b"], str(port), "--seconds",
                                            str(seconds)]), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    return proc


@pytest.mark.wan
def test_delay_is_applied(clean: WanLab) -> None:
    assert clean.link is not None
    clean.link.set(delay_ms=40)
    result = probe(clean, "a", "rr", clean.addr["b"], 7000, "--rate", "20", "--seconds", "1")
    assert result["n"] >= 5, result
    assert result["p50_ms"] >= 80.0  # two crossings of 40 ms: never faster
    assert result["p50_ms"] < 400.0, result


@pytest.mark.wan
def test_loss_ratio_within_bounds(clean: WanLab) -> None:
    assert clean.link is not None
    clean.link.set("ab", loss=0.3)
    before = clean.link.stats()
    got = _blast_into_sink(clean, 1000, 200, 2000, 1.5, 7101)
    delta = link_delta(before, clean.link.stats())
    assert got["corrupt"] == 0
    assert 600 <= got["received"] <= 800, got
    assert 200 <= delta["drop_loss"] <= 400, delta


@pytest.mark.wan
def test_rate_limit_is_enforced_and_the_queue_tail_drops(clean: WanLab) -> None:
    assert clean.link is not None
    clean.link.set("ab", rate_mbit=4, queue_ms=20)  # 500 kB/s, 10 kB queue
    before = clean.link.stats()
    # ~1 kB datagrams offered at 1500/s for 2 s: three times the rate (still above it if the sender runs slowly).
    got = _blast_into_sink(clean, 3000, 1000, 1500, 4.0, 7102)
    delta = link_delta(before, clean.link.stats())
    assert delta["drop_queue"] > 100, delta  # what did not fit in the queue was dropped
    # Nothing else was lost (a few ARP frames may share the queue with the datagrams).
    assert 3000 <= delta["drop_queue"] + got["received"] <= 3005, (delta, got)
    assert got["received"] >= 200 and got["corrupt"] == 0, got
    wire_bytes = (got["bytes"] + got["received"] * 42) * (got["received"] - 1) / got["received"]  # + headers
    assert wire_bytes / got["span_s"] <= 500_000 * 1.15, got  # never faster than the rate (+ timing noise)


@pytest.mark.wan
def test_cut_drops_everything_and_heals(clean: WanLab) -> None:
    assert clean.link is not None
    clean.link.cut(True)
    before = clean.link.stats()
    # first-byte keeps trying for 1.5 s (rr would sit in a 30 s connect timeout behind the cut).
    cut = probe(clean, "a", "first-byte", clean.addr["b"], 7000, "--timeout", "1.5")
    assert cut["ok"] is False, cut  # not even the TCP handshake got through
    assert link_delta(before, clean.link.stats())["drop_cut"] >= 1
    clean.link.cut(False)
    healed = probe(clean, "a", "rr", clean.addr["b"], 7000, "--rate", "20", "--seconds", "0.5")
    assert healed["n"] >= 3, healed


@pytest.mark.wan
def test_address_change_moves_the_path(clean: WanLab) -> None:
    old = clean.addr["b"]
    clean.move("b", "203.0.113.3")
    try:
        moved = probe(clean, "a", "rr", "203.0.113.3", 7000, "--rate", "20", "--seconds", "0.5")
        assert moved["n"] >= 3, moved
        stale = probe(clean, "a", "first-byte", old, 7000, "--timeout", "1.5")
        assert stale["ok"] is False, stale
    finally:
        clean.move("b", old)
