"""Careless or hostile config and key files, met by real processes (issue 18 items 9, 10, 11).

9: reads are bounded (``-c /dev/zero``, key files, ``--config-stdin``) and deep nesting is a parse error (exit 2),
never a RecursionError or an out-of-memory. 10: config typos: iroh files refuse unknown fields as upstream v0.6
does (serde ``deny_unknown_fields``); ICE files keep upstream 0.2.4's leniency but print a warning per unknown key.
11: secret files readable by others are used, as upstream does, with a warning naming the file and the fix.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunnel_core.keys import format_secret_key

ENTRY = {"tunnel": "tunnel_asyncio.cli", "tunnel-rs": "tunnel_iroh.cli"}


def cli(*args: str, program: str = "tunnel", stdin: bytes | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", ENTRY[program], *args], capture_output=True, timeout=timeout,
                          input=stdin.decode() if stdin is not None else None, text=True,
                          stdin=None if stdin is not None else subprocess.DEVNULL)


def one_error(done: subprocess.CompletedProcess[str], code: int, message: str) -> list[str]:
    """Exit ``code`` and exactly one ``Error:`` line, the last, containing ``message``; returns the other lines."""
    lines = done.stderr.splitlines()
    assert done.returncode == code, done.stderr
    assert lines and lines[-1].startswith("Error: ") and message in lines[-1], done.stderr
    assert sum(line.startswith("Error: ") for line in lines) == 1 and "Traceback" not in done.stderr
    return lines[:-1]


# ---------------------------------------------------------------------------------------------- 9: bounded reads


def test_dev_zero_as_config_and_key_is_refused_quickly() -> None:
    started = time.monotonic()
    one_error(cli("server", "-c", "/dev/zero"), 2, "Failed to read config file: /dev/zero: larger than 1024 KiB")
    one_error(cli("show-server-id", "-s", "/dev/zero", program="tunnel-rs"), 2, "larger than 1024 KiB")
    one_error(cli("client", "--private-key-file", "/dev/zero", "-n", "0" * 64, "-s", "tcp://127.0.0.1:1", "-t",
                  "127.0.0.1:0", program="tunnel-rs"), 2, "larger than 1024 KiB")
    assert time.monotonic() - started < 30  # each read stops at 1 MiB + 1 byte


@pytest.mark.parametrize("nesting", ["a = " + "[" * 5000 + "]" * 5000, "a = " + "{b = " * 5000 + "1" + "}" * 5000])
def test_deep_toml_is_a_parse_error(tmp_path: Path, nesting: str) -> None:
    path = tmp_path / "deep.toml"
    path.write_text(f'role = "server"\nmode = "manual"\n{nesting}\n')
    one_error(cli("server", "-c", str(path)), 2, f"Failed to parse config file: {path}: ")
    relay = tmp_path / "relay.toml"
    relay.write_text(f"{nesting}\n")
    one_error(cli("relay", "-c", str(relay)), 2, f"Failed to parse config file {relay}: ")


def test_config_stdin_bounds_and_nesting() -> None:
    deep = ("[" * 100000 + "]" * 100000).encode()
    one_error(cli("server", "--config-stdin", program="tunnel-rs", stdin=deep), 2,
              "Failed to parse JSON config from stdin: ")
    huge = b'{"role": "server", "x": "' + b"a" * (2 << 20) + b'"}'
    one_error(cli("server", "--config-stdin", program="tunnel-rs", stdin=huge), 2, "more than 1024 KiB")
    one_error(cli("server", "--config-stdin", program="tunnel-rs", stdin=b"[1, 2]"), 2, "expected a JSON object")
    one_error(cli("server", "--config-stdin", program="tunnel-rs", stdin=b""), 2, "EOF while parsing")


# ---------------------------------------------------------------------------------------------- 10: typos


def test_iroh_typos_are_refused_as_upstream_does(tmp_path: Path) -> None:
    key = tmp_path / "server.key"
    key.write_text(format_secret_key(bytes(range(32))))
    key.chmod(0o600)
    base = f'role = "server"\n[iroh]\nsecret_file = "{key}"\nauthorized_keys_file = "{tmp_path}/keys"\n'
    typo_table = tmp_path / "table.toml"
    typo_table.write_text(base + '[iroh.allowed_sources]\ntpc = ["127.0.0.0/8"]\n')
    one_error(cli("server", "-c", str(typo_table), program="tunnel-rs"), 2,
              f"Failed to parse config file: {typo_table}: unknown field 'tpc' in [iroh.allowed_sources]")
    top = tmp_path / "top.toml"
    top.write_text('mdoe = "iroh"\n' + base)
    one_error(cli("server", "-c", str(top), program="tunnel-rs"), 2,
              f"Failed to parse config file: {top}: unknown field 'mdoe'")
    key_typo = tmp_path / "key.toml"
    key_typo.write_text(base.replace("secret_file", "secret_flie"))
    one_error(cli("server", "-c", str(key_typo), program="tunnel-rs"), 2, "unknown field 'secret_flie' in [iroh]")


def test_ice_typos_are_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text('role = "server"\nmode = "manual"\n[manul]\nstun_servers = []\n'
                    '[manual.allowed_sources]\ntpc = ["127.0.0.0/8"]\n')
    warnings = one_error(cli("server", "-c", str(path)), 2, "At least one of --allowed-tcp or --allowed-udp")
    assert f"Warning: unknown key 'manul' in the top level of {path} ignored" in warnings
    assert f"Warning: unknown key 'tpc' in [manual.allowed_sources] of {path} ignored" in warnings
    nostr = tmp_path / "nostr.toml"
    nostr.write_text('role = "server"\nmode = "nostr"\nextra = 1\n[nostr]\nnsec_flie = "x"\n')
    warnings = one_error(cli("server", "-c", str(nostr)), 2, "nsec is required")
    assert f"Warning: unknown key 'extra' in the top level of {nostr} ignored" in warnings
    assert f"Warning: unknown key 'nsec_flie' in [nostr] of {nostr} ignored" in warnings


# ---------------------------------------------------------------------------------------------- 11: secret modes


def test_secret_files_readable_by_others_are_warned_about(tmp_path: Path) -> None:
    key = tmp_path / "server.key"
    key.write_text(format_secret_key(bytes(range(32))) + "\n")
    key.chmod(0o600)
    quiet = cli("show-server-id", "-s", str(key), program="tunnel-rs")
    assert quiet.returncode == 0 and quiet.stderr == ""
    key.chmod(0o644)
    loud = cli("show-server-id", "-s", str(key), program="tunnel-rs")
    assert loud.returncode == 0 and loud.stdout == quiet.stdout
    assert loud.stderr == (f"Warning: {key} is accessible by other users (mode 0644); protect it with: "
                           f"chmod 600 {key}\n")
    nsec = tmp_path / "server.nsec"
    assert cli("generate-nostr-key", "--output", str(nsec)).returncode == 0
    assert cli("show-npub", "--nsec-file", str(nsec)).stderr == ""
    nsec.chmod(0o666)
    assert "accessible by other users (mode 0666)" in cli("show-npub", "--nsec-file", str(nsec)).stderr
    auth = tmp_path / "client.key"
    assert cli("generate-auth-key", "-o", str(auth), program="tunnel-rs").returncode == 0
    auth.chmod(0o640)
    shown = cli("show-auth-key", "--private-key-file", str(auth), program="tunnel-rs")
    assert shown.returncode == 0 and "(mode 0640)" in shown.stderr
