"""The nostr CLI: key tools, validation with the reference's messages, config sections, and real processes."""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
from tests.nostr.conftest import TEST_KIND, LocalRelay, free_port
from tests.nostr.procs import Proc

from tunnel_cli.cli import TUNNEL, TUNNEL_RS_ICE, build_options, run
from tunnel_core.nostr.keys import SecretKey
from tunnel_core.nostr.options import NostrClientOptions, NostrServerOptions
from tunnel_core.options import TunnelError

SERVER = SecretKey.generate(os.urandom)
CLIENT = SecretKey.generate(os.urandom)


def test_generate_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "sub" / "key.nsec"
    assert run(["generate-nostr-key", "--output", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("npub: npub1") and f"nsec saved to: {path}" in err
    content = path.read_text()
    assert content.startswith("nsec1") and not content.endswith("\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert run(["show-npub", "--nsec-file", str(path)]) == 0
    assert capsys.readouterr().out.strip() == out.strip().removeprefix("npub: ")
    assert run(["generate-nostr-key", "-o", str(path)], program=TUNNEL_RS_ICE) == 2  # usage, as the iroh key tools
    assert "File already exists" in capsys.readouterr().err
    assert run(["generate-nostr-key", "-o", str(path), "--force"]) == 0
    capsys.readouterr()
    assert run(["generate-nostr-key", "-o", "-"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("nsec1") and err.startswith("npub: npub1")
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    assert run(["show-npub", "-n", str(empty)]) == 2
    assert f"nsec file is empty: {empty}" in capsys.readouterr().err


BASE_SERVER = ["server", "nostr", "--nsec", SERVER.nsec, "--peer-npub", CLIENT.public_key.npub,
               "--relay", "ws://127.0.0.1:1", "--no-stun"]
BASE_CLIENT = ["client", "nostr", "--nsec", CLIENT.nsec, "--peer-npub", SERVER.public_key.hex,
               "--relay", "ws://127.0.0.1:1", "--no-stun"]


@pytest.mark.parametrize(("argv", "message"), [
    (BASE_SERVER, "At least one of --allowed-tcp or --allowed-udp must be specified for nostr server mode."),
    (["server", "nostr", "--allowed-tcp", "127.0.0.0/8"], "nsec is required. Provide via --nsec/--nsec-file or "
     "in config file (nsec/nsec_file). Use 'tunnel generate-nostr-key' to create one."),
    (["server", "nostr", "--allowed-tcp", "127.0.0.0/8", "--nsec", SERVER.nsec],
     "peer-npub is required. Provide via --peer-npub or in config file."),
    ([*BASE_SERVER, "--allowed-tcp", "127.0.0.0/8", "--nsec-file", "/x"],
     "Cannot combine --nsec with --nsec-file (or nsec and nsec_file in config)."),
    (["server", "nostr", "--allowed-tcp", "10.0.0.0/8", "--nsec", "nope", "--peer-npub", CLIENT.public_key.hex],
     "Failed to parse private key (expected nsec or hex format)"),
    (["server", "nostr", "--allowed-tcp", "10.0.0.0/8", "--nsec-file", "/nonexistent/k", "--peer-npub", "x"],
     "Failed to read nsec file: /nonexistent/k"),
    ([*BASE_CLIENT, "--source", "tcp://127.0.0.1:22"], "target is required. Provide via --target or in config file."),
    ([*BASE_CLIENT, "--target", "127.0.0.1:2222"], "--source is required for nostr client mode."),
    ([*BASE_CLIENT, "--target", "127.0.0.1:2222", "--source", "udp://127.0.0.1:53"],
     "Source URL must use tcp:// scheme for TCP client (got 'udp://')"),
    ([*BASE_CLIENT, "--target", "127.0.0.1:2222", "--source", "tcp://127.0.0.1:22", "--relay", "http://x"],
     "Invalid relay URL"),
    ([*BASE_SERVER, "--allowed-tcp", "10.0.0.0/8", "--stun-server", "127.0.0.1:3478"],
     "Cannot combine --no-stun with --stun-server"),
])
def test_validation_messages(argv: list[str], message: str) -> None:
    with pytest.raises(TunnelError) as info:
        build_options(argv, program=TUNNEL)
    assert message in info.value.message
    assert "generate-nostr-key" not in message or "tunnel-rs-ice" not in info.value.message


def test_options_and_precedence() -> None:
    cmd, opts = build_options([*BASE_SERVER, "--allowed-tcp", "127.0.0.0/8", "--max-sessions", "0",
                               "--relay", "ws://127.0.0.1:2", "--event-kind", "24243", "--host-candidate",
                               "127.0.0.1"], program=TUNNEL_RS_ICE)
    assert cmd == "server nostr" and isinstance(opts, NostrServerOptions)
    assert opts.max_sessions == 0 and opts.relays == ("ws://127.0.0.1:1", "ws://127.0.0.1:2")
    assert opts.event_kind == 24243 and opts.ice.stun_servers == () and opts.ice.host_candidates == ("127.0.0.1",)
    assert not opts.plaintext
    cmd, copts = build_options(["client", "ice-nostr", *BASE_CLIENT[2:], "--target", "udp://127.0.0.1:0",
                                "--source", "udp://127.0.0.1:53", "--plaintext-compat"], program=TUNNEL)
    assert cmd == "client nostr" and isinstance(copts, NostrClientOptions)
    assert copts.republish_interval == 5.0 and copts.max_wait == 120.0 and copts.plaintext


@pytest.mark.parametrize(("text", "seconds"), [("0", 0.0), ("90", 90.0), ("90s", 90.0), ("5m", 300.0), ("1h", 3600.0),
                                               ("2.5", 2.5)])
def test_reconnect_timeout_flag(text: str, seconds: float) -> None:
    client = [*BASE_CLIENT, "--target", "127.0.0.1:2222", "--source", "tcp://127.0.0.1:22"]
    _, default = build_options(client, program=TUNNEL)
    assert isinstance(default, NostrClientOptions) and default.reconnect_timeout == 300.0
    _, opts = build_options([*client, "--reconnect-timeout", text], program=TUNNEL)
    assert isinstance(opts, NostrClientOptions) and opts.reconnect_timeout == seconds


@pytest.mark.parametrize("text", ["-1", "soon", "5d", "25h", "nan", ""])
def test_reconnect_timeout_flag_errors(text: str) -> None:
    client = [*BASE_CLIENT, "--target", "127.0.0.1:2222", "--source", "tcp://127.0.0.1:22"]
    with pytest.raises(TunnelError) as info:
        build_options([*client, "--reconnect-timeout", text], program=TUNNEL)
    assert info.value.message.startswith(f"Invalid --reconnect-timeout '{text}'")
    assert info.value.exit_code == 2


def test_reconnect_timeout_config_key_and_flag_precedence(tmp_path: Path) -> None:
    conf = _nostr_config(tmp_path, 'reconnect_timeout = "2m"')
    _, opts = build_options(["client", "nostr", "--config", str(conf)], program=TUNNEL)
    assert isinstance(opts, NostrClientOptions) and opts.reconnect_timeout == 120.0
    _, opts = build_options(["client", "nostr", "--config", str(conf), "--reconnect-timeout", "0"], program=TUNNEL)
    assert isinstance(opts, NostrClientOptions) and opts.reconnect_timeout == 0.0


def test_config_section(tmp_path: Path) -> None:
    key = tmp_path / "s.nsec"
    key.write_text(SERVER.nsec + "\n")
    conf = tmp_path / "server_ice.toml"
    conf.write_text(f'''role = "server"
mode = "ice-nostr"
[ice-nostr]
nsec_file = "{key}"
peer_npub = "{CLIENT.public_key.npub}"
relays = ["ws://127.0.0.1:7777"]
stun_servers = []
max_sessions = 3
[ice-nostr.allowed_sources]
tcp = ["127.0.0.0/8"]
''')
    cmd, opts = build_options(["server", "-c", str(conf)], program=TUNNEL_RS_ICE)
    assert cmd == "server nostr" and isinstance(opts, NostrServerOptions)
    assert (opts.nsec, opts.max_sessions, opts.relays, opts.ice.stun_servers) == (
        SERVER.nsec, 3, ("ws://127.0.0.1:7777",), ())
    conf.write_text(conf.read_text().replace('role = "server"', 'role = "client"'))
    with pytest.raises(TunnelError, match="'allowed_sources' is a server-only field"):
        build_options(["client", "-c", str(conf)], program=TUNNEL_RS_ICE)


def test_turn_flags(tmp_path: Path) -> None:
    secret = tmp_path / "turn-password"
    secret.write_text("s3cret\nignored second line\n")
    turn = ["--turn-server", "turn:127.0.0.1:3478", "--turn-server", "turn:localhost:3479", "--turn-user", "u"]
    _, opts = build_options([*BASE_SERVER, "--allowed-tcp", "127.0.0.0/8", *turn, "--turn-password-file",
                             str(secret)], program=TUNNEL)
    assert isinstance(opts, NostrServerOptions)
    assert opts.ice.turn_servers == ("turn:127.0.0.1:3478", "turn:localhost:3479")
    assert (opts.ice.turn_user, opts.ice.turn_password) == ("u", "s3cret")
    _, copts = build_options([*BASE_CLIENT, "--target", "127.0.0.1:2222", "--source", "tcp://127.0.0.1:22", *turn,
                              "--turn-password", "inline"], program=TUNNEL_RS_ICE)
    assert isinstance(copts, NostrClientOptions)
    assert (copts.ice.turn_user, copts.ice.turn_password) == ("u", "inline")
    _, plain = build_options([*BASE_SERVER, "--allowed-tcp", "127.0.0.0/8"], program=TUNNEL)
    assert isinstance(plain, NostrServerOptions)
    assert (plain.ice.turn_servers, plain.ice.turn_user, plain.ice.turn_password) == ((), None, None)


@pytest.mark.parametrize(("extra", "message"), [
    (["--turn-server", "stun:127.0.0.1:3478", "--turn-user", "u", "--turn-password", "p"],
     "Invalid TURN server 'stun:127.0.0.1:3478' in --turn-server. Expected format: turn:HOST:PORT"),
    (["--turn-server", "turn:127.0.0.1:3478"], "--turn-server requires credentials"),
    (["--turn-server", "turn:127.0.0.1:3478", "--turn-user", "u"], "--turn-server requires credentials"),
    (["--turn-user", "u", "--turn-password", "p"], "--turn-user/--turn-password need at least one --turn-server"),
    (["--turn-server", "turn:127.0.0.1:3478", "--turn-user", "u", "--turn-password", "p", "--turn-password-file",
      "/x"], "Cannot use both --turn-password and --turn-password-file"),
    (["--turn-server", "turn:127.0.0.1:3478", "--turn-user", "u", "--turn-password-file", "/nonexistent/pw"],
     "Cannot read --turn-password-file '/nonexistent/pw'"),
])
def test_turn_flag_errors(extra: list[str], message: str) -> None:
    with pytest.raises(TunnelError) as info:
        build_options([*BASE_SERVER, "--allowed-tcp", "127.0.0.0/8", *extra], program=TUNNEL)
    assert message in info.value.message
    assert "secret-password" not in info.value.message


def _nostr_config(tmp_path: Path, turn_lines: str) -> Path:
    conf = tmp_path / "client.toml"
    conf.write_text(f'''role = "client"
mode = "nostr"
[nostr]
nsec = "{CLIENT.nsec}"
peer_npub = "{SERVER.public_key.npub}"
relays = ["ws://127.0.0.1:7777"]
stun_servers = []
source = "tcp://127.0.0.1:22"
target = "127.0.0.1:2222"
{turn_lines}
''')
    return conf


def test_turn_config_keys(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    conf = _nostr_config(tmp_path, f'turn_servers = ["turn:127.0.0.1:3478"]\nturn_user = "cfg"\n'
                                   f'turn_password_file = "{pw}"')
    _, opts = build_options(["client", "-c", str(conf)], program=TUNNEL)
    assert isinstance(opts, NostrClientOptions)
    assert opts.ice.turn_servers == ("turn:127.0.0.1:3478",)
    assert (opts.ice.turn_user, opts.ice.turn_password) == ("cfg", "from-file")
    # The command line replaces the config's servers and credentials.
    _, over = build_options(["client", "-c", str(conf), "--turn-server", "turn:127.0.0.2:3478", "--turn-user",
                             "cli", "--turn-password", "cli-pw"], program=TUNNEL)
    assert isinstance(over, NostrClientOptions)
    assert (over.ice.turn_servers, over.ice.turn_user, over.ice.turn_password) == (
        ("turn:127.0.0.2:3478",), "cli", "cli-pw")
    inline = _nostr_config(tmp_path, 'turn_servers = ["turn:127.0.0.1:3478"]\nturn_user = "cfg"\n'
                                     'turn_password = "in-config"')
    _, opts2 = build_options(["client", "-c", str(inline)], program=TUNNEL)
    assert isinstance(opts2, NostrClientOptions) and opts2.ice.turn_password == "in-config"


@pytest.mark.parametrize(("lines", "message"), [
    ('turn_servers = ["turn:host:99999"]\nturn_user = "u"\nturn_password = "p"',
     "Invalid TURN server 'turn:host:99999' in [nostr] turn_servers"),
    ('turn_servers = ["turn:127.0.0.1:3478"]\nturn_user = "u"\nturn_password = "secret-password"\n'
     'turn_password_file = "/x"', "[nostr] Use only one of 'turn_password' or 'turn_password_file'."),
    ('turn_servers = ["turn:127.0.0.1:3478"]\nturn_user = "u"', "--turn-server requires credentials"),
    ('turn_servers = "turn:127.0.0.1:3478"', "'turn_servers' must be a list"),
    ('turn_servers = ["turn:127.0.0.1:3478"]\nturn_user = "u"\nturn_password_file = "/nonexistent/pw"',
     "Cannot read [nostr] turn_password_file '/nonexistent/pw'"),
])
def test_turn_config_errors(tmp_path: Path, lines: str, message: str) -> None:
    with pytest.raises(TunnelError) as info:
        build_options(["client", "-c", str(_nostr_config(tmp_path, lines))], program=TUNNEL)
    assert message in info.value.message
    assert "secret-password" not in info.value.message


# ---------------------------------------------------------------------------------------------- processes




@pytest.mark.timeout(60)
def test_processes_tcp_tunnel(relay: LocalRelay, dead_relay_url: str) -> None:
    echo = socket.socket()
    echo.bind(("127.0.0.1", 0))
    echo.listen()
    eport = echo.getsockname()[1]

    def serve() -> None:
        conn, _ = echo.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    common = ["--relay", dead_relay_url, "--relay", relay.url, "--no-stun", "--host-candidate", "127.0.0.1",
              "--event-kind", str(TEST_KIND)]
    server = Proc(["server", "nostr", "--nsec", SERVER.nsec, "--peer-npub", CLIENT.public_key.npub,
                    "--allowed-tcp", "127.0.0.0/8", *common])
    client = None
    try:
        server.wait_for("Waiting for tunnel requests (max sessions: 10)...")
        port = free_port()
        started = time.monotonic()
        client = Proc(["client", "nostr", "--nsec", CLIENT.nsec, "--peer-npub", SERVER.public_key.npub,
                        "--source", f"tcp://127.0.0.1:{eport}", "--target", f"127.0.0.1:{port}", *common])
        client.wait_for("Listening on TCP")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"x")
            assert sock.recv(10) == b"x"
            elapsed = time.monotonic() - started
            print(f"\nnostr connect time, processes (client start incl. interpreter start-up to first "
                  f"forwarded byte): {elapsed:.3f} s")
            assert elapsed < 4.0
        server.wait_for("Client connected over QUIC.")
    finally:
        codes = [client.stop() if client else 0, server.stop()]
        echo.close()
    assert codes == [0, 0], server.text
