"""UDP GSO on send and GRO on receive through a real manual-mode tunnel (issue 13, docs/congestion.md).

Both are switched on by the environment (TUNNEL_UDP_GSO=1, TUNNEL_UDP_GRO=1); the processes inherit it. The trace
(TUNNEL_CC_TRACE) carries each process's counters, so the test sees that batching really happened - datagrams read
outnumber receive calls - and that the bytes still arrive intact and in order. No speed is asserted (benchmarks/).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from . import programs
from .harness import ManualTunnel
from .programs import LOOPBACK

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def last_counts(trace: Path) -> dict[int, dict[str, int]]:
    """The last trace line of each process (pid -> its counters)."""
    out: dict[int, dict[str, int]] = {}
    for line in trace.read_text().splitlines():
        row = json.loads(line)
        out[row["pid"]] = row
    return out


@pytest.mark.parametrize("runtime", ["asyncio", "trio", "gevent"])
def test_gso_and_gro_carry_a_transfer_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runtime: str) -> None:
    trace = tmp_path / "cc.trace"
    monkeypatch.setenv("TUNNEL_UDP_GSO", "1")
    monkeypatch.setenv("TUNNEL_UDP_GRO", "1")
    monkeypatch.setenv("TUNNEL_CC_TRACE", str(trace))
    payload = programs.deterministic_bytes(24 * 1024 * 1024)
    expected = (len(payload), hashlib.sha256(payload).hexdigest())
    with programs.TcpSinkServer() as sink, ManualTunnel(
        f"tcp://{LOOPBACK}:{sink.port}", runtime=runtime, packet_size=1350
    ) as t:
        assert programs.tcp_transfer_upload(t.local_port, payload, timeout=90) == expected, t.logs()
        t.assert_alive()
        assert t.server is not None and t.client is not None
        server_pid, client_pid = t.server.proc.pid, t.client.proc.pid
    counts = last_counts(trace)
    assert server_pid in counts and client_pid in counts, sorted(counts)
    receiver = counts[server_pid]
    # The receiver read the upload's datagrams with GRO: fewer receive calls than datagrams (on loopback a GSO
    # batch arrives whole), and nothing was read the old way.
    assert receiver["received"] > 24 * 1024 * 1024 // 1500, receiver
    assert 0 < receiver["recv_calls"] < receiver["received"] / 2, receiver
    # The sender sent with GSO: fewer flushes than datagrams would already hold without it; what matters is that
    # every datagram the socket took was counted once and the socket refused none for good (the transfer is intact).
    assert counts[client_pid]["sent"] > receiver["received"] * 0.9, counts[client_pid]
