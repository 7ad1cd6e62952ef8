"""iroh-mode command lines: key tools (outputs, file modes), option building, and one-line errors with exit
codes for bad keys, ids, allowlist files and flags."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from tests.iroh_mode.tunnels import make_key

from tunnel_cli.cli import TUNNEL, TUNNEL_RS, build_options, run
from tunnel_cli.iroh_network import DNS_SERVER_UNSUPPORTED
from tunnel_core.iroh_session.options import IrohClientOptions, IrohServerOptions
from tunnel_core.keys import endpoint_id_from_secret, format_endpoint_id
from tunnel_core.options import TunnelError

SERVER_ID = format_endpoint_id(endpoint_id_from_secret(bytes(range(32))))
SERVER_B32 = base64.b32encode(endpoint_id_from_secret(bytes(range(32)))).decode().rstrip("=").lower()


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], code: int, needle: str) -> str:
    assert run(argv) == code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ") and needle in lines[0], err
    return lines[0]


def test_generate_key_writes_0600_base64_and_prints_the_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "nested" / "server.key"
    assert run(["generate-iroh-key", "--output", str(key)]) == 0
    out, err = capsys.readouterr()
    raw = base64.b64decode(key.read_text(), validate=True)
    assert len(raw) == 32 and len(key.read_text()) == 44 and not key.read_text().endswith("\n")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert out == f"EndpointId: {format_endpoint_id(endpoint_id_from_secret(raw))}\n"
    assert f"Secret key saved to: {key}" in err

    assert run(["show-iroh-node-id", "--secret-file", str(key)]) == 0
    assert capsys.readouterr().out == f"{format_endpoint_id(endpoint_id_from_secret(raw))}\n"

    one_line_error(capsys, ["generate-iroh-key", "--output", str(key)], 2, "File already exists")
    key.chmod(0o644)
    assert run(["generate-iroh-key", "-o", str(key), "--force"]) == 0
    assert base64.b64decode(key.read_text()) != raw and stat.S_IMODE(key.stat().st_mode) == 0o600
    capsys.readouterr()

    assert run(["generate-iroh-key", "-o", "-"]) == 0
    out, err = capsys.readouterr()
    secret = base64.b64decode(out, validate=True)
    assert err.strip().endswith(f"EndpointId: {format_endpoint_id(endpoint_id_from_secret(secret))}")


def test_tunnel_rs_entry_point_and_key_tools(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key, node_id = make_key(tmp_path, "k", 3)
    assert run(["show-iroh-node-id", "-s", str(key)], program=TUNNEL_RS) == 0
    assert capsys.readouterr().out.strip() == node_id
    command, options = build_options(
        ["server", "--secret-file", str(key), "--allowed-tcp", "127.0.0.0/8", "--allowed-clients", SERVER_B32],
        program=TUNNEL_RS,
    )
    assert command == "server iroh" and isinstance(options, IrohServerOptions)
    assert options.allowed_clients == (bytes.fromhex(SERVER_ID),) and options.max_sessions == 100
    command, _ = build_options(["client", "iroh", "--protocol", "e2", "-n", SERVER_ID, "-s", "tcp://127.0.0.1:22",
                                "-t", "127.0.0.1:2222"], program=TUNNEL_RS)
    assert command == "client iroh"
    # With no auth option at all, tunnel-rs answers as its current upstream (v0.6, e4) does.
    with pytest.raises(TunnelError, match="Authentication requires --private-key-file"):
        build_options(["client", "-n", SERVER_ID, "-s", "tcp://127.0.0.1:22", "-t", "127.0.0.1:2222"],
                      program=TUNNEL_RS)


@pytest.mark.parametrize(
    ("content", "needle"),
    [("", "Secret key file is empty"), ("!!!!", "Invalid base64 in secret key"),
     (base64.b64encode(b"x" * 31).decode(), "Invalid secret key (must be 32 bytes)")],
)
def test_bad_key_files(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, needle: str) -> None:
    key = tmp_path / "bad.key"
    key.write_text(content)
    key.chmod(0o600)  # a secret file, as the key tools write it
    one_line_error(capsys, ["show-iroh-node-id", "-s", str(key)], 2, needle)
    one_line_error(capsys, ["server", "iroh", "--secret-file", str(key), "--allowed-tcp", "127.0.0.0/8",
                            "--allowed-clients", SERVER_ID], 2, needle)


def test_server_option_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key, _ = make_key(tmp_path, "s.key", 1)
    base = ["server", "iroh", "--secret-file", str(key), "--allowed-tcp", "127.0.0.0/8"]
    one_line_error(capsys, ["show-iroh-node-id", "-s", str(tmp_path / "missing")], 2, "Secret key file not found")
    one_line_error(capsys, base, 2, "Authentication required: specify --allowed-clients")
    one_line_error(capsys, [*base, "--allowed-clients", "nope"], 2, "Invalid --allowed-clients value: nope")
    bad_list = tmp_path / "clients.txt"
    bad_list.write_text(f"# ok\n{SERVER_ID}  # me\n\nnot-an-id # x\n")
    one_line_error(capsys, [*base, "--allowed-clients-file", str(bad_list)], 2,
                   f"Invalid NodeId at {bad_list}:4: not-an-id")
    one_line_error(capsys, [*base, "--allowed-clients-file", str(tmp_path / "none.txt")], 2, "not found")
    one_line_error(capsys, [*base, "--allowed-clients", SERVER_ID, "--dns-server", "https://dns.example/pkarr"], 2,
                   DNS_SERVER_UNSUPPORTED[:40])
    one_line_error(capsys, [*base, "--allowed-clients", SERVER_ID, "--max-sessions", "0"], 2, "--max-sessions")
    one_line_error(capsys, ["server", "iroh", "--secret-file", str(key), "--allowed-clients", SERVER_ID], 2,
                   "At least one --allowed-tcp or --allowed-udp")
    one_line_error(capsys, ["server", "iroh", "--allowed-tcp", "127.0.0.0/8", "--allowed-clients", SERVER_ID], 2,
                   "Server identity is required")
    one_line_error(capsys, [*base, "--allowed-clients", SERVER_ID, "--secret", ""], 2, "Cannot combine --secret")
    one_line_error(capsys, ["server", "iroh", "--secret", "", "--allowed-tcp", "10.0.0.0/8",
                            "--allowed-clients", SERVER_ID], 2, "Inline secret is empty")
    one_line_error(capsys, [*base, "--allowed-clients", SERVER_ID, "--relay-url", "http://abc.onion"], 2,
                   "SOCKS5 proxy required for .onion relay URLs")
    one_line_error(capsys, [*base, "--allowed-clients", SERVER_ID, "--relay-url", "http://abc.onion",
                            "--socks5-proxy", "socks5://127.0.0.1:9050"], 2, "socks5h")
    one_line_error(capsys, [*base, "--allowed-clients", SERVER_ID, "--relay-url", "ftp://x"], 2, "Invalid relay URL")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nobody yet\n")
    _, options = build_options([*base, "--allowed-clients-file", str(empty)], warn=lambda _m: None)
    assert isinstance(options, IrohServerOptions) and options.allowed_clients == ()


def test_client_option_errors_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["client", "iroh", "-s", "tcp://127.0.0.1:22", "-t", "127.0.0.1:2222"]
    one_line_error(capsys, base, 2, "server_node_id is required")
    one_line_error(capsys, [*base, "-n", SERVER_ID[:-1]], 2, "Invalid EndpointId format")
    one_line_error(capsys, ["client", "iroh", "-n", SERVER_ID, "-t", "127.0.0.1:1"], 2, "--source is required")
    one_line_error(capsys, ["client", "iroh", "-n", SERVER_ID, "-s", "ftp://h:1", "-t", "127.0.0.1:1"], 2,
                   "Invalid source")
    one_line_error(capsys, [*base, "-n", SERVER_ID, "--dns-server", "none"], 2, "No way to reach the server")
    one_line_error(capsys, [*base, "-n", SERVER_ID, "--server-addr", "host:1"], 2, "Invalid --server-addr")
    _, options = build_options([*base, "-n", SERVER_B32, "--server-addr", "127.0.0.1:7000", "--no-relay",
                                "--dns-server", "none"], program=TUNNEL)
    assert isinstance(options, IrohClientOptions)
    assert options.server_id.hex() == SERVER_ID and options.server_addrs == ("127.0.0.1:7000",)
    assert options.network.relays_disabled and not options.network.discovery and options.secret_key is None


def test_config_section_and_role_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key, _ = make_key(tmp_path, "s.key", 2)
    server = tmp_path / "server.toml"
    server.write_text(
        'role = "server"\nmode = "iroh"\n[iroh]\n'
        f'secret_file = "{key}"\nallowed_clients = ["{SERVER_ID}"]\nmax_sessions = 7\n'
        'relay_urls = ["http://127.0.0.1:3340"]\n[iroh.allowed_sources]\ntcp = ["127.0.0.0/8"]\n'
    )
    command, options = build_options(["server", "-c", str(server)])
    assert command == "server iroh" and isinstance(options, IrohServerOptions)
    assert options.max_sessions == 7 and options.allowed_tcp == ("127.0.0.0/8",)
    assert options.network.relay_urls == ("http://127.0.0.1:3340",)
    _, options = build_options(["server", "iroh", "-c", str(server), "--max-sessions", "3"])
    assert isinstance(options, IrohServerOptions) and options.max_sessions == 3
    one_line_error(capsys, ["client", "iroh", "-c", str(server)], 2, 'Config file has role = "server"')

    client = tmp_path / "client.toml"
    client.write_text(f'role = "client"\nmode = "iroh"\n[iroh]\nserver_node_id = "{SERVER_ID}"\n'
                      'source = "udp://127.0.0.1:53"\ntarget = "127.0.0.1:5353"\nmax_sessions = 1\n')
    one_line_error(capsys, ["client", "iroh", "-c", str(client)], 2, "'max_sessions' is a server-only field")
    client.write_text(f'role = "client"\nmode = "iroh"\n[iroh]\nserver_node_id = "{SERVER_ID}"\n'
                      'request_source = "udp://127.0.0.1:53"\ntarget = "127.0.0.1:5353"\n')
    _, options = build_options(["client", "-c", str(client)])
    assert isinstance(options, IrohClientOptions) and options.source == "udp://127.0.0.1:53"
    server.write_text('role = "server"\nmode = "iroh"\n[iroh]\ntarget = "127.0.0.1:1"\n')
    one_line_error(capsys, ["server", "iroh", "-c", str(server)], 2, "client-only fields")


def test_cli_default_matches_the_core_constant() -> None:
    from tunnel_cli import iroh_options
    from tunnel_core.iroh_session import constants

    assert iroh_options.DEFAULT_MAX_SESSIONS == constants.DEFAULT_MAX_SESSIONS


def test_client_reconnect_timeout_flag_and_config_key(tmp_path: Path) -> None:
    base = ["client", "iroh", "--protocol", "e2", "-n", SERVER_ID, "-s", "tcp://127.0.0.1:22", "-t", "127.0.0.1:2222",
            "--relay-url", "http://127.0.0.1:3340"]
    _, options = build_options(base)
    assert isinstance(options, IrohClientOptions) and options.reconnect_timeout == 300.0
    _, options = build_options([*base, "--reconnect-timeout", "0"])
    assert isinstance(options, IrohClientOptions) and options.reconnect_timeout == 0.0
    with pytest.raises(TunnelError, match="Invalid --reconnect-timeout 'later'"):
        build_options([*base, "--reconnect-timeout", "later"])
    client = tmp_path / "client.toml"
    client.write_text(f'role = "client"\nmode = "iroh"\n[iroh]\nserver_node_id = "{SERVER_ID}"\nprotocol = "e2"\n'
                      'source = "tcp://127.0.0.1:22"\ntarget = "127.0.0.1:2222"\nreconnect_timeout = "90s"\n'
                      'relay_urls = ["http://127.0.0.1:3340"]\n')
    _, options = build_options(["client", "-c", str(client)])
    assert isinstance(options, IrohClientOptions) and options.reconnect_timeout == 90.0
    _, options = build_options(["client", "iroh", "-c", str(client), "--reconnect-timeout", "5m"])
    assert isinstance(options, IrohClientOptions) and options.reconnect_timeout == 300.0
