"""tunnel_udp: GSO sends and GRO receives on real loopback sockets, and the portable fallback."""

from __future__ import annotations

import os
import socket
import time

import pytest

from tunnel_udp import GSO_MAX_SEGMENTS, Batcher, enable_gro, gso_supported, plan_batches, recv_batch, send_batch


def _datagrams(count: int, size: int, last: int | None = None) -> list[bytes]:
    out = [bytes([i % 256]) * size for i in range(count)]
    if last is not None:
        out.append(b"\xee" * last)
    return out


@pytest.fixture
def pair():
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    for s in (a, b):
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    yield a, b
    a.close()
    b.close()


def _drain(sock: socket.socket, expected: int, *, gro: bool) -> tuple[list[bytes], int]:
    got: list[bytes] = []
    calls = 0
    deadline = time.monotonic() + 5.0
    while len(got) < expected and time.monotonic() < deadline:
        batch = recv_batch(sock, gro=gro)
        if not batch:
            time.sleep(0.001)
            continue
        calls += 1
        got.extend(d for d, _ in batch)
    return got, calls


def test_plan_batches_groups_equal_sizes_and_a_shorter_tail() -> None:
    assert plan_batches([1350] * 5 + [200]) == [(0, 6, 1350)]
    assert plan_batches([1350, 1350, 1400, 1400, 90, 90]) == [(0, 2, 1350), (2, 5, 1400), (5, 6, 90)]
    assert plan_batches([200, 1350]) == [(0, 1, 200), (1, 2, 1350)]  # a longer one cannot follow
    assert plan_batches([1000] * (GSO_MAX_SEGMENTS + 3)) == [(0, GSO_MAX_SEGMENTS, 1000),
                                                             (GSO_MAX_SEGMENTS, GSO_MAX_SEGMENTS + 3, 1000)]
    assert plan_batches([1350] * 100) == [(0, 48, 1350), (48, 96, 1350), (96, 100, 1350)]  # 48 x 1350 < 65000
    assert plan_batches([16000] * 5) == [(0, 4, 16000), (4, 5, 16000)]  # 64 KB per call at most
    assert plan_batches([]) == []


def test_linux_has_gso_and_gro(pair) -> None:
    a, b = pair
    assert os.uname().sysname == "Linux"
    assert gso_supported(a)
    assert enable_gro(b)


def test_one_gso_sendmsg_delivers_every_datagram_intact(pair) -> None:
    a, b = pair
    datagrams = _datagrams(40, 1350, last=200)
    sent, calls = send_batch(a, datagrams, b.getsockname(), gso=True)
    assert (sent, calls) == (41, 1)
    got, _ = _drain(b, 41, gro=False)  # no GRO: the kernel segmented the batch into 41 datagrams
    assert got == datagrams


def test_gro_receives_a_batch_in_fewer_calls_and_splits_it(pair) -> None:
    a, b = pair
    assert enable_gro(b)
    datagrams = _datagrams(40, 1350, last=200)
    assert send_batch(a, datagrams, b.getsockname(), gso=True) == (41, 1)
    got, calls = _drain(b, 41, gro=True)
    assert got == datagrams
    assert calls < 41  # on loopback the GSO batch arrives whole: usually one call


def test_fallback_without_gso_sends_one_datagram_per_call(pair) -> None:
    a, b = pair
    datagrams = _datagrams(10, 1350)
    assert send_batch(a, datagrams, b.getsockname(), gso=False) == (10, 10)
    got, calls = _drain(b, 10, gro=False)
    assert got == datagrams and calls == 10


def test_batcher_counts_calls_and_reads_nothing_when_empty(pair) -> None:
    a, b = pair
    sender, receiver = Batcher(a), Batcher(b)
    assert receiver.recv() == []
    datagrams = _datagrams(100, 1350)
    assert sender.send(datagrams, b.getsockname()) == 100
    assert sender.send_calls == 3  # 48 + 48 + 4
    got: list[bytes] = []
    deadline = time.monotonic() + 5.0
    while len(got) < 100 and time.monotonic() < deadline:
        got.extend(d for d, _ in receiver.recv())
    assert got == datagrams
    assert receiver.recv_calls < 100


def test_a_socket_without_gso_falls_back(pair) -> None:
    a, b = pair
    sender = Batcher(a, gso=False)
    assert sender.send(_datagrams(5, 1350), b.getsockname()) == 5
    assert sender.send_calls == 5


def test_ipv6_loopback(pair) -> None:
    a = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        a.bind(("::1", 0))
        b.bind(("::1", 0))
        b.setblocking(False)
        assert enable_gro(b)
        datagrams = _datagrams(20, 1400, last=10)
        assert send_batch(a, datagrams, b.getsockname()[:2], gso=True) == (21, 1)
        got, _ = _drain(b, 21, gro=True)
        assert got == datagrams
    finally:
        a.close()
        b.close()
