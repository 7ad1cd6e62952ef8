"""The command line: parse -> config -> validate -> options, error lines and exit codes, both entry points.

The runner (tunnel_asyncio.manual) is replaced by a recorder here: these tests cover everything that happens
before a socket is opened, plus how main() reports what the runner raises.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunnel_asyncio import cli as entry
from tunnel_cli import checks, cli, output
from tunnel_core.options import (
    DEFAULT_STUN_SERVERS,
    ExitCode,
    IceOptions,
    ManualClientOptions,
    ManualServerOptions,
    TunnelError,
)

IFACES = ("lo", "eth0")
ONLY_ONE_SOURCE = "Only one of -c/--config, --default-config, or --config-stdin may be used"


def build(*argv: str, program: cli.Program = cli.TUNNEL, warn=None):
    return cli.build_options(list(argv), program=program, warn=warn, interfaces=lambda: IFACES)


def build_error(*argv: str, program: cli.Program = cli.TUNNEL) -> str:
    with pytest.raises(TunnelError) as info:
        build(*argv, program=program)
    assert info.value.exit_code == ExitCode.USAGE
    return info.value.message


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test may read the developer's real ~/.config, configure global logging, or run a real tunnel."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(output, "configure_logging", lambda: None)
    monkeypatch.setattr(checks, "local_interfaces", lambda: list(IFACES))


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.raises: BaseException | None = None

    def _run(self, kind: str, opts: object) -> None:
        self.calls.append((kind, opts))
        if self.raises is not None:
            raise self.raises


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    """A stand-in tunnel_asyncio.manual, whether or not the real one exists yet."""
    recorder = Recorder()
    fake = types.ModuleType("tunnel_asyncio.manual")
    fake.run_manual_server = lambda opts: recorder._run("server", opts)  # type: ignore[attr-defined]
    fake.run_manual_client = lambda opts: recorder._run("client", opts)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tunnel_asyncio.manual", fake)
    yield recorder


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


SERVER_TOML = """
role = "server"
mode = "manual"
[manual]
stun_servers = ["stun.example.test:3478"]
host_candidates = ["eth0"]
packet_size = 1400
[manual.allowed_sources]
tcp = ["127.0.0.0/8"]
udp = ["10.0.0.0/8"]
"""

CLIENT_TOML = """
role = "client"
mode = "manual"
[manual]
stun_servers = []
request_source = "tcp://127.0.0.1:22"
target = "127.0.0.1:2222"
"""


NSEC_REQUIRED = (
    "nsec is required. Provide via --nsec/--nsec-file or in config file (nsec/nsec_file). "
    "Use 'tunnel generate-nostr-key' to create one."
)

# ---------------------------------------------------------------------------------------------- options


def test_server_flags_become_options() -> None:
    command, opts = build(
        "server", "manual", "--allowed-tcp", "127.0.0.0/8", "--allowed-tcp", "::1/128", "--allowed-udp",
        "10.0.0.0/8", "--stun-server", "127.0.0.1:3478", "--host-candidate", "127.0.0.1",
        "--host-candidate", "lo", "--packet-size", "1500",
    )
    assert command == "server manual"
    assert opts == ManualServerOptions(
        allowed_tcp=("127.0.0.0/8", "::1/128"),
        allowed_udp=("10.0.0.0/8",),
        ice=IceOptions(stun_servers=("127.0.0.1:3478",), host_candidates=("127.0.0.1", "lo"), packet_size=1500),
    )


def test_client_flags_become_options() -> None:
    command, opts = build("client", "manual", "-s", "tcp://127.0.0.1:22", "-t", "127.0.0.1:2222", "--no-stun")
    assert command == "client manual"
    assert opts == ManualClientOptions(source="tcp://127.0.0.1:22", target="127.0.0.1:2222", ice=IceOptions())
    _, long = build("client", "manual", "--source", " udp://[::1]:53 ", "--target", "[::1]:5353")
    assert long == ManualClientOptions(
        source="udp://[::1]:53", target="[::1]:5353", ice=IceOptions(stun_servers=DEFAULT_STUN_SERVERS)
    )


def test_defaults_without_config() -> None:
    _, opts = build("server", "manual", "--allowed-udp", "10.0.0.0/8")
    assert opts == ManualServerOptions(allowed_udp=("10.0.0.0/8",), ice=IceOptions(stun_servers=DEFAULT_STUN_SERVERS))


def test_e2_mode_word() -> None:
    assert build("server", "ice-manual", "--allowed-tcp", "127.0.0.0/8")[0] == "server manual"


@pytest.mark.parametrize("position", ["before", "after"])
def test_config_flag_before_or_after_mode(tmp_path: Path, position: str) -> None:
    path = write(tmp_path / "s.toml", SERVER_TOML)
    argv = ["server", "-c", str(path), "manual"] if position == "before" else ["server", "manual", "-c", str(path)]
    _, opts = build(*argv)
    assert opts == ManualServerOptions(
        allowed_tcp=("127.0.0.0/8",), allowed_udp=("10.0.0.0/8",),
        ice=IceOptions(stun_servers=("stun.example.test:3478",), host_candidates=("eth0",), packet_size=1400),
    )


def test_mode_from_config_alone(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", CLIENT_TOML)
    command, opts = build("client", "--config", str(path))
    assert command == "client manual"
    assert opts == ManualClientOptions(source="tcp://127.0.0.1:22", target="127.0.0.1:2222", ice=IceOptions())


def test_config_path_accepts_tilde(tmp_path: Path) -> None:
    write(tmp_path / "home" / "cfg" / "c.toml", CLIENT_TOML)
    assert build("client", "-c", "~/cfg/c.toml")[0] == "client manual"


def test_cli_overrides_config(tmp_path: Path) -> None:
    path = write(tmp_path / "s.toml", SERVER_TOML)
    _, opts = build("server", "manual", "-c", str(path), "--allowed-tcp", "192.168.0.0/16",
                    "--stun-server", "127.0.0.1:3478", "--host-candidate", "127.0.0.1", "--packet-size", "1200")
    # A non-empty CLI list replaces the config list; an absent one leaves it.
    assert opts == ManualServerOptions(
        allowed_tcp=("192.168.0.0/16",), allowed_udp=("10.0.0.0/8",),
        ice=IceOptions(stun_servers=("127.0.0.1:3478",), host_candidates=("127.0.0.1",), packet_size=1200),
    )
    _, no_stun = build("server", "manual", "-c", str(path), "--no-stun")
    assert no_stun.ice.stun_servers == ()


def test_cli_source_and_target_override_config(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", CLIENT_TOML)
    _, opts = build("client", "manual", "-c", str(path), "-s", "udp://127.0.0.1:53", "-t", "   ")
    assert (opts.source, opts.target) == ("udp://127.0.0.1:53", "127.0.0.1:2222")
    _, flag_stun = build("client", "manual", "-c", str(path), "--stun-server", "127.0.0.1:3478")
    assert flag_stun.ice.stun_servers == ("127.0.0.1:3478",)


def test_config_without_stun_key_uses_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", CLIENT_TOML.replace("stun_servers = []", ""))
    assert build("client", "-c", str(path))[1].ice.stun_servers == DEFAULT_STUN_SERVERS


def test_default_config_paths(tmp_path: Path) -> None:
    home = tmp_path / "home" / ".config" / "tunnel-rs"
    write(home / "client.toml", CLIENT_TOML)
    write(home / "server_ice.toml", SERVER_TOML)
    assert build("client", "--default-config")[0] == "client manual"
    assert build("server", "--default-config", program=cli.TUNNEL_RS_ICE)[0] == "server manual"
    assert build_error("server", "--default-config") == (
        f"Failed to read config file: {home / 'server.toml'}: No such file or directory"
    )
    assert build_error("client", "manual", "--default-config", program=cli.TUNNEL_RS_ICE) == (
        f"Failed to read config file: {home / 'client_ice.toml'}: No such file or directory"
    )


def test_config_warnings_are_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", CLIENT_TOML + "bogus = 1\n")
    warnings: list[str] = []
    build("client", "-c", str(path), warn=warnings.append)
    assert warnings == [f"unknown key 'bogus' in [manual] of {path} ignored"]


def test_tunnel_rs_ice_has_the_same_manual_flags() -> None:
    argv = ("client", "manual", "-s", "tcp://127.0.0.1:22", "-t", "127.0.0.1:2222", "--packet-size", "1300")
    assert build(*argv, program=cli.TUNNEL_RS_ICE) == build(*argv)


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["server"], "No mode specified. Either use a subcommand (manual, nostr) "
                     "or provide a config file with 'mode' field."),
        (["server", "manual"], "At least one of --allowed-tcp or --allowed-udp is required for custom-manual server"),
        (["server", "manual", "--allowed-tcp", "10.0.0/8"],
         "Invalid CIDR '10.0.0/8' in --allowed-tcp. Expected format: 192.168.0.0/16 or ::1/128"),
        (["server", "manual", "--allowed-tcp", "10.0.0.0/8", "--allowed-udp", "::1/129"],
         "Invalid CIDR '::1/129' in --allowed-udp. Expected format: 192.168.0.0/16 or ::1/128"),
        (["client", "manual", "-t", "127.0.0.1:2222"],
         "--source is required for manual client. Specify the source to request from server "
         "(e.g., --source tcp://127.0.0.1:22)"),
        (["client", "manual", "-s", "  ", "-t", "127.0.0.1:2222"],
         "--source is required for manual client. Specify the source to request from server "
         "(e.g., --source tcp://127.0.0.1:22)"),
        (["client", "manual", "-s", "tcp://127.0.0.1:22"],
         "--target is required. Specify local address to listen on (e.g., --target 127.0.0.1:2222)"),
        (["client", "manual", "-s", "ftp://127.0.0.1:22", "-t", "127.0.0.1:2222"],
         "Invalid source 'ftp://127.0.0.1:22'. Expected format: tcp://host:port or udp://host:port"),
        (["client", "manual", "-s", "tcp://127.0.0.1:22", "-t", "2222"],
         "Invalid target '2222'. Expected format: host:port (e.g., localhost:2222 or 127.0.0.1:2222)"),
        (["client", "manual", "-s", "tcp://127.0.0.1:22", "-t", "127.0.0.1:1", "--no-stun",
          "--stun-server", "127.0.0.1:3478"], "Cannot combine --no-stun with --stun-server"),
        (["client", "manual", "-s", "tcp://127.0.0.1:22", "-t", "127.0.0.1:1", "--stun-server", "127.0.0.1"],
         "Invalid STUN server '127.0.0.1' in --stun-server. Expected format: host:port "
         "(e.g., stun.l.google.com:19302)"),
        (["client", "manual", "-s", "tcp://127.0.0.1:22", "-t", "127.0.0.1:1", "--packet-size", "1199"],
         "Invalid --packet-size 1199. Expected an integer between 1200 and 16000"),
        (["client", "manual", "-s", "tcp://127.0.0.1:22", "-t", "127.0.0.1:1", "--packet-size", "16001"],
         "Invalid --packet-size 16001. Expected an integer between 1200 and 16000"),
        (["client", "manual", "-s", "tcp://127.0.0.1:22", "-t", "127.0.0.1:1", "--packet-size", "big"],
         "Invalid --packet-size 'big'. Expected an integer between 1200 and 16000"),
        (["client", "manual", "-s", "tcp://127.0.0.1:22", "-t", "127.0.0.1:1", "--host-candidate", "wlan7"],
         "Invalid --host-candidate 'wlan7': not an IP address or a local interface name"),
        (["server", "-c", "a.toml", "--default-config"], ONLY_ONE_SOURCE),
        (["server", "--default-config", "manual", "-c", "a.toml"], ONLY_ONE_SOURCE),
        (["server", "nostr", "--relay", "wss://x"], NSEC_REQUIRED),
        (["client", "ice-nostr"], NSEC_REQUIRED),
        (["server", "iroh", "--secret-file", "/nonexistent/k"],
         "Secret key file not found: /nonexistent/k\n"
         "Generate one with: tunnel-rs generate-server-key --output /nonexistent/k"),
        ([], "a command is required: server or client (see 'tunnel --help')"),
        (["relay"], "argument COMMAND: invalid choice: 'relay' (choose from 'server', 'client') "
                    "(see 'tunnel --help')"),
        (["server", "manual", "--allowed-tcp"],
         "argument --allowed-tcp: expected one argument (see 'tunnel server manual --help')"),
        (["server", "manual", "--allowed-tcp", "10.0.0.0/8", "--bogus"],
         "unrecognized arguments: --bogus (see 'tunnel server manual --help')"),
        (["client", "--bogus"], "unrecognized arguments: --bogus (see 'tunnel client --help')"),
    ],
)
def test_usage_errors(argv: list[str], message: str) -> None:
    assert build_error(*argv) == message


def test_config_role_and_mode_errors(tmp_path: Path) -> None:
    client = write(tmp_path / "c.toml", CLIENT_TOML)
    server = write(tmp_path / "s.toml", SERVER_TOML)
    assert build_error("server", "manual", "-c", str(client)) == (
        'Config file has role = "client", but running as server'
    )
    assert build_error("client", "-c", str(server)) == 'Config file has role = "server", but running as client'
    no_role = write(tmp_path / "n.toml", CLIENT_TOML.replace('role = "client"', ""))
    assert build_error("client", "-c", str(no_role)) == (
        "Config file missing required 'role' field. Add: role = \"client\""
    )
    no_mode = write(tmp_path / "m.toml", CLIENT_TOML.replace('mode = "manual"', ""))
    assert build_error("client", "manual", "-c", str(no_mode)) == (
        "Config file missing required 'mode' field. Add: mode = \"iroh\" (or \"manual\", \"nostr\")"
    )
    nostr = write(tmp_path / "x.toml", CLIENT_TOML.replace('mode = "manual"', 'mode = "nostr"'))
    assert build_error("client", "manual", "-c", str(nostr)) == (
        'Config file has mode = "nostr", but running with manual'
    )
    # A config naming another mode is handed to that mode, which then asks for its own settings.
    assert build_error("client", "-c", str(nostr)) == NSEC_REQUIRED
    assert build_error("client", "-c", str(nostr), program=cli.TUNNEL_RS_ICE) == NSEC_REQUIRED.replace(
        "'tunnel generate", "'tunnel-rs-ice generate"
    )
    iroh = write(tmp_path / "i.toml", CLIENT_TOML.replace('mode = "manual"', 'mode = "iroh"'))
    assert build_error("client", "-c", str(iroh), program=cli.TUNNEL_RS_ICE) == (
        "Unknown mode 'iroh'. Valid modes: manual, nostr"
    )
    # iroh configs refuse unknown top-level tables, as upstream v0.6 does (deny_unknown_fields).
    assert build_error("client", "-c", str(iroh)) == f"Failed to parse config file: {iroh}: unknown field 'manual'"


def test_config_value_errors_surface(tmp_path: Path) -> None:
    server = write(tmp_path / "s.toml", SERVER_TOML.replace('"10.0.0.0/8"', '"10.0.0.0/33"'))
    assert build_error("server", "-c", str(server)) == (
        "Invalid UDP allowed_sources: Invalid CIDR network '10.0.0.0/33'. Expected format: 192.168.0.0/16 or ::1/128"
    )
    client = write(tmp_path / "c.toml", CLIENT_TOML.replace('"127.0.0.1:2222"', '"127.0.0.1"'))
    assert build_error("client", "-c", str(client)) == "target '127.0.0.1' missing port. Expected format: host:port"
    empty = write(tmp_path / "e.toml", 'role = "server"\nmode = "manual"\n')
    assert build_error("server", "-c", str(empty)) == (
        "At least one of --allowed-tcp or --allowed-udp is required for custom-manual server"
    )
    broken = write(tmp_path / "b.toml", "role = \n")
    assert build_error("server", "-c", str(broken)).startswith(f"Failed to parse config file: {broken}: ")


def test_tunnel_rs_ice_has_no_iroh_word() -> None:
    message = build_error("server", "iroh", program=cli.TUNNEL_RS_ICE)
    assert message.startswith("argument MODE: invalid choice: 'iroh'")
    assert message.endswith("(see 'tunnel-rs-ice server --help')")


# ---------------------------------------------------------------------------------------------- main()


def run_main(capsys: pytest.CaptureFixture[str], *argv: str, entry=entry.main) -> tuple[int, str, str]:
    code = entry(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str, message: str) -> None:
    assert err == f"Error: {message}\n"
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["server", "manual"], "At least one of --allowed-tcp or --allowed-udp is required for custom-manual server"),
        (["client", "manual", "-s", "tcp://127.0.0.1:22", "-t", "x", "--no-stun", "--stun-server", "a:1"],
         "Cannot combine --no-stun with --stun-server"),
        (["server", "manual", "--allowed-tcp", "bad"],
         "Invalid CIDR 'bad' in --allowed-tcp. Expected format: 192.168.0.0/16 or ::1/128"),
        (["client", "manual", "-t"], "argument -t/--target: expected one argument "
                                     "(see 'tunnel client manual --help')"),
    ],
)
def test_main_prints_one_line_and_exits_2(capsys, runner: Recorder, argv: list[str], message: str) -> None:
    code, out, err = run_main(capsys, *argv)
    assert code == ExitCode.USAGE == 2
    assert out == ""
    assert_one_error_line(err, message)
    assert runner.calls == []


def test_main_passes_options_to_the_runners(capsys, runner: Recorder, tmp_path: Path) -> None:
    code, out, err = run_main(capsys, "server", "manual", "--allowed-tcp", "127.0.0.0/8", "--no-stun")
    assert (code, out, err) == (0, "", "")
    assert runner.calls == [("server", ManualServerOptions(allowed_tcp=("127.0.0.0/8",), ice=IceOptions()))]
    path = write(tmp_path / "c.toml", CLIENT_TOML)
    code, _, _ = run_main(capsys, "client", "-c", str(path), entry=entry.main_ice)
    assert code == 0
    assert runner.calls[1] == (
        "client", ManualClientOptions(source="tcp://127.0.0.1:22", target="127.0.0.1:2222", ice=IceOptions())
    )


@pytest.mark.parametrize("exit_code", list(ExitCode))
def test_main_maps_runner_errors_to_exit_codes(capsys, runner: Recorder, exit_code: ExitCode) -> None:
    runner.raises = TunnelError("ICE connection timeout - NAT traversal may have failed.", exit_code)
    code, out, err = run_main(capsys, "server", "manual", "--allowed-udp", "10.0.0.0/8", "--no-stun")
    assert code == int(exit_code)
    assert out == ""
    assert_one_error_line(err, "ICE connection timeout - NAT traversal may have failed.")


def test_main_keeps_multi_line_messages_on_one_line(capsys, runner: Recorder) -> None:
    runner.raises = TunnelError("first line\n  second line\n", ExitCode.AUTH)
    code, _, err = run_main(capsys, "server", "manual", "--allowed-udp", "10.0.0.0/8", "--no-stun")
    assert code == 3
    assert_one_error_line(err, "first line second line")


def test_main_reports_unexpected_exceptions_without_traceback(capsys, runner: Recorder) -> None:
    runner.raises = ValueError("boom")
    code, _, err = run_main(capsys, "server", "manual", "--allowed-udp", "10.0.0.0/8", "--no-stun")
    assert code == ExitCode.GENERAL == 1
    assert_one_error_line(err, "internal error: ValueError: boom")


def test_main_prints_remote_protocol_errors_as_plain_errors(capsys, runner: Recorder) -> None:
    from tunnel_core.errors import RemoteProtocolError

    runner.raises = RemoteProtocolError("Missing BEGIN marker")
    code, _, err = run_main(capsys, "server", "manual", "--allowed-udp", "10.0.0.0/8", "--no-stun")
    assert code == ExitCode.GENERAL
    assert_one_error_line(err, "Missing BEGIN marker")


def test_main_treats_ctrl_c_as_a_normal_stop(capsys, runner: Recorder) -> None:
    runner.raises = KeyboardInterrupt()
    code, out, err = run_main(capsys, "client", "manual", "-s", "tcp://127.0.0.1:22", "-t", "127.0.0.1:0")
    assert code == 0
    assert out == ""
    assert err == "Interrupted; tunnel stopped.\n"


def test_main_passes_runner_sys_exit_codes_through(capsys, runner: Recorder) -> None:
    runner.raises = SystemExit(11)
    assert run_main(capsys, "server", "manual", "--allowed-udp", "10.0.0.0/8")[0] == 11


def test_help_and_version(capsys) -> None:
    code, out, err = run_main(capsys, "--help")
    assert (code, err) == (0, "")
    assert "server" in out and "client" in out
    code, out, _ = run_main(capsys, "server", "manual", "--help")
    assert code == 0
    for step in ("1. Start the client: it prints an OFFER", "2. Paste the client's OFFER into the server.",
                 "3. The server prints an ANSWER", "4. Paste the server's ANSWER into the client"):
        assert step in out
    assert "--allowed-tcp CIDR" in out and "--no-stun" in out and "--packet-size N" in out
    code, out, _ = run_main(capsys, "client", "--help")
    assert code == 0
    assert "Manual mode prints an OFFER; paste the server's ANSWER to continue." in out
    code, out, _ = run_main(capsys, "server", "--help", entry=entry.main_ice)
    assert code == 0
    assert "tunnel-rs-ice server -c server_ice.toml" in out
    assert "tunnel-rs-ice server manual --allowed-tcp 127.0.0.0/8" in out
    code, out, _ = run_main(capsys, "--version")
    assert code == 0
    assert out.startswith("tunnel ") and out.strip() != "tunnel"
    assert run_main(capsys, "--version", entry=entry.main_ice)[1].startswith("tunnel-rs-ice ")


def test_configure_logging_follows_tunnel_log(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    monkeypatch.undo()  # the autouse fixture stubbed configure_logging out; this test wants the real one
    saved = {name: logging.getLogger(name).level for name in ("tunnel_core", "tunnel_asyncio")}
    root = logging.getLogger()
    root_state = (root.level, list(root.handlers))
    try:
        monkeypatch.setenv("TUNNEL_LOG", "debug")
        output.configure_logging()
        assert logging.getLogger("tunnel_core").level == logging.DEBUG
        monkeypatch.setenv("TUNNEL_LOG", "nonsense")
        output.configure_logging()
        assert logging.getLogger("tunnel_asyncio").level == logging.INFO
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        root.setLevel(root_state[0])
        root.handlers[:] = root_state[1]


# ---------------------------------------------------------------------------------------------- real processes


def run_process(*argv: str, module: bool = True, home: Path | None = None, code: str | None = None):
    env = dict(os.environ, HOME=str(home or "/nonexistent-home"))
    if code is not None:
        command = [sys.executable, "-c", code]
    elif module:
        command = [sys.executable, "-m", "tunnel_asyncio.cli", *argv]
    else:
        command = list(argv)
    return subprocess.run(command, capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["server", "manual"], "At least one of --allowed-tcp or --allowed-udp is required for custom-manual server"),
        (["server", "manual", "--allowed-tcp", "300.0.0.0/8"],
         "Invalid CIDR '300.0.0.0/8' in --allowed-tcp. Expected format: 192.168.0.0/16 or ::1/128"),
        (["client", "manual", "-s", "tcp://127.0.0.1:22"],
         "--target is required. Specify local address to listen on (e.g., --target 127.0.0.1:2222)"),
        (["client", "--nope"], "unrecognized arguments: --nope (see 'tunnel client --help')"),
        (["client", "nostr"], NSEC_REQUIRED),
        (["server", "-c", "/nonexistent/x.toml"],
         "Failed to read config file: /nonexistent/x.toml: No such file or directory"),
    ],
)
def test_process_errors_are_one_line_with_exit_code(argv: list[str], message: str) -> None:
    done = run_process(*argv)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == f"Error: {message}\n"


def test_process_role_mismatch(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", CLIENT_TOML)
    done = run_process("server", "-c", str(path))
    assert (done.returncode, done.stderr) == (2, 'Error: Config file has role = "client", but running as server\n')


def test_console_scripts_are_installed() -> None:
    scripts = str(Path(sys.executable).parent)  # the venv running the tests, then PATH
    for name in ("tunnel", "tunnel-rs-ice"):
        exe = shutil.which(name, path=scripts) or shutil.which(name)
        assert exe is not None, f"{name} is not installed (scripts/install.sh)"
        done = run_process(exe, "--version", module=False)
        assert done.returncode == 0
        assert done.stdout.startswith(f"{name} ")
    done = run_process(shutil.which("tunnel-rs-ice", path=scripts) or shutil.which("tunnel-rs-ice") or "", "client",
                       "manual", module=False)
    assert done.returncode == 2
    assert done.stderr.startswith("Error: --source is required for manual client.")
    assert done.stderr.count("\n") == 1


def test_help_and_validation_never_import_aioquic() -> None:
    probe = (
        "import sys\n"
        "from tunnel_asyncio import cli\n"
        "codes = [cli.main(['--help']), cli.main(['server', 'manual', '--help']),\n"
        "         cli.main(['client', 'manual', '-s', 'tcp://127.0.0.1:22'])]\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('aioquic', 'aioice', 'cryptography',\n"
        "               'tunnel_core.quic', 'tunnel_core.ice'))\n"
        "heavy += [m for m in ('asyncio', 'tunnel_asyncio.manual', 'tunnel_core.ice') if m in sys.modules]\n"
        "print('RESULT', codes, heavy, file=sys.stderr)\n"
    )
    done = run_process(code=probe)
    assert "RESULT [0, 0, 2] []" in done.stderr, done.stderr


# ---------------------------------------------------------------------------------------------- TURN


def test_turn_flags_become_ice_options(tmp_path: Path) -> None:
    _, opts = build("client", "manual", "-s", "tcp://127.0.0.1:22", "-t", "127.0.0.1:2222", "--no-stun",
                    "--turn-server", "turn:198.51.100.10:3478", "--turn-server", "turn:[2001:db8::1]",
                    "--turn-user", "alice", "--turn-password", "s3cret")
    assert opts.ice.turn_servers == ("turn:198.51.100.10:3478", "turn:[2001:db8::1]")
    assert (opts.ice.turn_user, opts.ice.turn_password) == ("alice", "s3cret")
    assert "s3cret" not in repr(opts)
    secret = write(tmp_path / "pw", "from-file\nignored second line\n")
    _, opts = build("server", "manual", "--allowed-tcp", "127.0.0.0/8", "--turn-server", "turn:h:3478",
                    "--turn-user", "bob", "--turn-password-file", str(secret))
    assert opts.ice.turn_password == "from-file"


def test_turn_config_keys_and_cli_precedence(tmp_path: Path) -> None:
    secret = write(tmp_path / "pw", "file-pw\n")
    path = write(tmp_path / "c.toml", CLIENT_TOML + 'turn_servers = ["turn:10.0.0.1:3478"]\nturn_user = "cfg"\n'
                 f'turn_password_file = "{secret}"\n')
    _, opts = build("client", "-c", str(path))
    assert opts.ice.turn_servers == ("turn:10.0.0.1:3478",)
    assert (opts.ice.turn_user, opts.ice.turn_password) == ("cfg", "file-pw")
    _, opts = build("client", "-c", str(path), "manual", "--turn-server", "turn:h:1", "--turn-password", "cli-pw")
    assert opts.ice.turn_servers == ("turn:h:1",)
    assert (opts.ice.turn_user, opts.ice.turn_password) == ("cfg", "cli-pw")


@pytest.mark.parametrize(("args", "message"), [
    (("--turn-server", "198.51.100.10:3478", "--turn-user", "u", "--turn-password", "p"),
     "Invalid TURN server '198.51.100.10:3478' in --turn-server"),
    (("--turn-server", "turn:h:3478"), "--turn-server requires credentials"),
    (("--turn-server", "turn:h:3478", "--turn-user", "u"), "--turn-server requires credentials"),
    (("--turn-user", "u", "--turn-password", "p"), "need at least one --turn-server"),
    (("--turn-server", "turn:h:3478", "--turn-user", "u", "--turn-password", "pw", "--turn-password-file", "f"),
     "Cannot use both --turn-password and --turn-password-file"),
    (("--turn-server", "turn:h:3478", "--turn-user", "u", "--turn-password-file", "/nonexistent/pw"),
     "Cannot read --turn-password-file '/nonexistent/pw'"),
])
def test_turn_flag_errors(args: tuple[str, ...], message: str) -> None:
    error = build_error("client", "manual", "-s", "tcp://127.0.0.1:22", "-t", "127.0.0.1:2222", *args)
    assert message in error


def test_tunnel_process_raises_its_open_files_soft_limit() -> None:
    """A tunnel carries up to 1024 streams, each a socket on both sides: the CLI lifts a low soft limit (1024 is
    common) to the hard limit. Checked on a real process started with a soft limit of 256."""
    import resource
    import subprocess
    import sys

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        raise AssertionError(f"this machine's hard limit ({hard}) leaves nothing to raise")

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    proc = subprocess.Popen(
        [sys.executable, "-m", "tunnel_asyncio.cli", "client", "manual", "-s", "tcp://127.0.0.1:9", "-t",
         "127.0.0.1:0", "--no-stun", "--host-candidate", "127.0.0.1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=low_soft_limit,
    )
    try:
        assert proc.stdout is not None
        for _ in range(20):  # the OFFER comes after the limit was raised
            if proc.stdout.readline().startswith(b"-----END"):
                break
        limits = open(f"/proc/{proc.pid}/limits").read()
    finally:
        proc.kill()
        proc.wait(5)
    line = next(row for row in limits.splitlines() if row.startswith("Max open files"))
    raised = int(line.split()[3])
    assert raised == (65536 if hard == resource.RLIM_INFINITY else min(hard, 65536))
    assert raised > 256


MANUAL_CLIENT = ["client", "manual", "--source", "tcp://127.0.0.1:22", "--target", "127.0.0.1:2222"]
MANUAL_SERVER = ["server", "manual", "--allowed-tcp", "127.0.0.0/8"]


@pytest.mark.parametrize("base", [MANUAL_CLIENT, MANUAL_SERVER], ids=["client", "server"])
def test_manual_reconnect_timeout_flag_default_and_errors(base: list[str]) -> None:
    """issue 15 (docs/reconnect.md): both manual roles hold a silent path for --reconnect-timeout."""
    assert cli.build_options(base)[1].reconnect_timeout == 300.0
    assert cli.build_options([*base, "--reconnect-timeout", "90s"])[1].reconnect_timeout == 90.0
    assert cli.build_options([*base, "--reconnect-timeout", "0"])[1].reconnect_timeout == 0.0
    with pytest.raises(TunnelError) as info:
        cli.build_options([*base, "--reconnect-timeout", "soon"])
    assert info.value.message.startswith("Invalid --reconnect-timeout 'soon'") and info.value.exit_code == 2


def test_manual_reconnect_timeout_config_key_and_flag_precedence(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", CLIENT_TOML + 'reconnect_timeout = "2m"\n')
    assert cli.build_options(["client", "-c", str(path)])[1].reconnect_timeout == 120.0
    _, flagged = cli.build_options(["client", "manual", "-c", str(path), "--reconnect-timeout", "5s"])
    assert flagged.reconnect_timeout == 5.0
    bad = write(tmp_path / "bad.toml", CLIENT_TOML + 'reconnect_timeout = "later"\n')
    with pytest.raises(TunnelError) as info:
        cli.build_options(["client", "-c", str(bad)])
    assert "[manual] reconnect_timeout" in info.value.message and info.value.exit_code == 2


def test_manual_fresh_paste_is_off_with_a_config_read_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/reconnect.md: stdin that carried the config is not a terminal to paste into (issue 15 item 2)."""
    import json

    assert cli.build_options(MANUAL_CLIENT)[1].fresh_paste is True
    config = {"role": "client", "mode": "manual", "manual": {"source": "tcp://127.0.0.1:22",
                                                             "target": "127.0.0.1:2222"}}
    read, write = os.pipe()
    os.write(write, json.dumps(config).encode())
    os.close(write)
    with open(read) as stdin:
        monkeypatch.setattr("sys.stdin", stdin)
        assert cli.build_options(["client", "--config-stdin"])[1].fresh_paste is False
