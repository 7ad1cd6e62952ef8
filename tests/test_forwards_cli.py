"""The forward flags (issue 17): --forward, [[forward]], --socks5, --reverse, --allow-listen become options, and
bad values are one usage error each (exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tunnel_cli import cli
from tunnel_core.options import ExitCode, Forward, TunnelError


def build(*argv: str) -> Any:
    return cli.build_options(list(argv), interfaces=lambda: ("lo",))[1]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_flags_become_options(tmp_path: Path) -> None:
    password = tmp_path / "pw"
    password.write_text("secret\n")
    password.chmod(0o600)
    opts = build("client", "manual", "-s", "tcp://127.0.0.1:22", "-t", "127.0.0.1:2222",
                 "-L", "127.0.0.1:8080=tcp://127.0.0.1:80", "--forward", "[::1]:53=udp://[::1]:53",
                 "--socks5", "127.0.0.1:1080", "--socks5-user", "alice", "--socks5-password-file", str(password),
                 "-R", "127.0.0.1:9000=tcp://127.0.0.1:3000")
    assert (opts.source, opts.target) == ("tcp://127.0.0.1:22", "127.0.0.1:2222")
    assert opts.extra_forwards == (Forward("127.0.0.1:8080", "tcp://127.0.0.1:80"), Forward("[::1]:53", "udp://[::1]:53"))
    assert opts.socks5 is not None and opts.socks5.credentials == ("alice", "secret")
    assert opts.reverse == (Forward("127.0.0.1:9000", "tcp://127.0.0.1:3000"),)
    server = build("server", "manual", "--allow-listen", "127.0.0.1:9000")
    assert server.allow_listen == ("127.0.0.1:9000",)
    socks_only = build("client", "manual", "--socks5", "127.0.0.1:1080")
    assert socks_only.source is None and socks_only.socks5 is not None and socks_only.socks5.credentials is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["client", "manual", "--forward", "nonsense"], "Invalid forward 'nonsense'. Expected format: LISTEN=URL"),
        (["client", "manual", "--forward", "127.0.0.1:1=ftp://x:1"], "Invalid source 'ftp://x:1'"),
        (["client", "manual", "--socks5", "127.0.0.1:1080", "--socks5-user", "a"],
         "--socks5-user and --socks5-password-file go together"),
        (["client", "manual", "--socks5-user", "a"], "--socks5-user and --socks5-password-file need --socks5"),
        (["server", "manual", "--allow-listen", "localhost:80"], "Invalid --allow-listen 'localhost:80'"),
        (["server", "manual", "--allow-listen", "127.0.0.1:0"], "port 0 is not an address a client can ask for"),
    ],
)
def test_bad_values_are_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(TunnelError) as info:
        build(*argv)
    assert info.value.exit_code == ExitCode.USAGE and message in info.value.message


def test_config_forward_lists(tmp_path: Path) -> None:
    server = tmp_path / "server.toml"
    server.write_text('role = "server"\nmode = "manual"\n[[forward]]\nlisten = "127.0.0.1:1"\n'
                      'source = "tcp://127.0.0.1:2"\n[manual.allowed_sources]\ntcp = ["127.0.0.0/8"]\n')
    with pytest.raises(TunnelError, match=r"\[\[forward\]\] is a client-only list"):
        build("server", "manual", "-c", str(server))
    half = tmp_path / "half.toml"
    half.write_text('role = "client"\nmode = "manual"\n[[forward]]\nlisten = "127.0.0.1:1"\n')
    with pytest.raises(TunnelError, match=r"\[\[forward\]\] #1 needs both 'listen' and 'source'"):
        build("client", "manual", "-c", str(half))
    typo = tmp_path / "typo.toml"
    typo.write_text('role = "client"\nmode = "manual"\n[[forward]]\nlisten = "127.0.0.1:1"\nsorce = "x"\n')
    with pytest.raises(TunnelError, match="unknown key 'sorce'"):
        build("client", "manual", "-c", str(typo))
    only_file = tmp_path / "only.toml"
    only_file.write_text('role = "client"\nmode = "manual"\n[[forward]]\nlisten = "127.0.0.1:1"\n'
                         'source = "udp://127.0.0.1:2"\n[[forward]]\nlisten = "127.0.0.1:3"\nsource = "tcp://127.0.0.1:4"\n')
    opts = build("client", "manual", "-c", str(only_file))
    assert (opts.source, opts.target) == ("udp://127.0.0.1:2", "127.0.0.1:1")
    assert opts.extra_forwards == (Forward("127.0.0.1:3", "tcp://127.0.0.1:4"),)
