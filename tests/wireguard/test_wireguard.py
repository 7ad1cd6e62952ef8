"""WireGuard through the tunnel in manual, nostr and iroh mode (issue 14): wireguard-go in two namespaces,
WireGuard's UDP endpoint being the tunnel client's local listener. On a plain 1500-MTU path: ping (full-size
packets too, both ways) and iperf3 over the WireGuard interface must work, 1452-byte WireGuard packets must have
travelled as fragmented QUIC datagrams, and 1452-byte and 8 KB UDP datagrams must pass both ways. On the WAN lab's
``wifi`` profile (50 ms, 5 ms jitter, 1 % loss, 100 Mbit/s): ping and iperf3 over WireGuard through the tunnel work.

Nothing here is timed; benchmarks/bench_wireguard.py measures the same setups (ping p99, iperf3) beside plain
WireGuard. Root only (namespaces).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from tests.wan.lab import PROFILES

from .lab import WG_IP, WG_PORT_B, PathLab, WanPath, WireGuardPair, in_ns, iperf, ping, run, tools_missing
from .tunnel import CLIENT_LISTEN, MODES, TunnelInNamespaces, summary

pytestmark = [pytest.mark.nat, pytest.mark.timeout(300)]

#: Functional iperf3 runs: long enough for many full-size packets both ways, short enough for the suite.
IPERF_SECONDS = 1.5


@pytest.fixture(scope="module")
def lab() -> Iterator[PathLab]:
    """One plain path for the module: each test starts (and stops) its own tunnel and WireGuard pair in it."""
    missing = tools_missing()
    assert not missing, f"install {missing} (scripts/install.sh --test)"
    with PathLab() as path:
        yield path
    assert path.namespaces() == [], "lab namespaces left behind"


def _pings(lab: Any, checks: dict[str, tuple[str, str, int, int | None]]) -> dict[str, dict[str, Any]]:
    """Several pings at once (name -> (from side, to address, count, size)): the checks are independent."""
    with ThreadPoolExecutor(len(checks)) as pool:
        futures = {name: pool.submit(ping, lab.ns(side), to, count, size=size)
                   for name, (side, to, count, size) in checks.items()}
        return {name: f.result() for name, f in futures.items()}


def _iperf_both_ways(lab: Any) -> list[dict[str, Any]]:
    return [iperf(lab.ns("A"), lab.ns("B"), seconds=IPERF_SECONDS),
            iperf(lab.ns("A"), lab.ns("B"), "-R", seconds=IPERF_SECONDS)]


@pytest.mark.parametrize("mode", MODES)
def test_wireguard_through_the_tunnel_ping_and_iperf3(lab: PathLab, mode: str) -> None:
    with TunnelInNamespaces(lab, f"udp://127.0.0.1:{WG_PORT_B}", mode=mode) as tunnel, \
            WireGuardPair(lab.ns("A"), lab.ns("B"), CLIENT_LISTEN) as wg:
        # The first ping also waits for WireGuard's handshake; the rest run together.
        first = ping(lab.ns("A"), WG_IP["B"], 1, size=None)
        assert first["received"] == 1, f"{first['output']}\n{wg.show()}\n{tunnel.logs()}"
        # 1392 + 28 = 1420: full-MTU inner packets, so 1452-byte WireGuard datagrams on the tunnel (DF set).
        pings = _pings(lab, {"small": ("A", WG_IP["B"], 5, None), "full": ("A", WG_IP["B"], 5, 1392),
                             "back": ("B", WG_IP["A"], 3, None), "full back": ("B", WG_IP["A"], 3, 1392)})
        for name, result in pings.items():
            assert result["received"] == result["sent"] > 0, f"{name}: {result['output']}\n{tunnel.logs()}"
        for result in _iperf_both_ways(lab):
            assert "error" not in result, result.get("error")
            assert result["end"]["sum_received"]["bytes"] > 500_000, result["end"]
        tunnel.stop()
        assert tunnel.client is not None and tunnel.server is not None
        client, server = summary(tunnel.client.stderr), summary(tunnel.server.stderr)
    # Full-size WireGuard packets do not fit one 1350-byte QUIC packet: they travelled as fragments both ways.
    assert client["fragmented"] > 0 and server["fragmented"] > 0, (client, server)
    assert client["reassembled"] > 0 and server["reassembled"] > 0, (client, server)
    assert client["datagrams"] > 0 and server["datagrams"] > 0
    assert client["malformed"] == 0 and server["malformed"] == 0


ECHO = (
    "import socket\n"
    "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('127.0.0.1',7000))\n"
    "while True:\n d,a=s.recvfrom(65535);s.sendto(d[::-1],a)\n"
)
SIZES_PROBE = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(5)\n"
    "for n in (1452,1452,8192,1200,30000):\n"
    " d=bytes(range(256))*(n//256)+bytes(n%256)\n"
    f" s.sendto(d,{CLIENT_LISTEN!r})\n"
    " r,_=s.recvfrom(65535)\n"
    " assert r==d[::-1],(n,len(r))\n"
    "print('ok')\n"
)


def test_8_kb_and_1452_byte_udp_datagrams_pass_both_ways(lab: PathLab) -> None:
    server = subprocess.Popen(in_ns(lab.ns("B"), [sys.executable, "-c", ECHO]))
    try:
        with TunnelInNamespaces(lab, "udp://127.0.0.1:7000") as tunnel:
            out = run(in_ns(lab.ns("A"), [sys.executable, "-c", SIZES_PROBE]), check=False, timeout=60)
            assert out.strip() == "ok", f"{out}\n{tunnel.logs()}"
            tunnel.stop()
            assert tunnel.client is not None and tunnel.server is not None
            stats, back = summary(tunnel.client.stderr), summary(tunnel.server.stderr)
    finally:
        server.kill()
        server.wait(timeout=5)
    # The first datagram opened the flow's stream; 1452 and 8192 were fragmented; 30000 took the stream.
    assert stats["fragmented"] == 2 and stats["datagrams"] == 1 and stats["stream_fallback"] == 1, stats
    # ... and the echoes the same way back: the reversed 1452 and 8192 as fragments, reassembled by the client.
    assert back["fragmented"] >= 2 and stats["reassembled"] >= 2, (stats, back)


@pytest.fixture(scope="module", autouse=True)
def wifi() -> Iterator[Future[dict[str, Any]]]:
    """The wifi-profile run mostly waits (50 ms round trips, a slow lossy link): it starts in its own lab when the
    module does and runs beside the plain-path tests; its test, last in the file, collects it."""
    with ThreadPoolExecutor(1) as pool:
        yield pool.submit(_wireguard_on_wifi)


def _wireguard_on_wifi() -> dict[str, Any]:
    """Manual mode over the WAN lab's ``wifi`` link: WireGuard's pings and iperf3 both ways, the close summaries
    and how many frames the link lost meanwhile."""
    with WanPath(PROFILES["wifi"]) as path:
        before = path.link_stats()
        with TunnelInNamespaces(path, f"udp://127.0.0.1:{WG_PORT_B}") as tunnel, \
                WireGuardPair(path.ns("A"), path.ns("B"), CLIENT_LISTEN) as wg:
            first = ping(path.ns("A"), WG_IP["B"], 3, interval=0.5)
            found: dict[str, Any] = {"first": first, "wg": wg.show()}
            if first["received"]:
                found["pings"] = _pings(path, {"small": ("A", WG_IP["B"], 20, None),
                                               "full": ("A", WG_IP["B"], 10, 1392),
                                               "back": ("B", WG_IP["A"], 10, None)})
                found["iperf"] = _iperf_both_ways(path)
            tunnel.stop()
            assert tunnel.client is not None and tunnel.server is not None
            found.update(logs=tunnel.logs(), client=summary(tunnel.client.stderr),
                         server=summary(tunnel.server.stderr))
        after = path.link_stats()
    found["lost"] = sum(after[d]["drop_loss"] - before[d]["drop_loss"] for d in ("ab", "ba"))
    return found


def test_wireguard_through_the_tunnel_on_the_wifi_profile(wifi: Future[dict[str, Any]]) -> None:
    """Manual mode over the WAN lab's lossy, jittery ``wifi`` link: WireGuard's ping and iperf3 work both ways
    (some pings may be lost: the link loses 1 % each way), and full-size packets still travel as fragments."""
    found = wifi.result(timeout=240)
    logs = found["logs"]
    assert found["first"]["received"] >= 1, f"{found['first']['output']}\n{found['wg']}\n{logs}"
    for name, result in found["pings"].items():
        assert result["received"] >= result["sent"] * 0.7, f"{name}: {result['output']}\n{logs}"
        assert result["duplicates"] == 0, result["output"]
    for result in found["iperf"]:
        assert "error" not in result, f"{result.get('error')}\n{logs}"
        assert result["end"]["sum_received"]["bytes"] > 10_000, result["end"]  # it works; speed: bench_wireguard
    assert found["lost"] > 0, found["lost"]  # the link really lost packets under WireGuard
    client, server = found["client"], found["server"]
    assert client["fragmented"] > 0 and server["reassembled"] > 0, (client, server)
    assert server["fragmented"] > 0 and client["reassembled"] > 0, (client, server)
