"""`--congestion` and the `congestion` config key of the ICE modes (issue 13), and how they reach QUIC."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tunnel_cli import config as cfg
from tunnel_cli.manual_section import manual_section
from tunnel_core import assembly
from tunnel_core.quic.bbr import BbrCongestionControl
from tunnel_core.quic.config import DEFAULT_CONGESTION
from tunnel_core.quic.pmtu import ETHERNET_UDP_PAYLOAD_V4, ETHERNET_UDP_PAYLOAD_V6

TUNNEL = [str(Path(sys.executable).with_name("tunnel"))]


def _manual(tmp_path: Path, value: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f'role = "server"\nmode = "manual"\n\n[manual]\ncongestion = {value}\n')
    return path


def test_the_config_key_is_read_and_checked(tmp_path: Path) -> None:
    section = manual_section(cfg.load_config(_manual(tmp_path, '"bbr"')), "server")
    assert section.congestion == "bbr"
    with pytest.raises(cfg.TunnelError, match=r"\[manual\] 'congestion' must be one of bbr, cubic, reno"):
        manual_section(cfg.load_config(_manual(tmp_path, '"vegas"')), "server")


@pytest.mark.parametrize("args", [["--congestion", "vegas"], ["--config", "{config}"]])
def test_a_bad_choice_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    args = [a.replace("{config}", str(_manual(tmp_path, "3"))) for a in args]
    done = subprocess.run([*TUNNEL, "server", "manual", *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert done.stderr.startswith("Error: ") and "Traceback" not in done.stderr
    assert "bbr" in done.stderr


def test_the_choice_reaches_the_quic_connection() -> None:
    quic = assembly.new_quic(is_client=True, odcid=None, identity=None, expected_fingerprint=None,
                             packet_size=1350, congestion="bbr", pmtu_ceiling=1472)
    assert isinstance(quic._loss._cc, BbrCongestionControl)
    assert quic.pmtu is not None and quic.pmtu.ceiling == 1472
    default = assembly.new_quic(is_client=True, odcid=None, identity=None, expected_fingerprint=None,
                                packet_size=1350)
    assert default._configuration.congestion_control_algorithm == DEFAULT_CONGESTION
    assert default.pmtu is None


def test_pmtu_discovery_runs_only_on_real_paths_with_no_configured_size() -> None:
    assert assembly.pmtu_ceiling_for(None, ("192.0.2.1", 1), ("198.51.100.2", 2)) == ETHERNET_UDP_PAYLOAD_V4
    assert assembly.pmtu_ceiling_for(None, ("2001:db8::1", 1), ("2001:db8::2", 2)) == ETHERNET_UDP_PAYLOAD_V6
    assert assembly.pmtu_ceiling_for(1300, ("192.0.2.1", 1), ("198.51.100.2", 2)) is None
    assert assembly.pmtu_ceiling_for(None, ("127.0.0.1", 1), ("127.0.0.1", 2)) is None
