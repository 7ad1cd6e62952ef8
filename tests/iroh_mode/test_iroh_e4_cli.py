"""``--protocol e4`` on the command line: option building, ``[iroh] protocol`` in config, key files and
``generate-auth-key`` (file mode, printed public line), one-line errors."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from tests.iroh_mode.test_iroh_cli import SERVER_ID, one_line_error
from tests.iroh_mode.tunnels import make_key

from tunnel_cli.cli import build_options, run
from tunnel_cli.program import TUNNEL_RS
from tunnel_core.iroh_session.auth import public_key_from_seed
from tunnel_core.iroh_session.authkeys import format_private_key, format_public_key, parse_private_key
from tunnel_core.iroh_session.options import IrohClientOptions, IrohServerOptions

SEED = bytes([0x2A] * 32)
PUBLIC = public_key_from_seed(SEED)


def test_generate_auth_key_writes_0600_and_prints_the_public_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "sub" / "client.key"
    assert run(["generate-auth-key", "--output", str(key), "--comment", "e2e client"]) == 0
    out, err = capsys.readouterr()
    assert re.fullmatch(r"ed25519-pub:[A-Za-z0-9_-]{43} e2e client\n", out)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    seed = parse_private_key(key.read_text(), str(key))
    assert out.strip() == format_public_key(public_key_from_seed(seed), "e2e client")
    assert f"Private key saved to: {key}" in err
    one_line_error(capsys, ["generate-auth-key", "--output", str(key)], 2, "File already exists")
    key.chmod(0o644)
    assert run(["generate-auth-key", "-o", str(key), "--force"], program=TUNNEL_RS) == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert re.fullmatch(r"ed25519-pub:[A-Za-z0-9_-]{43}\n", capsys.readouterr().out)


def test_server_e4_options_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key, _ = make_key(tmp_path, "s.key", 1)
    keys = tmp_path / "authorized_keys"
    keys.write_text(f"# c\n{format_public_key(PUBLIC, 'alice')}\n")
    base = ["server", "iroh", "--secret-file", str(key), "--allowed-tcp", "127.0.0.0/8"]
    _, options = build_options([*base, "--protocol", "e4", "--authorized-keys-file", str(keys)])
    assert isinstance(options, IrohServerOptions)
    assert options.protocol == "e4" and options.authorized_keys == (PUBLIC,) and options.allowed_clients == ()
    _, default = build_options([*base, "--allowed-clients", SERVER_ID])
    assert isinstance(default, IrohServerOptions) and default.protocol == "e2"
    one_line_error(capsys, [*base, "--protocol", "e4"], 2, "Authentication requires --authorized-keys-file")
    one_line_error(capsys, [*base, "--protocol", "e3"], 2, "Invalid --protocol 'e3'")
    _, by_keys = build_options([*base, "--authorized-keys-file", str(keys)])
    assert isinstance(by_keys, IrohServerOptions) and by_keys.protocol == "e4"
    assert by_keys.authorized_key_comments == ((PUBLIC, "alice"),)
    one_line_error(capsys, [*base, "--allowed-clients", SERVER_ID, "--authorized-keys-file", str(keys)], 2,
                   "--authorized-keys-file needs --protocol e4")
    empty = tmp_path / "empty"
    empty.write_text("# nobody\n")
    one_line_error(capsys, [*base, "--protocol", "e4", "--authorized-keys-file", str(empty)], 2,
                   f"No Ed25519 public keys found in {empty}")
    bad = tmp_path / "bad"
    bad.write_text("ed25519-pub:nope\n")
    one_line_error(capsys, [*base, "--protocol", "e4", "--authorized-keys-file", str(bad)], 2, f"{bad}:1")
    one_line_error(capsys, [*base, "--protocol", "e4", "--authorized-keys-file", str(tmp_path / "x")], 2,
                   "Authorized keys file not found")


def test_client_e4_options_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    private = tmp_path / "client.key"
    private.write_text(format_private_key(SEED, "me"))
    private.chmod(0o600)  # a secret file, as the key tools write it
    base = ["client", "iroh", "-n", SERVER_ID, "-s", "tcp://127.0.0.1:22", "-t", "127.0.0.1:2222"]
    _, options = build_options([*base, "--protocol", "E4", "--private-key-file", str(private)])
    assert isinstance(options, IrohClientOptions) and options.protocol == "e4" and options.auth_seed == SEED
    one_line_error(capsys, [*base, "--protocol", "e4"], 2, "Authentication requires --private-key-file")
    # The key file alone selects e4 (upstream v0.6 has no --protocol); an explicit e2 with it is a usage error.
    _, chosen = build_options([*base, "--private-key-file", str(private)])
    assert isinstance(chosen, IrohClientOptions) and chosen.protocol == "e4" and chosen.auth_seed == SEED
    one_line_error(capsys, [*base, "--protocol", "e2", "--private-key-file", str(private)], 2,
                   "--private-key-file needs --protocol e4")
    one_line_error(capsys, [*base, "--protocol", "e4", "--private-key-file", str(tmp_path / "no")], 2,
                   "Private key file not found")
    wrong = tmp_path / "wrong.key"
    wrong.write_text(format_public_key(PUBLIC) + "\n")
    wrong.chmod(0o600)  # a secret file, as the key tools write it
    one_line_error(capsys, [*base, "--protocol", "e4", "--private-key-file", str(wrong)], 2,
                   "Invalid authentication private key")


def test_protocol_from_config(tmp_path: Path) -> None:
    key, _ = make_key(tmp_path, "s.key", 2)
    keys = tmp_path / "authorized_keys"
    keys.write_text(format_public_key(PUBLIC) + "\n")
    server = tmp_path / "server.toml"
    server.write_text(f'role = "server"\nmode = "iroh"\n[iroh]\nsecret_file = "{key}"\nprotocol = "e4"\n'
                      f'authorized_keys_file = "{keys}"\n[iroh.allowed_sources]\ntcp = ["127.0.0.0/8"]\n')
    _, options = build_options(["server", "-c", str(server)])
    assert isinstance(options, IrohServerOptions) and options.protocol == "e4"
    assert options.authorized_keys == (PUBLIC,)
    private = tmp_path / "client.key"
    private.write_text(format_private_key(SEED))
    private.chmod(0o600)  # a secret file, as the key tools write it
    client = tmp_path / "client.toml"
    client.write_text(f'role = "client"\nmode = "iroh"\n[iroh]\nserver_node_id = "{SERVER_ID}"\nprotocol = "e4"\n'
                      f'private_key_file = "{private}"\nsource = "tcp://127.0.0.1:22"\ntarget = "127.0.0.1:2"\n')
    _, copts = build_options(["client", "-c", str(client)])
    assert isinstance(copts, IrohClientOptions) and copts.auth_seed == SEED
    _, overridden = build_options(["client", "-c", str(client), "iroh", "--protocol", "e2"])
    assert isinstance(overridden, IrohClientOptions) and overridden.protocol == "e2"
    assert overridden.auth_seed is None
