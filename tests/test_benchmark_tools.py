"""The two floors bench.py prints next to the tunnel must measure what they claim, or the latency analysis in
benchmarks/README.md rests on nothing: the relay must really forward (both ways, with half-close), and the QUIC
cost loop must really move one byte each way per round trip."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.e2e import programs

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def test_python_relay_chain_forwards_both_ways_with_half_close() -> None:
    from benchmarks.bench import python_relay_chain

    with programs.TcpEchoServer() as echo, python_relay_chain(echo.port) as entry:
        payload = programs.deterministic_bytes(3 << 20)
        with socket.create_connection(("127.0.0.1", entry), timeout=10) as conn:
            conn.sendall(payload[:1])
            assert conn.recv(1) == payload[:1]  # the ping-pong bench.py times
            conn.sendall(payload[1:])
            conn.shutdown(socket.SHUT_WR)
            echoed = payload[:1] + programs.recv_all(conn)
        assert echoed == payload  # the echo server half-closes after our EOF crossed both relays


def test_python_relay_rejects_bad_usage() -> None:
    out = subprocess.run([sys.executable, str(BENCH / "py_relay.py"), "sideways"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "usage: py_relay.py" in out.stderr


def test_quic_cost_moves_bytes_and_reports_a_time() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import quic_cost
    finally:
        sys.path.remove(str(BENCH))
    cost = quic_cost.round_trip_cost(rounds=50)  # raises SystemExit if a byte went missing
    assert 1.0 < cost < 100_000.0
