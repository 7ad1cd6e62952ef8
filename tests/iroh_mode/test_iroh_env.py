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
from tunnel_cli.program import TUNNEL_RS
from tunnel_core.iroh_session.auth import public_key_from_seed
from tunnel_core.iroh_session.authkeys import format_private_key, format_public_key
from tunnel_core.iroh_session.options import IrohClientOptions, IrohServerOptions
from tunnel_core.keys import endpoint_id_from_secret, format_endpoint_id, format_secret_key

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
        out[name].chmod(0o600)  # a secret file, as the key tools write it
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


def stdin_json(monkeypatch: pytest.MonkeyPatch, value: object) -> None:
    """Feed one JSON config to the next in-process ``--config-stdin`` read through a real pipe."""
    import json
    import os
    import sys

    read_fd, write_fd = os.pipe()
    os.write(write_fd, json.dumps(value).encode())
    os.close(write_fd)
    monkeypatch.setattr(sys, "stdin", os.fdopen(read_fd, "r"))


def server_json(body: dict[str, object]) -> dict[str, object]:
    return {"role": "server", "iroh": {"allowed_sources": {"tcp": ["127.0.0.0/8"]}, **body}}


def client_json(body: dict[str, object]) -> dict[str, object]:
    return {"role": "client", "iroh": {"server_node_id": SERVER_ID, "request_source": "tcp://127.0.0.1:22",
                                       "target": "127.0.0.1:2222", **body}}


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
    e2 = client_options(["client", "iroh", "--protocol", "e2", "-n", SERVER_ID, "-s", "tcp://127.0.0.1:22", "-t",
                         "127.0.0.1:2222"])
    assert e2.protocol == "e2" and e2.auth_seed is None
    # Without --protocol, the key in the environment is what selects e4 (upstream v0.6 needs no switch).
    e4 = client_options(["client", "iroh", "-n", SERVER_ID, "-s", "tcp://127.0.0.1:22", "-t", "127.0.0.1:2222"])
    assert e4.protocol == "e4" and e4.auth_seed == SEED_A


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
    # Inline secrets and keys come through --config-stdin (JSON): upstream refuses them in config files.
    other_key, _ = make_key(tmp_path, "other.key", 9)
    by_file = server_toml(tmp_path, f'secret_file = "{other_key}"\nauthorized_keys_file = "{files["keys_c"]}"')
    assert server_options(["server", "-c", str(by_file)]).authorized_keys == (PUB_C,)
    monkeypatch.setenv(iroh_env.AUTHORIZED_KEYS_FILE, str(files["keys_a"]))
    monkeypatch.setenv(iroh_env.SECRET, format_secret_key(SERVER_SECRET))
    options = server_options(["server", "-c", str(by_file)])
    assert options.authorized_keys == (PUB_A,) and options.secret_key == SERVER_SECRET
    inline = server_json({"secret": format_secret_key(OTHER_SECRET), "authorized_keys": [format_public_key(PUB_C)]})
    stdin_json(monkeypatch, inline)
    options = server_options(["server", "--config-stdin"])
    assert options.authorized_keys == (PUB_A,) and options.secret_key == SERVER_SECRET
    # ... and the CLI still beats both.
    stdin_json(monkeypatch, inline)
    options = server_options(["server", "--config-stdin", "iroh", "--authorized-keys-file", str(files["keys_b"]),
                              "--secret-file", str(other_key)])
    assert options.authorized_keys == (PUB_B,) and options.secret_key == OTHER_SECRET

    client_file = client_toml(tmp_path, f'private_key_file = "{files["priv_c"]}"')
    assert client_options(["client", "-c", str(client_file)]).auth_seed == SEED_C
    monkeypatch.setenv(iroh_env.PRIVATE_KEY_FILE, str(files["priv_a"]))
    assert client_options(["client", "-c", str(client_file)]).auth_seed == SEED_A
    client_inline = client_json({"private_key": format_private_key(SEED_C)})
    stdin_json(monkeypatch, client_inline)
    assert client_options(["client", "--config-stdin"]).auth_seed == SEED_A
    stdin_json(monkeypatch, client_inline)
    assert client_options(["client", "--config-stdin", "iroh", "--private-key-file",
                           str(files["priv_b"])]).auth_seed == SEED_B


def test_inline_config_keys(files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    """Inline keys work from --config-stdin (upstream's automation path) and are refused in TOML files with
    upstream's words; the flexaccess-keys rules apply to inline lists as to files."""
    listed = server_json({"secret_file": str(files["server"]), "authorized_keys": [
        "# team", format_public_key(PUB_A, "a"), "", format_public_key(PUB_B)]})
    stdin_json(monkeypatch, listed)
    assert server_options(["server", "--config-stdin"]).authorized_keys == (PUB_A, PUB_B)
    pasted = server_json({"secret_file": str(files["server"]), "authorized_keys": files["keys_c"].read_text()})
    stdin_json(monkeypatch, pasted)
    assert server_options(["server", "--config-stdin"]).authorized_keys == (PUB_C,)
    stdin_json(monkeypatch, client_json({"private_key": format_private_key(SEED_B, "b")}))
    assert client_options(["client", "--config-stdin"]).auth_seed == SEED_B

    in_file = server_toml(tmp_path, f'secret_file = "{files["server"]}"\n'
                                    f'authorized_keys = ["{format_public_key(PUB_A)}"]')
    one_line_error(capsys, ["server", "-c", str(in_file)], 2,
                   "[iroh] Inline 'authorized_keys' is not allowed in config files. Use 'authorized_keys_file', "
                   "or pass them in a --config-stdin JSON config.")
    secret_in_file = server_toml(tmp_path, f'secret = "{format_secret_key(OTHER_SECRET)}"\n'
                                           f'authorized_keys_file = "{files["keys_a"]}"')
    one_line_error(capsys, ["server", "-c", str(secret_in_file)], 2,
                   "[iroh] Plaintext 'secret' is not allowed in config files. Use 'secret_file' or set "
                   "TUNNEL_RS_SECRET.")
    key_in_file = client_toml(tmp_path, f"private_key = '''{format_private_key(SEED_B)}'''")
    one_line_error(capsys, ["client", "-c", str(key_in_file)], 2,
                   "[iroh] Inline 'private_key' is not allowed in config files. Use 'private_key_file', or pass it "
                   "in a --config-stdin JSON config.")

    both = server_toml(tmp_path, f'secret_file = "{files["server"]}"\nauthorized_keys_file = "{files["keys_a"]}"\n'
                                 f'authorized_keys = ["{format_public_key(PUB_A)}"]')
    one_line_error(capsys, ["server", "-c", str(both)], 2,
                   "[iroh] Use only one of 'authorized_keys' or 'authorized_keys_file'.")
    both_client = client_toml(tmp_path, f'private_key_file = "{files["priv_a"]}"\nprivate_key = "x"')
    one_line_error(capsys, ["client", "-c", str(both_client)], 2,
                   "[iroh] Use only one of 'private_key' or 'private_key_file'.")
    stdin_json(monkeypatch, server_json({"secret_file": str(files["server"]), "authorized_keys": ["# nobody"]}))
    one_line_error(capsys, ["server", "--config-stdin"], 2, "No Ed25519 public keys found in [iroh].authorized_keys")
    stdin_json(monkeypatch, server_json({"secret_file": str(files["server"]), "authorized_keys": []}))
    one_line_error(capsys, ["server", "--config-stdin"], 2,
                   "[iroh] 'authorized_keys' is empty. List at least one public key.")
    stdin_json(monkeypatch, server_json({"secret_file": str(files["server"]), "authorized_keys": 3}))
    one_line_error(capsys, ["server", "--config-stdin"], 2, "'authorized_keys' must be a list of strings")
    misplaced = client_toml(tmp_path, f'private_key_file = "{files["priv_a"]}"\nauthorized_keys = []')
    one_line_error(capsys, ["client", "-c", str(misplaced)], 2,
                   "[iroh] 'authorized_keys' / 'authorized_keys_file' are server-only fields.")


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
    seed_text = format_private_key(SEED_A).splitlines()[-1]
    broken = tmp_path / "broken.key"
    broken.write_text(seed_text[:-1] + "\n")
    broken.chmod(0o600)  # a secret file, as the key tools write it
    monkeypatch.setenv(iroh_env.PRIVATE_KEY_FILE, str(broken))
    line = one_line_error(capsys, CLIENT, 2, f"Invalid authentication private key in {broken}")
    assert seed_text[12:-1] not in line
    monkeypatch.setenv(iroh_env.PRIVATE_KEY_FILE, str(tmp_path / "absent.key"))
    one_line_error(capsys, CLIENT, 2, f"Private key file not found: {tmp_path / 'absent.key'} "
                                      "(from TUNNEL_RS_PRIVATE_KEY_FILE)")
    monkeypatch.delenv(iroh_env.PRIVATE_KEY_FILE)
    stdin_json(monkeypatch, client_json({"private_key": seed_text[:-1]}))
    line = one_line_error(capsys, ["client", "--config-stdin"], 2,
                          "Invalid authentication private key in [iroh].private_key")
    assert seed_text[12:-1] not in line


def test_relay_auth_token_is_used_but_never_shown(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """TUNNEL_RS_RELAY_AUTH_TOKEN / --relay-auth-token / [iroh] relay_auth_token (CLI > env > config) reach the
    relay settings; without custom relays the token is refused in upstream's words; it never appears in output."""
    token = "relay-token-do-not-print-42"
    monkeypatch.setenv(iroh_env.RELAY_AUTH_TOKEN, token)
    monkeypatch.setenv(iroh_env.PRIVATE_KEY_FILE, str(files["priv_a"]))
    line = one_line_error(capsys, CLIENT, 2, "relay_auth_token requires custom relay_urls")
    assert token not in line
    relayed = client_options([*CLIENT, "--relay-url", "http://127.0.0.1:9"])
    assert relayed.network.relay_auth_token == token and token not in repr(relayed)
    assert relayed.network.discovery is False  # e4 + custom relays: no internet discovery, as upstream
    flag = client_options([*CLIENT, "--relay-url", "http://127.0.0.1:9", "--relay-auth-token", "from-cli"])
    assert flag.network.relay_auth_token == "from-cli"
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
                assert "Authenticated with server successfully" in client.stderr
                assert echo_through(port, payload) == payload
                server.wait_for(r"Client [0-9a-f]{64} authenticated successfully as keys_a")
            assert client.stop() is not None
        logs = server.stderr + client.stderr
    assert format_secret_key(SERVER_SECRET) not in logs
    assert seed_line not in logs and seed_line.split(":", 1)[1] not in logs
