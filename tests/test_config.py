"""Config files: reading, the role/mode rules, the [manual] section and the value checks (reference 1.5, 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel_cli import checks, precedence, turn_settings
from tunnel_cli import config as cfg
from tunnel_cli.manual_section import ManualSection, manual_section
from tunnel_core.options import DEFAULT_STUN_SERVERS, ExitCode, TunnelError

VALID = ("iroh", "manual", "nostr")


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(TunnelError) as info:
        call(*args, **kwargs)
    assert info.value.exit_code == ExitCode.USAGE
    return info.value.message


def section(text: str, role: str, tmp_path: Path, **kwargs) -> ManualSection:
    return manual_section(cfg.load_config(write(tmp_path, text)), role, **kwargs)


def section_error(text: str, role: str, tmp_path: Path, **kwargs) -> str:
    config = cfg.load_config(write(tmp_path, text))
    return error_of(manual_section, config, role, **kwargs)


# ---------------------------------------------------------------------------------------------- reading


def test_missing_file_is_a_read_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    message = error_of(cfg.load_config, path)
    assert message.startswith(f"Failed to read config file: {path}")


def test_directory_is_a_read_error(tmp_path: Path) -> None:
    assert error_of(cfg.load_config, tmp_path).startswith(f"Failed to read config file: {tmp_path}")


def test_bad_toml_is_a_parse_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'role = "server"\nmode = \n')
    assert error_of(cfg.load_config, path).startswith(f"Failed to parse config file: {path}: ")


def test_invalid_utf8_is_a_parse_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(b'role = "\xff"\n')
    assert error_of(cfg.load_config, path).startswith(f"Failed to parse config file: {path}")


def test_unknown_role_value_is_a_parse_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'role = "relay"\n')
    message = error_of(cfg.load_config, path)
    assert message == f'Failed to parse config file: {path}: unknown role "relay", expected "server" or "client"'


def test_mode_must_be_a_string(tmp_path: Path) -> None:
    path = write(tmp_path, 'role = "server"\nmode = 3\n')
    assert error_of(cfg.load_config, path) == f"Failed to parse config file: {path}: 'mode' must be a string (got 3)"


def test_load_keeps_role_mode_and_tables(tmp_path: Path) -> None:
    config = cfg.load_config(write(tmp_path, 'role = "client"\nmode = "manual"\n[manual]\ntarget = "a:1"\n'))
    assert (config.role, config.mode) == ("client", "manual")
    assert config.data["manual"] == {"target": "a:1"}


def test_default_paths_follow_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cfg.default_config_path("server") == tmp_path / ".config/tunnel-rs/server.toml"
    assert cfg.default_config_path("client") == tmp_path / ".config/tunnel-rs/client.toml"
    assert cfg.default_config_path("server", ice=True) == tmp_path / ".config/tunnel-rs/server_ice.toml"
    assert cfg.default_config_path("client", ice=True) == tmp_path / ".config/tunnel-rs/client_ice.toml"
    assert cfg.expand_path("~/x/y.toml") == tmp_path / "x/y.toml"
    assert cfg.expand_path("rel/~/y.toml") == Path("rel/~/y.toml")


# ---------------------------------------------------------------------------------------------- role and mode


def test_role_rules(tmp_path: Path) -> None:
    no_role = cfg.load_config(write(tmp_path, 'mode = "manual"\n'))
    assert error_of(cfg.check_role, no_role, "server") == (
        "Config file missing required 'role' field. Add: role = \"server\""
    )
    assert error_of(cfg.check_role, no_role, "client") == (
        "Config file missing required 'role' field. Add: role = \"client\""
    )
    client = cfg.load_config(write(tmp_path, 'role = "client"\n'))
    assert error_of(cfg.check_role, client, "server") == 'Config file has role = "client", but running as server'
    server = cfg.load_config(write(tmp_path, 'role = "server"\n'))
    assert error_of(cfg.check_role, server, "client") == 'Config file has role = "server", but running as client'
    cfg.check_role(server, "server")
    cfg.check_role(client, "client")


def test_mode_rules(tmp_path: Path) -> None:
    assert error_of(cfg.resolve_mode, None, None, VALID) == (
        "No mode specified. Either use a subcommand (manual, nostr) or provide a config file with 'mode' field."
    )
    assert cfg.resolve_mode("manual", None, VALID) == "manual"
    assert cfg.resolve_mode("ice-manual", None, VALID) == "manual"

    no_mode = cfg.load_config(write(tmp_path, 'role = "server"\n'))
    assert error_of(cfg.resolve_mode, "manual", no_mode, VALID) == (
        "Config file missing required 'mode' field. Add: mode = \"iroh\" (or \"manual\", \"nostr\")"
    )
    nostr = cfg.load_config(write(tmp_path, 'role = "server"\nmode = "nostr"\n'))
    assert error_of(cfg.resolve_mode, "manual", nostr, VALID) == (
        'Config file has mode = "nostr", but running with manual'
    )
    assert cfg.resolve_mode(None, nostr, VALID) == "nostr"
    bogus = cfg.load_config(write(tmp_path, 'role = "server"\nmode = "carrier-pigeon"\n'))
    assert error_of(cfg.resolve_mode, None, bogus, VALID) == (
        "Unknown mode 'carrier-pigeon'. Valid modes: iroh, manual, nostr"
    )
    iroh = cfg.load_config(write(tmp_path, 'role = "server"\nmode = "iroh"\n'))
    assert error_of(cfg.resolve_mode, None, iroh, ("manual", "nostr")) == (
        "Unknown mode 'iroh'. Valid modes: manual, nostr"
    )


@pytest.mark.parametrize(("cli", "written"), [("manual", "ice-manual"), ("ice-manual", "manual"),
                                              ("manual", "manual"), ("ice-manual", "ice-manual")])
def test_e2_and_e3_mode_spellings_agree(tmp_path: Path, cli: str, written: str) -> None:
    config = cfg.load_config(write(tmp_path, f'role = "client"\nmode = "{written}"\n'))
    assert cfg.resolve_mode(cli, config, VALID) == "manual"
    assert cfg.resolve_mode(None, config, VALID) == "manual"


# ---------------------------------------------------------------------------------------------- [manual]

SERVER_FILE = """
role = "server"
mode = "manual"

[manual]
stun_servers = ["stun.example.test:3478", "[::1]:3478"]
host_candidates = ["127.0.0.1", "lo"]
packet_size = 1400

[manual.allowed_sources]
tcp = ["127.0.0.0/8", "::1/128"]
udp = ["10.0.0.0/8"]
"""

CLIENT_FILE = """
role = "client"
mode = "manual"

[manual]
stun_servers = []
request_source = "tcp://127.0.0.1:22"
target = "127.0.0.1:2222"
"""


def test_server_section_is_read(tmp_path: Path) -> None:
    got = section(SERVER_FILE, "server", tmp_path, interfaces=lambda: ["lo", "eth0"])
    assert got == ManualSection(
        section="manual",
        stun_servers=("stun.example.test:3478", "[::1]:3478"),
        allowed_tcp=("127.0.0.0/8", "::1/128"),
        allowed_udp=("10.0.0.0/8",),
        host_candidates=("127.0.0.1", "lo"),
        packet_size=1400,
    )


def test_client_section_is_read_and_empty_stun_list_is_kept(tmp_path: Path) -> None:
    got = section(CLIENT_FILE, "client", tmp_path)
    assert got == ManualSection(stun_servers=(), source="tcp://127.0.0.1:22", target="127.0.0.1:2222")


def test_absent_keys_mean_not_set(tmp_path: Path) -> None:
    got = section('role = "client"\nmode = "manual"\n', "client", tmp_path)
    assert got == ManualSection()
    assert got.stun_servers is None


def test_e2_section_name(tmp_path: Path) -> None:
    text = CLIENT_FILE.replace("[manual]", "[ice-manual]").replace('mode = "manual"', 'mode = "ice-manual"')
    got = section(text, "client", tmp_path)
    assert got.section == "ice-manual"
    assert got.source == "tcp://127.0.0.1:22"
    assert section_error(text.replace("request_source", "allowed_sources.tcp"), "client", tmp_path) == (
        "[ice-manual] 'allowed_sources' is a server-only field. "
        "Clients use 'source' to specify what to request from server."
    )


def test_both_section_names_is_an_error(tmp_path: Path) -> None:
    text = 'role = "client"\nmode = "manual"\n[manual]\n[ice-manual]\n'
    assert section_error(text, "client", tmp_path) == (
        "Config file has both [manual] and [ice-manual] sections. Use only one."
    )


def test_source_alias_and_blank_values(tmp_path: Path) -> None:
    alias = CLIENT_FILE.replace("request_source", "source")
    assert section(alias, "client", tmp_path).source == "tcp://127.0.0.1:22"
    blank = CLIENT_FILE.replace('"tcp://127.0.0.1:22"', '"   "').replace('"127.0.0.1:2222"', '""')
    got = section(blank, "client", tmp_path)
    assert (got.source, got.target) == (None, None)
    both = CLIENT_FILE + 'source = "tcp://127.0.0.1:23"\n'
    assert section_error(both, "client", tmp_path) == "[manual] Use only one of 'request_source' or 'source'."


@pytest.mark.parametrize("key", ["request_source", "source", "target"])
def test_server_rejects_client_only_fields(tmp_path: Path, key: str) -> None:
    text = f'role = "server"\nmode = "manual"\n[manual]\n{key} = "x"\n'
    assert section_error(text, "server", tmp_path) == (
        "[manual] 'source' / 'request_source' / 'target' are client-only fields. "
        "Servers use 'allowed_sources' to restrict what clients can request."
    )


def test_client_rejects_allowed_sources(tmp_path: Path) -> None:
    text = 'role = "client"\nmode = "manual"\n[manual.allowed_sources]\ntcp = ["127.0.0.0/8"]\n'
    assert section_error(text, "client", tmp_path) == (
        "[manual] 'allowed_sources' is a server-only field. "
        "Clients use 'source' to specify what to request from server."
    )


def test_server_rejects_top_level_source(tmp_path: Path) -> None:
    text = 'role = "server"\nmode = "manual"\nsource = "tcp://127.0.0.1:22"\n'
    assert section_error(text, "server", tmp_path) == (
        "Top-level 'source' is not allowed for manual server mode. "
        "Use [manual.allowed_sources] to restrict what clients can request."
    )


@pytest.mark.parametrize(("proto", "line"), [("TCP", 'tcp = ["127.0.0.0/8", "10.0.0/8"]'),
                                             ("UDP", 'udp = ["10.0.0/8"]')])
def test_bad_config_cidr(tmp_path: Path, proto: str, line: str) -> None:
    text = f'role = "server"\nmode = "manual"\n[manual.allowed_sources]\n{line}\n'
    assert section_error(text, "server", tmp_path) == (
        f"Invalid {proto} allowed_sources: Invalid CIDR network '10.0.0/8'. "
        "Expected format: 192.168.0.0/16 or ::1/128"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("127.0.0.1", "target '127.0.0.1' missing port. Expected format: host:port"),
        (":2222", "target ':2222' missing host"),
        ("127.0.0.1:99999", "target '127.0.0.1:99999' has invalid port number"),
        ("127.0.0.1:abc", "target '127.0.0.1:abc' has invalid port number"),
        ("bad host:22",
         "Invalid target 'bad host:22'. Expected format: host:port (e.g., localhost:2222 or 127.0.0.1:2222)"),
    ],
)
def test_bad_config_target(tmp_path: Path, value: str, message: str) -> None:
    text = CLIENT_FILE.replace('"127.0.0.1:2222"', f'"{value}"')
    assert section_error(text, "client", tmp_path) == message


@pytest.mark.parametrize("value", ["ssh://127.0.0.1:22", "tcp://127.0.0.1", "127.0.0.1:22", "tcp://:22"])
def test_bad_config_source(tmp_path: Path, value: str) -> None:
    text = CLIENT_FILE.replace('"tcp://127.0.0.1:22"', f'"{value}"')
    assert section_error(text, "client", tmp_path) == (
        f"Invalid request_source '{value}'. Expected format: tcp://host:port or udp://host:port"
    )


def test_bad_config_stun_server(tmp_path: Path) -> None:
    text = CLIENT_FILE.replace("stun_servers = []", 'stun_servers = ["stun.example.test"]')
    assert section_error(text, "client", tmp_path) == (
        "Invalid STUN server 'stun.example.test' in [manual] stun_servers. "
        "Expected format: host:port (e.g., stun.l.google.com:19302)"
    )


@pytest.mark.parametrize(
    ("line", "detail"),
    [
        ('stun_servers = "a:1"', """[manual] 'stun_servers' must be a list of strings (got "a:1")"""),
        ("stun_servers = [1]", "[manual] 'stun_servers' must be a list of strings (got [1])"),
        ('packet_size = "1400"', """[manual] 'packet_size' must be an integer (got "1400")"""),
        ("packet_size = true", "[manual] 'packet_size' must be an integer (got True)"),
        ("target = 22", "[manual] 'target' must be a string (got 22)"),
        ('host_candidates = "lo"', """[manual] 'host_candidates' must be a list of strings (got "lo")"""),
    ],
)
def test_wrong_types_are_parse_errors(tmp_path: Path, line: str, detail: str) -> None:
    path = write(tmp_path, f'role = "client"\nmode = "manual"\n[manual]\n{line}\n')
    assert error_of(manual_section, cfg.load_config(path), "client") == (
        f"Failed to parse config file: {path}: {detail}"
    )


def test_manual_must_be_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, 'role = "client"\nmode = "manual"\nmanual = 3\n')
    assert error_of(manual_section, cfg.load_config(path), "client") == (
        f"Failed to parse config file: {path}: 'manual' must be a table"
    )


def test_allowed_sources_must_be_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, 'role = "server"\nmode = "manual"\n[manual]\nallowed_sources = ["10.0.0.0/8"]\n')
    assert error_of(manual_section, cfg.load_config(path), "server") == (
        f"Failed to parse config file: {path}: "
        "[manual] 'allowed_sources' must be a table with 'tcp' and 'udp' lists"
    )


@pytest.mark.parametrize(("size", "ok"), [(1199, False), (1200, True), (16000, True), (16001, False), (0, False)])
def test_config_packet_size_range(tmp_path: Path, size: int, ok: bool) -> None:
    text = f'role = "client"\nmode = "manual"\n[manual]\npacket_size = {size}\n'
    if ok:
        assert section(text, "client", tmp_path).packet_size == size
    else:
        assert section_error(text, "client", tmp_path) == (
            f"Invalid [manual] packet_size {size}. Expected an integer between 1200 and 16000"
        )


def test_config_host_candidates_are_checked(tmp_path: Path) -> None:
    text = 'role = "client"\nmode = "manual"\n[manual]\nhost_candidates = ["::1", "eth9"]\n'
    assert section_error(text, "client", tmp_path, interfaces=lambda: ["lo"]) == (
        "Invalid [manual] host_candidates 'eth9': not an IP address or a local interface name"
    )
    assert section(text, "client", tmp_path, interfaces=lambda: ["lo", "eth9"]).host_candidates == ("::1", "eth9")


def test_unknown_keys_and_transport_warn(tmp_path: Path) -> None:
    path = write(tmp_path, 'role = "client"\nmode = "manual"\n[manual]\nstun_server = ["a:1"]\n'
                           '[manual.transport]\ncongestion_controller = "bbr"\n')
    warnings: list[str] = []
    manual_section(cfg.load_config(path), "client", warn=warnings.append)
    assert warnings == [
        f"unknown key 'stun_server' in [manual] of {path} ignored",
        "[manual.transport] is not supported by this version and is ignored",
    ]


def test_other_sections_are_ignored(tmp_path: Path) -> None:
    text = CLIENT_FILE + '\n[nostr]\nrelays = ["wss://relay.example.test"]\n'
    warnings: list[str] = []
    assert section(text, "client", tmp_path, warn=warnings.append).target == "127.0.0.1:2222"
    assert warnings == []


# ---------------------------------------------------------------------------------------------- value checks


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("stun.example.test:3478", ("stun.example.test", 3478)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("[::1]:65535", ("::1", 65535)),
        ("host", None),
        ("host:0", None),
        ("host:65536", None),
        (":3478", None),
        ("::1:3478", None),
        ("[zz]:3478", None),
        ("[::1:3478", None),
        ("a b:1", None),
        ("stun:host:1", None),
        ("host:-1", None),
    ],
)
def test_split_host_port(text: str, parsed: tuple[str, int] | None) -> None:
    assert checks.split_host_port(text) == parsed


def test_cli_value_checks_use_the_reference_wording() -> None:
    assert error_of(checks.check_cli_cidrs, ["10.0.0.0/8", "nope"], "--allowed-udp") == (
        "Invalid CIDR 'nope' in --allowed-udp. Expected format: 192.168.0.0/16 or ::1/128"
    )
    assert checks.check_cli_cidrs(["10.1.2.3/8", "::1/128"], "--allowed-tcp") == ("10.1.2.3/8", "::1/128")
    assert error_of(checks.check_cli_source, "tcp:/x:1") == (
        "Invalid source 'tcp:/x:1'. Expected format: tcp://host:port or udp://host:port"
    )
    assert error_of(checks.check_cli_target, "localhost") == (
        "Invalid target 'localhost'. Expected format: host:port (e.g., localhost:2222 or 127.0.0.1:2222)"
    )
    assert checks.check_cli_target("[::1]:0") == "[::1]:0"
    assert error_of(checks.parse_cli_packet_size, "12k") == (
        "Invalid --packet-size '12k'. Expected an integer between 1200 and 16000"
    )
    assert checks.parse_cli_packet_size("1350") == 1350


def test_host_candidate_without_interface_list_accepts_names() -> None:
    # Platforms that cannot list interfaces leave the check to the runner instead of refusing every name.
    assert checks.check_host_candidate("en0", "--host-candidate", lambda: []) == "en0"
    assert error_of(checks.check_host_candidate, "en 0", "--host-candidate", lambda: []) == (
        "Invalid --host-candidate 'en 0': not an IP address or a local interface name"
    )
    assert "lo" in checks.local_interfaces()


# ---------------------------------------------------------------------------------------------- precedence


def test_stun_precedence() -> None:
    assert precedence.resolve_stun_servers(no_stun=False, cli=[], config=None) == DEFAULT_STUN_SERVERS
    assert precedence.resolve_stun_servers(no_stun=False, cli=[], config=[]) == ()
    assert precedence.resolve_stun_servers(no_stun=False, cli=[], config=["c:1"]) == ("c:1",)
    assert precedence.resolve_stun_servers(no_stun=False, cli=["a:1"], config=["c:1"]) == ("a:1",)
    assert precedence.resolve_stun_servers(no_stun=True, cli=[], config=["c:1"]) == ()
    assert error_of(precedence.resolve_stun_servers, no_stun=True, cli=["a:1"], config=None) == (
        "Cannot combine --no-stun with --stun-server"
    )


lists = st.lists(st.text(min_size=1, max_size=5), max_size=4)


@given(no_stun=st.booleans(), cli=lists, config=st.none() | lists)
def test_stun_precedence_property(no_stun: bool, cli: list[str], config: list[str] | None) -> None:
    try:
        got = precedence.resolve_stun_servers(no_stun=no_stun, cli=cli, config=config)
    except TunnelError as exc:
        assert no_stun and cli and exc.exit_code == ExitCode.USAGE
        return
    if no_stun:
        assert got == ()
    elif cli:
        assert got == tuple(cli)
    elif config is not None:
        assert got == tuple(config)
    else:
        assert got == DEFAULT_STUN_SERVERS


@given(cli=lists, config=lists)
def test_cli_list_replaces_config_list(cli: list[str], config: list[str]) -> None:
    assert precedence.cli_or_config(cli, config) == (tuple(cli) if cli else tuple(config))


# ---------------------------------------------------------------------------------------------- TURN keys


def test_turn_keys_are_read(tmp_path: Path) -> None:
    got = section('[manual]\nturn_servers = ["turn:198.51.100.10:3478"]\nturn_user = "u"\nturn_password = "pw"\n',
                  "client", tmp_path)
    assert got.turn_servers == ("turn:198.51.100.10:3478",)
    assert (got.turn_user, got.turn_password, got.turn_password_file) == ("u", "pw", None)
    assert "pw" not in repr(got).replace("turn_password_file", "")


def test_turn_keys_are_checked(tmp_path: Path) -> None:
    assert "Invalid TURN server 'h:1' in [manual] turn_servers" in section_error(
        '[manual]\nturn_servers = ["h:1"]\n', "server", tmp_path)
    assert "Use only one of 'turn_password' or 'turn_password_file'" in section_error(
        '[manual]\nturn_password = "a"\nturn_password_file = "b"\n', "server", tmp_path)
    assert "must be a list of strings" in section_error('[manual]\nturn_servers = "turn:h:1"\n', "server", tmp_path)


def test_turn_keys_raise_no_unknown_key_warning(tmp_path: Path) -> None:
    warnings: list[str] = []
    section('[manual]\nturn_servers = []\nturn_user = "u"\nturn_password_file = "f"\n', "client", tmp_path,
            warn=warnings.append)
    assert warnings == []


def test_empty_password_file_is_refused(tmp_path: Path) -> None:
    empty = write(tmp_path, "", name="pw")
    assert error_of(turn_settings.read_password_file, str(empty), "--turn-password-file").endswith("is empty")
