"""``tunnel-rs`` as upstream v0.6.1's clap front end behaves, in real processes: ``--version``, a bare role prints
its help (``arg_required_else_help``: stderr, exit 2), config-source exclusivity and the relay-only / relay-token
checks, each with upstream's wording."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BIN = str(Path(sys.executable).parent / "tunnel-rs")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=env)


def test_version_and_bare_roles_print_help() -> None:
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("tunnel-rs ")
    for role, flag in (("server", "--authorized-keys-file"), ("client", "--private-key-file")):
        done = run(role)
        assert done.returncode == 2 and done.stdout == ""
        assert f"usage: tunnel-rs {role}" in done.stderr and flag in done.stderr and "--relay-only" in done.stderr
        assert "Error:" not in done.stderr


def test_upstream_wording_for_config_sources_and_relays(tmp_path: Path) -> None:
    both = run("server", "-c", str(tmp_path / "a.toml"), "--config-stdin")
    assert (both.returncode, both.stderr) == (
        2, "Error: Only one of -c/--config, --default-config, or --config-stdin may be used\n")
    relay_only = run("client", "-n", "0" * 64, "-s", "tcp://127.0.0.1:22", "-t", "127.0.0.1:2222",
                     "--private-key-file", str(tmp_path / "k"), "--relay-only")
    assert relay_only.returncode == 2
    assert relay_only.stderr == ("Error: --relay-only requires at least one --relay-url to be specified. "
                                 "The default public relay is rate-limited and cannot be used for relay-only mode.\n")
    token = run("client", "-n", "0" * 64, "-s", "tcp://127.0.0.1:22", "-t", "127.0.0.1:2222",
                "--relay-auth-token", "secret-token-value")
    assert token.returncode == 2 and "secret-token-value" not in token.stderr
    assert token.stderr == ("Error: relay_auth_token requires custom relay_urls; it is not used with the default "
                            "iroh relays\n")
