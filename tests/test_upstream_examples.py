"""tunnel-rs' example configs (v0.6.1 server/client/relay, tag 0.2.4 ICE) load with ours and mean the same.

The files in tests/fixtures/upstream/ carry the documented keys and values (written for this project); each test
builds the options the way the real command does and checks every value the example sets.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tunnel_cli import checks, iroh_env
from tunnel_cli.cli import TUNNEL, TUNNEL_RS, TUNNEL_RS_ICE, build_options
from tunnel_cli.relay_cmd import build_relay_options
from tunnel_core.iroh_session.auth import public_key_from_seed
from tunnel_core.iroh_session.authkeys import format_private_key, format_public_key
from tunnel_core.iroh_session.options import IrohClientOptions, IrohServerOptions
from tunnel_core.keys import parse_endpoint_id
from tunnel_core.options import ManualClientOptions, ManualServerOptions, TunnelError

FIXTURES = Path(__file__).parent / "fixtures" / "upstream"
SEED = bytes([7] * 32)


@pytest.fixture(autouse=True)
def _home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(checks, "local_interfaces", lambda: ["lo"])
    for name in iroh_env.NAMES:
        monkeypatch.delenv(name, raising=False)


def fixture(name: str, tmp_path: Path) -> str:
    return str(shutil.copy(FIXTURES / name, tmp_path / name))


def test_server_example_v061(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.iroh_mode.tunnels import make_key

    make_key(tmp_path, "server.key", 4)  # secret_file = "./server.key", relative to the working directory
    path = fixture("server.toml", tmp_path)
    # authorized_keys_file names /etc/tunnel-rs/authorized_keys: the file is read from there ...
    with pytest.raises(TunnelError, match="Authorized keys file not found: /etc/tunnel-rs/authorized_keys"):
        build_options(["server", "-c", path], program=TUNNEL_RS)
    # ... and the environment (which beats the config, as upstream) points it at a real one here.
    keys = tmp_path / "authorized_keys"
    keys.write_text(format_public_key(public_key_from_seed(SEED), "alice laptop") + "\n")
    monkeypatch.setenv(iroh_env.AUTHORIZED_KEYS_FILE, str(keys))
    for program in (TUNNEL_RS, TUNNEL):
        command, options = build_options(["server", "-c", path], program=program)
        assert command == "server iroh" and isinstance(options, IrohServerOptions)
        assert options.protocol == "e4" and options.max_sessions == 100
        assert options.allowed_tcp == ("127.0.0.0/8", "192.168.0.0/16", "::1/128")
        assert options.allowed_udp == ("10.0.0.0/8",)
        assert options.authorized_key_comments == ((public_key_from_seed(SEED), "alice laptop"),)
        assert options.network.relay_urls == () and options.network.discovery  # default relays, n0 lookup


def test_client_example_v061(tmp_path: Path) -> None:
    key = tmp_path / "home" / ".config" / "tunnel-rs" / "client.key"  # "~/.config/tunnel-rs/client.key"
    key.parent.mkdir(parents=True)
    key.write_text(format_private_key(SEED, "alice laptop"))
    key.chmod(0o600)
    path = fixture("client.toml", tmp_path)
    command, options = build_options(["client", "-c", path, "--source", "tcp://127.0.0.1:22", "--target",
                                      "127.0.0.1:2222"], program=TUNNEL_RS)
    assert command == "client iroh" and isinstance(options, IrohClientOptions)
    assert options.protocol == "e4" and options.auth_seed == SEED
    assert options.server_id == parse_endpoint_id("2xnbkpbc7izsilvewd7c62w7wnwziacmpfwvhcrya5nt76dqkpga")
    assert (options.source, options.target) == ("tcp://127.0.0.1:22", "127.0.0.1:2222")


def test_relay_prod_example_v061(tmp_path: Path) -> None:
    options = build_relay_options(["-c", fixture("relay-prod.toml", tmp_path)])
    assert options.bind == ("::", 3340) and options.tls_cert is None
    assert not options.policy.tokens and options.policy.allowed_endpoints is None
    # The access section the example describes in its comments, switched on.
    token_file = tmp_path / "access.toml"
    token_file.write_text('http_bind_addr = "[::]:3340"\nenable_metrics = false\n'
                          'access.shared_token = ["change-me-to-a-long-random-secret"]\n')
    assert build_relay_options(["-c", str(token_file)]).policy.tokens == {"change-me-to-a-long-random-secret"}
    metrics = tmp_path / "metrics.toml"
    metrics.write_text('http_bind_addr = "[::]:3340"\nenable_metrics = true\n')
    with pytest.raises(TunnelError, match="no metrics server"):
        build_relay_options(["-c", str(metrics)])


def test_ice_examples_024(tmp_path: Path) -> None:
    command, server = build_options(["server", "-c", fixture("server_ice.toml", tmp_path)], program=TUNNEL_RS_ICE)
    assert command == "server manual" and isinstance(server, ManualServerOptions)
    assert server.allowed_tcp == ("127.0.0.0/8", "192.168.0.0/16") and server.allowed_udp == ("10.0.0.0/8",)
    assert server.ice.stun_servers == ("stun.l.google.com:19302", "stun1.l.google.com:19302")
    command, client = build_options(["client", "-c", fixture("client_ice.toml", tmp_path), "manual", "--source",
                                     "tcp://127.0.0.1:5000", "--target", "127.0.0.1:6000"], program=TUNNEL_RS_ICE)
    assert command == "client manual" and isinstance(client, ManualClientOptions)
    assert client.ice.stun_servers == ("stun.l.google.com:19302", "stun1.l.google.com:19302")
    assert (client.source, client.target) == ("tcp://127.0.0.1:5000", "127.0.0.1:6000")
