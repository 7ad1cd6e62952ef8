"""Golden tests of upstream v0.6's key tools and the flexaccess-keys format (docs/key-format.md at v0.0.2).

The expected texts below are written from the documented formats (three ``#`` header lines, unpadded base64url
tokens, compact JSON), with fixed key bytes and a fixed creation time so every byte is pinned; the process tests
then check the same shapes from the installed ``tunnel-rs`` command, as upstream's run_e2e.sh does.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tunnel_cli.iroh_keytools import (
    GenerateAuthKey,
    GenerateServerKey,
    ShowServerId,
    generate_auth_key,
    generate_server_key,
    show_server_id,
)
from tunnel_core.iroh_session.auth import public_key_from_seed
from tunnel_core.iroh_session.authkeys import (
    authorized_entry_from_private_file,
    format_private_key,
    format_public_key,
    is_curve_point,
    parse_authorized_entries,
    parse_private_key,
)
from tunnel_core.keys import KeyFormatError

SEED = bytes(range(32))
PUB = public_key_from_seed(SEED)
PUB_TOKEN = "ed25519-pub:A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg"
SEC_TOKEN = "ed25519-sec:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
CREATED = 1787000000  # 2026-08-17T20:53:20Z
SERVER_SECRET = bytes(range(1, 33))
SERVER_B64 = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="
SERVER_ID = "79b5562e8fe654f94078b112e8a98ba7901f853ae695bed7e0e3910bad049664"
NOT_A_POINT = "ed25519-pub:AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"  # y = 2 has no x on the curve


def fixed(data: bytes):
    return lambda n: data[:n]


# ---------------------------------------------------------------------------------------------- golden files


def test_private_key_file_golden() -> None:
    assert format_private_key(SEED, "alice laptop", created=CREATED) == (
        "# Ed25519 authentication key\n"
        "# Created: 2026-08-17T20:53:20Z\n"
        f"# Public key: {PUB_TOKEN} alice laptop\n"
        f"{SEC_TOKEN}\n"
    )


def test_generate_auth_key_stdout_and_json_golden(capsys: pytest.CaptureFixture[str]) -> None:
    generate_auth_key(GenerateAuthKey(comment="e2e client"), rng=fixed(SEED), now=lambda: CREATED)
    out, err = capsys.readouterr()
    assert out == format_private_key(SEED, "e2e client", created=CREATED) and err == ""
    generate_auth_key(GenerateAuthKey(comment="e2e client", json=True), rng=fixed(SEED), now=lambda: CREATED)
    assert capsys.readouterr().out == (
        f'{{"authorized_key":"{PUB_TOKEN} e2e client","private_key":"{SEC_TOKEN}"}}\n'
    )


def test_generate_server_key_golden(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    generate_server_key(GenerateServerKey(json=True), rng=fixed(SERVER_SECRET), now=lambda: CREATED)
    assert capsys.readouterr().out == f'{{"public_key":"{SERVER_ID}","private_key":"{SERVER_B64}"}}\n'
    generate_server_key(GenerateServerKey(), rng=fixed(SERVER_SECRET), now=lambda: CREATED)
    out, err = capsys.readouterr()
    assert out == (
        "# tunnel-rs server secret key (iroh endpoint identity)\n"
        "# Created: 2026-08-17T20:53:20Z\n"
        f"# EndpointId: {SERVER_ID}\n"
        f"{SERVER_B64}\n"
    )
    assert err == f"EndpointId: {SERVER_ID}\n"
    key = tmp_path / "server.key"
    key.write_text(out)
    key.chmod(0o600)
    show_server_id(ShowServerId(secret_file=str(key), json=True))
    assert capsys.readouterr().out == f'{{"public_key":"{SERVER_ID}"}}\n'
    show_server_id(ShowServerId(secret_file=str(key)))
    assert capsys.readouterr().out == f"{SERVER_ID}\n"


# ---------------------------------------------------------------------------------------------- format rules


def test_authorized_keys_rules() -> None:
    other = public_key_from_seed(bytes(32))
    text = (
        "# clients\n\n"
        f"  {PUB_TOKEN}\talice   laptop  \n"      # any whitespace ends the token; the comment is trimmed
        f"{format_public_key(other)}\n"           # no comment: empty
        f"{PUB_TOKEN} alice desktop\n"            # the same key again: the last entry wins
    )
    assert parse_authorized_entries(text, "keys") == {PUB: "alice desktop", other: ""}
    with pytest.raises(KeyFormatError, match=r"Invalid authorized key at keys:2: .*not a point"):
        parse_authorized_entries(f"# c\n{NOT_A_POINT} x\n", "keys")
    with pytest.raises(KeyFormatError, match="keys:1: Public key must start with 'ed25519-pub:'"):
        parse_authorized_entries("ssh-ed25519 AAAA me\n", "keys")
    assert not is_curve_point(bytes([2]) + bytes(31))
    assert all(is_curve_point(public_key_from_seed(bytes([i]) * 32)) for i in range(64))


def test_private_key_rules() -> None:
    assert parse_private_key(f"  {SEC_TOKEN}  \n", "bare") == SEED  # headers are optional, lines trimmed
    with pytest.raises(KeyFormatError, match="Invalid authentication private key in two: multiple key lines"):
        parse_private_key(f"{SEC_TOKEN}\n{SEC_TOKEN}\n", "two")
    with pytest.raises(KeyFormatError, match="No authentication private key found in none"):
        parse_private_key("# Ed25519 authentication key\n\n", "none")


def test_show_auth_key_comment_rules() -> None:
    current = format_private_key(SEED, "from header", created=CREATED)
    assert authorized_entry_from_private_file(current, "k") == f"{PUB_TOKEN} from header"
    assert authorized_entry_from_private_file(current, "k", "explicit") == f"{PUB_TOKEN} explicit"
    stale = format_private_key(bytes(32), "old key", created=CREATED).splitlines()[2] + f"\n{SEC_TOKEN}\n"
    assert authorized_entry_from_private_file(stale, "k") == PUB_TOKEN  # a header of another key is ignored


# ---------------------------------------------------------------------------------------------- real processes


def tunnel_rs(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = "import sys; from tunnel_iroh.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, stdin=subprocess.DEVNULL)


def test_key_tools_as_run_e2e_uses_them(tmp_path: Path) -> None:
    """The checks of upstream's test-scripts/run_e2e.sh on our key tools, plus the flexaccess-keys commands."""
    done = tunnel_rs("generate-server-key", "--json", cwd=tmp_path)
    value = json.loads(done.stdout)
    assert done.returncode == 0 and set(value) == {"public_key", "private_key"}
    stdout_key = tunnel_rs("generate-server-key", cwd=tmp_path)
    endpoint_id = stdout_key.stderr.strip().removeprefix("EndpointId: ")
    lines = stdout_key.stdout.splitlines()
    assert lines[0] == "# tunnel-rs server secret key (iroh endpoint identity)"
    assert re.fullmatch(r"# Created: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", lines[1])
    assert lines[2] == f"# EndpointId: {endpoint_id}"
    key = tmp_path / "server_stdout.key"
    key.write_text(stdout_key.stdout)
    key.chmod(0o600)
    assert tunnel_rs("show-server-id", "--secret-file", str(key), cwd=tmp_path).stdout == f"{endpoint_id}\n"
    assert tunnel_rs("show-server-id", "--secret-file", str(key), "--json", cwd=tmp_path).stdout == (
        f'{{"public_key":"{endpoint_id}"}}\n'
    )
    written = tunnel_rs("generate-server-key", "--output", str(tmp_path / "server_file.key"), cwd=tmp_path)
    assert written.returncode == 0 and stat.S_IMODE((tmp_path / "server_file.key").stat().st_mode) == 0o600
    assert re.fullmatch(r"EndpointId: [0-9a-f]{64}\n", written.stdout)

    client_key = tunnel_rs("generate-auth-key", "e2e client", cwd=tmp_path)
    (tmp_path / "client.key").write_text(client_key.stdout)
    entry = tunnel_rs("show-auth-key", "--private-key-file", str(tmp_path / "client.key"), cwd=tmp_path)
    assert re.fullmatch(r"ed25519-pub:[A-Za-z0-9_-]{43} e2e client\n", entry.stdout)
    # The file above was written by the shell (mode 0644): the tool warns, as for every secret file.
    assert "accessible by other users" in entry.stderr

    conflict = tunnel_rs("generate-server-key", "--json", "--output", "x", cwd=tmp_path)
    assert conflict.returncode == 2 and conflict.stderr.startswith("Error: ")
    force = tunnel_rs("generate-server-key", "--force", cwd=tmp_path)
    assert (force.returncode, force.stderr) == (2, "Error: --force requires --output <OUTPUT>\n")
