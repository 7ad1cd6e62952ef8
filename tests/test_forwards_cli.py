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


NSEC = "0000000000000000000000000000000000000000000000000000000000000001"
NPUB = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
NODE = "00" * 32
#: The top-level mode line and the mode section of a client file, per mode; the forward keys themselves are the
#: same top-level keys everywhere (written between the two).
CLIENT_SECTION = {
    "manual": ('mode = "manual"\n', ""),
    "nostr": ('mode = "nostr"\n', f'[nostr]\nnsec = "{NSEC}"\npeer_npub = "{NPUB}"\nrelays = ["ws://127.0.0.1:1"]\n'),
    "iroh": ("", f'[iroh]\nprotocol = "e2"\nserver_node_id = "{NODE}"\nserver_addrs = ["127.0.0.1:1"]\n'),
}
EXTRA_KEYS = ('socks5 = "127.0.0.1:1080"\n[[forward]]\nlisten = "127.0.0.1:5353"\nsource = "udp://127.0.0.1:53"\n'
              '[[reverse]]\nlisten = "127.0.0.1:9000"\nsource = "tcp://127.0.0.1:3000"\n')


@pytest.mark.parametrize("mode", ["manual", "nostr", "iroh"])
def test_socks5_reverse_and_forward_keys_in_every_mode(tmp_path: Path, mode: str) -> None:
    """The same top-level keys in every mode's file (iroh's too, mode-less as upstream v0.6's, which otherwise
    refuses unknown keys); the command line replaces each of them."""
    config = tmp_path / "client.toml"
    top, section = CLIENT_SECTION[mode]
    config.write_text('role = "client"\n' + top + EXTRA_KEYS + section)
    opts = build("client", "-c", str(config))
    assert opts.socks5 is not None and opts.socks5.listen == "127.0.0.1:1080"
    assert opts.reverse == (Forward("127.0.0.1:9000", "tcp://127.0.0.1:3000"),)
    forwards = (Forward(opts.target, opts.source), *opts.extra_forwards) if opts.source else opts.extra_forwards
    assert forwards == (Forward("127.0.0.1:5353", "udp://127.0.0.1:53"),)
    cli_opts = build("client", "-c", str(config), "--socks5", "127.0.0.1:1081", "-R",
                     "127.0.0.1:9001=tcp://127.0.0.1:3001", "-L", "127.0.0.1:8080=tcp://127.0.0.1:80")
    assert cli_opts.socks5.listen == "127.0.0.1:1081"
    assert cli_opts.reverse == (Forward("127.0.0.1:9001", "tcp://127.0.0.1:3001"),)
    cli_forwards = (*([Forward(cli_opts.target, cli_opts.source)] if cli_opts.source else []),
                    *cli_opts.extra_forwards)
    assert cli_forwards == (Forward("127.0.0.1:8080", "tcp://127.0.0.1:80"),)


@pytest.mark.parametrize("mode", ["manual", "nostr", "iroh"])
def test_allow_listen_key_and_flag_in_every_mode(tmp_path: Path, mode: str) -> None:
    from tunnel_core.keys import format_secret_key

    key = tmp_path / "server.key"
    key.write_text(format_secret_key(bytes(range(32))))
    key.chmod(0o600)
    section = {
        "manual": 'mode = "manual"\n',
        "nostr": f'mode = "nostr"\n[nostr]\nnsec = "{NSEC}"\npeer_npub = "{NPUB}"\nrelays = ["ws://127.0.0.1:1"]\n',
        "iroh": f'[iroh]\nprotocol = "e2"\nsecret_file = "{key}"\nallowed_clients = ["{NODE}"]\n',
    }[mode]
    config = tmp_path / "server.toml"
    config.write_text('role = "server"\nallow_listen = ["127.0.0.1:9000"]\n' + section)
    assert build("server", "-c", str(config)).allow_listen == ("127.0.0.1:9000",)
    assert build("server", "-c", str(config), "--allow-listen", "[::1]:9001").allow_listen == ("[::1]:9001",)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('role = "server"\nsocks5 = "127.0.0.1:1080"\n' + section)
    with pytest.raises(TunnelError, match="'socks5' is a client-only key") as info:
        build("server", "-c", str(wrong))
    assert info.value.exit_code == ExitCode.USAGE
    client = tmp_path / "client.toml"
    client.write_text('role = "client"\nallow_listen = ["127.0.0.1:9000"]\n' + "".join(CLIENT_SECTION[mode]))
    with pytest.raises(TunnelError, match="'allow_listen' is a server-only key"):
        build("client", "-c", str(client))


def test_iroh_flags_for_every_kind_of_forward() -> None:
    opts = build("client", "iroh", "-n", NODE, "--server-addr", "127.0.0.1:1", "--forward",
                 "127.0.0.1:5353=udp://127.0.0.1:53", "--socks5", "127.0.0.1:1080", "-R", "127.0.0.1:9=tcp://127.0.0.1:8")
    assert (opts.source, opts.target) == (None, None)
    assert opts.extra_forwards == (Forward("127.0.0.1:5353", "udp://127.0.0.1:53"),)
    with pytest.raises(TunnelError, match="--source is required for iroh client mode"):
        build("client", "iroh", "-n", NODE, "--server-addr", "127.0.0.1:1")


def test_mode_flags_after_a_config_without_the_mode_word(tmp_path: Path) -> None:
    """Regression: ``tunnel client -c FILE --reconnect-timeout 5m`` took '5m' for a missing mode word. The file
    names the mode (iroh by its shape, as upstream v0.6, or by 'mode'), so that mode's flags parse."""
    iroh = tmp_path / "iroh.toml"
    iroh.write_text('role = "client"\n[iroh]\nprotocol = "e2"\n'
                    f'server_node_id = "{NODE}"\nserver_addrs = ["127.0.0.1:1"]\nsource = "tcp://127.0.0.1:22"\n'
                    'target = "127.0.0.1:2222"\n')
    assert build("client", "-c", str(iroh), "--reconnect-timeout", "5m").reconnect_timeout == 300
    assert build("client", "--reconnect-timeout", "90s", "-c", str(iroh)).reconnect_timeout == 90
    manual = tmp_path / "manual.toml"
    manual.write_text('role = "client"\nmode = "manual"\n[manual]\nsource = "tcp://127.0.0.1:22"\n'
                      'target = "127.0.0.1:2222"\n')
    assert build("client", "-c", str(manual), "--stun-server", "127.0.0.1:3478").ice.stun_servers == (
        "127.0.0.1:3478",)
    assert build("client", "-c", str(manual), "--reconnect-timeout", "5m").reconnect_timeout == 300
    with pytest.raises(TunnelError, match=r"unrecognized arguments: --relay-url http://127\.0\.0\.1:1") as info:
        build("client", "-c", str(manual), "--relay-url", "http://127.0.0.1:1")  # not a manual-mode flag: said so
    assert info.value.exit_code == ExitCode.USAGE
