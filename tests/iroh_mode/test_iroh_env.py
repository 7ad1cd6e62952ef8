"""The E4 ``TUNNEL_RS_*`` environment variables: CLI > env > config precedence, the inline ``[iroh]`` key values,
upstream's "Authentication requires ..." wording, secrets kept out of stderr, and an offline e2e where both
sides get their keys only from the environment (loopback only: ``--no-relay --dns-server none``)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.programs import TcpEchoServer
from tests.iroh_mode.test_iroh_cli import SERVER_ID, one_line_error
from tests.iroh_mode.tunnels import OFFLINE, Proc, echo_through, make_key

from tunnel_cli import iroh_env
from tunnel_cli.cli import build_options, run
from tunnel_cli.iroh_env import IrohEnv
from tunnel_core.iroh_session.auth import public_key_from_seed
from tunnel_core.iroh_session.authkeys import format_private_key, format_public_key
from tunnel_core.iroh_session.options import IrohClientOptions, IrohServerOptions
from tunnel_core.keys import endpoint_id_from_secret, format_endpoint_id, format_secret_key
from tunnel_iroh.cli import TUNNEL_RS

SEED_A = bytes([0x2A] * 32)
SEED_B = bytes([0x07] * 32)
SEED_C = bytes([0x51] * 32)
PUB_A, PUB_B, PUB_C = (public_key_from_seed(s) for s in (SEED_A, SEED_B, SEED_C))
SERVER_SECRET = bytes((5 * 37 + i) % 256 for i in range(32))
OTHER_SECRET = bytes((9 * 37 + i) % 256 for i in range(32))

AUTH_KEYS_MESSAGE = ("Error: Authentication requires --authorized-keys-file, TUNNEL_RS_AUTHORIZED_KEYS_FILE, "
                     "[iroh].authorized_keys_file, or [iroh].authorized_keys.")
PRIVATE_KEY_MESSAGE = ("Error: Authentication requires --private-key-file, TUNNEL_RS_PRIVATE_KEY_FILE, "
                       "[iroh].private_key_file, or [iroh].private_key.")
CLIENT = ["client", "iroh", "--protocol", "e4", "-n", SERVER_ID, "-s", "tcp://127.0.0.1:22", "-t", "127.0.0.1:2222"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests must not see a developer's own TUNNEL_RS_* settings."""
    for name in iroh_env.NAMES:
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    server_key, _ = make_key(tmp_path, "server.key", 5)
    out: dict[str, Path] = {"server": server_key}
    for name, public in (("keys_a", PUB_A), ("keys_b", PUB_B), ("keys_c", PUB_C)):
        out[name] = tmp_path / name
        out[name].write_text(f"# {name}\n{format_public_key(public, name)}\n")
    for name, seed in (("priv_a", SEED_A), ("priv_b", SEED_B), ("priv_c", SEED_C)):
        out[name] = tmp_path / name
        out[name].write_text(format_private_key(seed, name))
    return out


def commented_secret(secret: bytes) -> str:
    """The E4 key-file layout (reference 7.1), passed whole as TUNNEL_RS_SECRET."""
    endpoint = format_endpoint_id(endpoint_id_from_secret(secret))
    return (f"# tunnel-rs server secret key (iroh endpoint identity)\n# Created: 2026-01-01T00:00:00Z\n"
            f"# EndpointId: {endpoint}\n\n{format_secret_key(secret)}\n")


def server_args(*extra: str) -> list[str]:
    return ["server", "iroh", "--protocol", "e4", "--allowed-tcp", "127.0.0.0/8", *extra]


def server_options(argv: list[str], program: object = None) -> IrohServerOptions:
    _, options = build_options(argv) if program is None else build_options(argv, program=program)  # type: ignore[arg-type]
    assert isinstance(options, IrohServerOptions)
    return options


def client_options(argv: list[str]) -> IrohClientOptions:
    _, options = build_options(argv)
    assert isinstance(options, IrohClientOptions)
    return options


def server_toml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "server.toml"
    path.write_text(f'role = "server"\nmode = "iroh"\n[iroh]\nprotocol = "e4"\n{body}\n'
                    '[iroh.allowed_sources]\ntcp = ["127.0.0.0/8"]\n')
    return path


def client_toml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "client.toml"
    path.write_text(f'role = "client"\nmode = "iroh"\n[iroh]\nprotocol = "e4"\nserver_node_id = "{SERVER_ID}"\n'
                    f'request_source = "tcp://127.0.0.1:22"\ntarget = "127.0.0.1:2222"\n{body}\n')
    return path


# ------------------------------------------------------------------------------------------ env when the CLI is silent


def test_env_supplies_keys_and_secret_when_no_flag_is_given(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(iroh_env.AUTHORIZED_KEYS_FILE, str(files["keys_a"]))
    monkeypatch.setenv(iroh_env.SECRET, commented_secret(SERVER_SECRET))
    options = server_options(server_args())
    assert options.authorized_keys == (PUB_A,) and options.secret_key == SERVER_SECRET
    via_tunnel_rs = server_options(["server", "--protocol", "e4", "--allowed-tcp", "127.0.0.0/8"], TUNNEL_RS)
    assert via_tunnel_rs.authorized_keys == (PUB_A,) and via_tunnel_rs.secret_key == SERVER_SECRET
    monkeypatch.setenv(iroh_env.PRIVATE_KEY_FILE, str(files["priv_a"]))
    assert client_options(CLIENT).auth_seed == SEED_A


def test_blank_env_counts_as_absent(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(iroh_env.AUTHORIZED_KEYS_FILE, "  ")
    monkeypatch.setenv(iroh_env.PRIVATE_KEY_FILE, "")
    monkeypatch.setenv(iroh_env.SECRET, " \n")
    assert one_line_error(capsys, server_args("--secret-file", str(files["server"])), 2, "") == AUTH_KEYS_MESSAGE
    assert one_line_error(capsys, CLIENT, 2, "") == PRIVATE_KEY_MESSAGE
    one_line_error(capsys, server_args("--authorized-keys-file", str(files["keys_a"])), 2,
                   "Server identity is required")


def test_e2_ignores_the_e4_variables(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(iroh_env.SECRET, format_secret_key(SERVER_SECRET))
    monkeypatch.setenv(iroh_env.PRIVATE_KEY_FILE, str(files["priv_a"]))
    one_line_error(capsys, ["server", "iroh", "--allowed-tcp", "127.0.0.0/8", "--allowed-clients", SERVER_ID], 2,
                   "Server identity is required")
    e2 = client_options(["client", "iroh", "-n", SERVER_ID, "-s", "tcp://127.0.0.1:22", "-t", "127.0.0.1:2222"])
    assert e2.protocol == "e2" and e2.auth_seed is None


# ------------------------------------------------------------------------------------------ CLI > env > config


def test_cli_flag_beats_env(files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The env values point at missing files / other keys: using them would fail or change the result.
    monkeypatch.setenv(iroh_env.AUTHORIZED_KEYS_FILE, str(tmp_path / "missing"))
    monkeypatch.setenv(iroh_env.PRIVATE_KEY_FILE, str(tmp_path / "missing"))
    monkeypatch.setenv(iroh_env.SECRET, format_secret_key(OTHER_SECRET))
    options = server_options(server_args("--secret-file", str(files["server"]),
                                         "--authorized-keys-file", str(files["keys_b"])))
    assert options.authorized_keys == (PUB_B,) and options.secret_key == SERVER_SECRET
    inline = server_options(server_args("--secret", format_secret_key(SERVER_SECRET),
                                        "--authorized-keys-file", str(files["keys_b"])))
    assert inline.secret_key == SERVER_SECRET
    assert client_options([*CLIENT, "--private-key-file", str(files["priv_b"])]).auth_seed == SEED_B


def test_env_beats_config(files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other_key, _ = make_key(tmp_path, "other.key", 9)
    by_file = server_toml(tmp_path, f'secret_file = "{other_key}"\nauthorized_keys_file = "{files["keys_c"]}"')
    assert server_options(["server", "-c", str(by_file)]).authorized_keys == (PUB_C,)
    monkeypatch.setenv(iroh_env.AUTHORIZED_KEYS_FILE, str(files["keys_a"]))
    monkeypatch.setenv(iroh_env.SECRET, format_secret_key(SERVER_SECRET))
    options = server_options(["server", "-c", str(by_file)])
    assert options.authorized_keys == (PUB_A,) and options.secret_key == SERVER_SECRET
    inline = server_toml(tmp_path, f'secret = "{format_secret_key(OTHER_SECRET)}"\n'
                                   f'authorized_keys = ["{format_public_key(PUB_C)}"]')
    options = server_options(["server", "-c", str(inline)])
    assert options.authorized_keys == (PUB_A,) and options.secret_key == SERVER_SECRET
    # ... and the CLI still beats both.
    options = server_options(["server", "-c", str(inline), "iroh", "--authorized-keys-file", str(files["keys_b"]),
                              "--secret-file", str(other_key)])
    assert options.authorized_keys == (PUB_B,) and options.secret_key == OTHER_SECRET

    client_file = client_toml(tmp_path, f'private_key_file = "{files["priv_c"]}"')
    assert client_options(["client", "-c", str(client_file)]).auth_seed == SEED_C
    monkeypatch.setenv(iroh_env.PRIVATE_KEY_FILE, str(files["priv_a"]))
    assert client_options(["client", "-c", str(client_file)]).auth_seed == SEED_A
    client_inline = client_toml(tmp_path, f"private_key = '''{format_private_key(SEED_C)}'''")
    assert client_options(["client", "-c", str(client_inline)]).auth_seed == SEED_A
    assert client_options(["client", "-c", str(client_inline), "iroh", "--private-key-file",
                           str(files["priv_b"])]).auth_seed == SEED_B


def test_inline_config_keys(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    listed = server_toml(tmp_path, f'secret_file = "{files["server"]}"\nauthorized_keys = '
                                   f'["# team", "{format_public_key(PUB_A, "a")}", "", "{format_public_key(PUB_B)}"]')
    assert server_options(["server", "-c", str(listed)]).authorized_keys == (PUB_A, PUB_B)
    pasted = server_toml(tmp_path, f'secret_file = "{files["server"]}"\n'
                                   f"authorized_keys = '''{files['keys_c'].read_text()}'''")
    assert server_options(["server", "-c", str(pasted)]).authorized_keys == (PUB_C,)
    client = client_toml(tmp_path, f"private_key = '''{format_private_key(SEED_B, 'b')}'''")
    assert client_options(["client", "-c", str(client)]).auth_seed == SEED_B

    both = server_toml(tmp_path, f'secret_file = "{files["server"]}"\nauthorized_keys_file = "{files["keys_a"]}"\n'
                                 f'authorized_keys = ["{format_public_key(PUB_A)}"]')
    one_line_error(capsys, ["server", "-c", str(both)], 2,
                   "[iroh] Use only one of 'authorized_keys' or 'authorized_keys_file'.")
    both_client = client_toml(tmp_path, f'private_key_file = "{files["priv_a"]}"\nprivate_key = "x"')
    one_line_error(capsys, ["client", "-c", str(both_client)], 2,
                   "[iroh] Use only one of 'private_key' or 'private_key_file'.")
    empty = server_toml(tmp_path, f'secret_file = "{files["server"]}"\nauthorized_keys = ["# nobody"]')
    one_line_error(capsys, ["server", "-c", str(empty)], 2, "No Ed25519 public keys found in [iroh].authorized_keys")
    wrong_type = server_toml(tmp_path, f'secret_file = "{files["server"]}"\nauthorized_keys = 3')
    one_line_error(capsys, ["server", "-c", str(wrong_type)], 2, "'authorized_keys' must be a list of strings")
    misplaced = client_toml(tmp_path, f'private_key_file = "{files["priv_a"]}"\nauthorized_keys = []')
    one_line_error(capsys, ["client", "-c", str(misplaced)], 2, "unknown field 'authorized_keys'")


# ------------------------------------------------------------------------------------------ errors and secrecy


def test_nothing_given_prints_upstreams_authentication_requires(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert one_line_error(capsys, server_args("--secret-file", str(files["server"])), 2, "") == AUTH_KEYS_MESSAGE
    assert one_line_error(capsys, CLIENT, 2, "") == PRIVATE_KEY_MESSAGE
    assert run(["server", "--protocol", "e4", "--secret-file", str(files["server"]), "--allowed-tcp",
                "127.0.0.0/8"], program=TUNNEL_RS) == 2
    assert capsys.readouterr().err.strip() == AUTH_KEYS_MESSAGE


def test_bad_env_values_are_one_line_errors_without_the_secret(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = format_secret_key(SERVER_SECRET)
    bad_secret = real[:-2] + "!="
    monkeypatch.setenv(iroh_env.SECRET, bad_secret)
    line = one_line_error(capsys, server_args("--authorized-keys-file", str(files["keys_a"])), 2,
                          "Invalid TUNNEL_RS_SECRET: Invalid base64 in secret key")
    assert real[:20] not in line
    monkeypatch.setenv(iroh_env.SECRET, base64.b64encode(bytes(16)).decode("ascii"))
    one_line_error(capsys, server_args("--authorized-keys-file", str(files["keys_a"])), 2,
                   "Invalid TUNNEL_RS_SECRET: Invalid secret key (must be 32 bytes)")
    # A good secret, then a later failure: the secret must not be echoed anywhere.
    monkeypatch.setenv(iroh_env.SECRET, real)
    monkeypatch.setenv(iroh_env.AUTHORIZED_KEYS_FILE, str(tmp_path / "nope"))
    line = one_line_error(capsys, server_args(), 2,
                          f"Authorized keys file not found: {tmp_path / 'nope'} (from TUNNEL_RS_AUTHORIZED_KEYS_FILE)")
    assert real not in line
    # A private key file holding a near-miss secret line: the error names the file, not the key text.
    seed_text = format_private_key(SEED_A).splitlines()[1]
    broken = tmp_path / "broken.key"
    broken.write_text(seed_text[:-1] + "\n")
    monkeypatch.setenv(iroh_env.PRIVATE_KEY_FILE, str(broken))
    line = one_line_error(capsys, CLIENT, 2, f"Invalid Ed25519 private key in {broken}")
    assert seed_text[12:-1] not in line
    monkeypatch.setenv(iroh_env.PRIVATE_KEY_FILE, str(tmp_path / "absent.key"))
    one_line_error(capsys, CLIENT, 2, f"Private key file not found: {tmp_path / 'absent.key'} "
                                      "(from TUNNEL_RS_PRIVATE_KEY_FILE)")
    inline = client_toml(tmp_path, f"private_key = '''{seed_text[:-1]}'''")
    monkeypatch.delenv(iroh_env.PRIVATE_KEY_FILE)
    line = one_line_error(capsys, ["client", "-c", str(inline)], 2, "Invalid Ed25519 private key in [iroh].private_key")
    assert seed_text[12:-1] not in line


def test_relay_auth_token_is_warned_about_but_never_shown(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "relay-token-do-not-print-42"
    monkeypatch.setenv(iroh_env.RELAY_AUTH_TOKEN, token)
    monkeypatch.setenv(iroh_env.PRIVATE_KEY_FILE, str(files["priv_a"]))
    warnings: list[str] = []
    build_options(CLIENT, warn=warnings.append)
    assert len(warnings) == 1 and "TUNNEL_RS_RELAY_AUTH_TOKEN is set but ignored" in warnings[0]
    assert token not in warnings[0]
    env = IrohEnv.read({iroh_env.SECRET: "s3cret-value", iroh_env.RELAY_AUTH_TOKEN: token})
    assert "s3cret-value" not in repr(env) and token not in repr(env)


# ------------------------------------------------------------------------------------------ e2e, offline


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_keys_only_from_the_environment_forward_tcp(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    secret_text = commented_secret(SERVER_SECRET)
    seed_line = format_private_key(SEED_A).splitlines()[1]
    payload = bytes(range(256)) * 512
    with TcpEchoServer() as echo:
        monkeypatch.setenv(iroh_env.SECRET, secret_text)
        monkeypatch.setenv(iroh_env.AUTHORIZED_KEYS_FILE, str(files["keys_a"]))
        with Proc("server", "iroh", "--protocol", "e4", "--allowed-tcp", "127.0.0.0/8", *OFFLINE) as server:
            addr = server.wait_for(r"Listening on (127\.0\.0\.1:\d+)").group(1)
            node_id = server.wait_for(r"Server EndpointId: ([0-9a-f]{64})").group(1)
            assert node_id == format_endpoint_id(endpoint_id_from_secret(SERVER_SECRET))
            monkeypatch.delenv(iroh_env.SECRET)
            monkeypatch.delenv(iroh_env.AUTHORIZED_KEYS_FILE)
            monkeypatch.setenv(iroh_env.PRIVATE_KEY_FILE, str(files["priv_a"]))
            with Proc("client", "iroh", "--protocol", "e4", "-n", node_id, "-s", f"tcp://127.0.0.1:{echo.port}",
                      "-t", "127.0.0.1:0", "--server-addr", addr, *OFFLINE) as client:
                port = int(client.wait_for(r"Listening on TCP 127\.0\.0\.1:(\d+)").group(1))
                assert "Authenticated with the server" in client.stderr
                assert echo_through(port, payload) == payload
                server.wait_for(r"authenticated as " + format_public_key(PUB_A).replace("-", r"\-"))
            assert client.stop() is not None
        logs = server.stderr + client.stderr
    assert format_secret_key(SERVER_SECRET) not in logs
    assert seed_line not in logs and seed_line.split(":", 1)[1] not in logs
