"""Real iroh 1.4 endpoints (PyPI ``iroh``) accept our relay: home relay, relay-only addressing, blocked UDP, tokens.

Each scenario runs in its own network namespace (``unshare -n``, only ``lo``) so iroh sees no address but
loopback and the nftables rule of the blocked case cannot affect anything else on the machine. The
scenarios (plus the iroh-mode tunnel through `tunnel relay`) run in parallel to keep the file within a few seconds.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

SCENARIO = pathlib.Path(__file__).with_name("iroh_scenario.py")
ROOT = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    procs = {
        mode: subprocess.Popen(["unshare", "-n", sys.executable, str(SCENARIO), mode], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for mode in ("direct", "blocked", "token", "tunnel")
    }
    out = {}
    for mode, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=90)
        assert proc.returncode == 0, f"{mode} scenario failed:\n{stderr.decode()[-3000:]}"
        out[mode] = json.loads(stdout.decode().strip().splitlines()[-1])
    return out


def test_endpoints_go_online_and_connect_by_id_and_relay_url(results: dict[str, dict]) -> None:
    for mode in ("direct", "blocked"):
        result = results[mode]
        assert result["home_relay"].startswith("http://127.0.0.1:")
        assert result["stream_echo_MBps"] > 0 and result["datagram_rtt_ms_median"] > 0
        assert result["path_at_connect"] in ("relay", "direct")


def test_blocked_udp_stays_on_relay_and_flows(results: dict[str, dict]) -> None:
    blocked = results["blocked"]
    assert blocked["path_final"] == "relay"
    assert blocked["paths"] == ["relay"]
    # Both directions of the 2 MiB stream echo crossed the relay.
    assert blocked["relay_bytes_forwarded"] > 4 * 1024 * 1024


def test_with_udp_allowed_path_moves_to_direct(results: dict[str, dict]) -> None:
    direct = results["direct"]
    assert direct["path_final"] == "direct"
    assert "ip" in direct["paths"]


def test_wrong_token_refused_right_token_online(results: dict[str, dict]) -> None:
    token = results["token"]
    assert token["wrong_token_online"] is False
    assert token["denied"] >= 1
    assert token["right_token_online"] is True


def test_iroh_mode_tunnel_runs_through_the_relay(results: dict[str, dict]) -> None:
    tunnel = results["tunnel"]
    assert tunnel["echo_ok"] is True
    assert tunnel["relay_clients"] == 2
    # UDP is dropped in the namespace, so the 1 MiB echo (both directions) can only have crossed the relay.
    assert tunnel["relay_bytes_forwarded"] > 2 * 1024 * 1024
