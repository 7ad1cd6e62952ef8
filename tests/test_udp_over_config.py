"""`--udp-over` and the `udp_over` config key (issue 14, docs/datagrams.md) in every mode, and how they reach QUIC."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tunnel_cli import config as cfg
from tunnel_cli.manual_section import manual_section
from tunnel_cli.nostr_cmd import nostr_section
from tunnel_core import assembly
from tunnel_core.keys import format_secret_key

TUNNEL = [str(Path(sys.executable).with_name("tunnel"))]


def _config(tmp_path: Path, mode: str, value: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f'role = "server"\nmode = "{mode}"\n\n[{mode}]\nudp_over = {value}\n')
    return path


@pytest.mark.parametrize("mode,read", [("manual", manual_section), ("nostr", nostr_section)])
def test_the_config_key_is_read_and_checked(tmp_path: Path, mode: str, read: object) -> None:
    assert callable(read)
    assert read(cfg.load_config(_config(tmp_path, mode, '"stream"')), "server").udp_over == "stream"
    assert read(cfg.load_config(_config(tmp_path, mode, '"datagrams"')), "server").udp_over == "datagrams"
    with pytest.raises(cfg.TunnelError, match=rf"\[{mode}\] 'udp_over' must be one of datagrams, stream"):
        read(cfg.load_config(_config(tmp_path, mode, '"pigeon"')), "server")


@pytest.mark.parametrize("args", [
    ["server", "manual", "--allowed-udp", "127.0.0.0/8", "--udp-over", "pigeon"],
    ["server", "iroh", "--allowed-udp", "127.0.0.0/8", "--udp-over", "pigeon"],
    ["server", "manual", "--config", "{manual}"],
    ["server", "iroh", "--config", "{iroh}", "--secret-file", "{key}", "--allowed-udp", "127.0.0.0/8",
     "--allowed-clients", "{key_id}"],
])
def test_a_bad_choice_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    manual = _config(tmp_path, "manual", "3")
    iroh = tmp_path / "iroh.toml"
    iroh.write_text('role = "server"\nmode = "iroh"\n\n[iroh]\nudp_over = "pigeon"\n')
    key = tmp_path / "server.key"
    key.write_text(format_secret_key(bytes(range(32))))
    key.chmod(0o600)
    args = [a.replace("{manual}", str(manual)).replace("{iroh}", str(iroh)).replace("{key}", str(key))
            .replace("{key_id}", "00" * 32) for a in args]
    done = subprocess.run([*TUNNEL, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("Error: ") and "Traceback" not in done.stderr
    assert "stream" in done.stderr or "--udp-over" in done.stderr, done.stderr


def test_the_choice_reaches_the_quic_connection() -> None:
    """"stream" builds QUIC without the datagram parameters, so negotiation fails on both ends (docs/datagrams.md)."""
    old = assembly.new_quic(is_client=True, odcid=None, identity=None, expected_fingerprint=None,
                            packet_size=1350, datagrams=False)
    new = assembly.new_quic(is_client=True, odcid=None, identity=None, expected_fingerprint=None, packet_size=1350)
    assert old._configuration.max_datagram_frame_size is None
    assert new._configuration.max_datagram_frame_size
