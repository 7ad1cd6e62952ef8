"""`tunnel relay`: flags, the TOML config, one-line errors with exit code 2, and a real run stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys

import pytest
from tests.relay.helpers import TestClient, eid

from tunnel_cli import cli
from tunnel_cli.relay_cmd import build_relay_options
from tunnel_core.iroh_relay import DEV_BIND
from tunnel_core.iroh_relay import frames as fr
from tunnel_core.options import ExitCode, TunnelError


def test_dev_defaults() -> None:
    options = build_relay_options(["--dev"])
    assert options.bind == DEV_BIND and options.tls_cert is None
    assert options.policy.tokens == frozenset() and options.policy.allowed_endpoints is None


def test_flags(tmp_path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# shared tokens\nalpha\n\nbeta\n")
    allowed = tmp_path / "allowed"
    allowed.write_text(f"# who\n{eid(1).hex()}\n{eid(2).hex()}  # second\n")
    options = build_relay_options(["--bind", "[::1]:8443", "--token", "gamma", "--token-file", str(tokens),
                                   "--allowed-endpoints-file", str(allowed), "--rate-limit", "2M"])
    assert options.bind == ("::1", 8443)
    assert options.policy.tokens == frozenset({"alpha", "beta", "gamma"})
    assert options.policy.allowed_endpoints == frozenset({eid(1), eid(2)})
    assert options.policy.rate_limit == 2_000_000


def test_config_file_and_flag_precedence(tmp_path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(f'[relay]\nbind = "127.0.0.1:9000"\ntokens = ["t1"]\nrate_limit = 5000\nqueue_depth = 64\n'
                      f'allowed_endpoints = ["{eid(3).hex()}"]\nshutdown_grace = 0.5\n')
    options = build_relay_options(["-c", str(config)])
    assert options.bind == ("127.0.0.1", 9000)
    assert options.policy.tokens == frozenset({"t1"}) and options.policy.rate_limit == 5000
    assert options.policy.queue_depth == 64 and options.shutdown_grace == 0.5
    assert options.policy.allowed_endpoints == frozenset({eid(3)})
    options = build_relay_options(["-c", str(config), "--bind", "127.0.0.1:9001", "--token", "t2"])
    assert options.bind == ("127.0.0.1", 9001) and options.policy.tokens == frozenset({"t2"})


@pytest.mark.parametrize(("argv", "config", "message"), [
    ([], None, "Plain HTTP needs --dev"),
    (["--tls-cert", "c.pem"], None, "must be given together"),
    (["--dev", "--tls-cert", "c", "--tls-key", "k"], None, "--dev serves plain HTTP"),
    (["--bind", "localhost:80"], None, "not an IP address"),
    (["--bind", "127.0.0.1:70000"], None, "out of range"),
    (["--dev", "--rate-limit", "fast"], None, "Invalid --rate-limit"),
    (["--dev", "--rate-limit", "0"], None, "must be positive"),
    (["--dev", "--token-file", "/nonexistent/tokens"], None, "Failed to read token file"),
    (["--dev", "--token", "has space"], None, "printable ASCII"),
    (["--dev"], "bogus = 1\n", "Unknown key"),
    (["--dev"], "[relay]\nqueue_depth = 'deep'\n", "Invalid value for 'queue_depth'"),
    (["--dev"], "[relay\n", "Failed to parse config file"),
    (["--dev"], '[relay]\nallowed_endpoints = ["zz"]\n', "Invalid"),
    (["--frobnicate"], None, "unrecognized arguments"),
])
def test_usage_errors_exit_2(tmp_path, argv: list[str], config: str | None, message: str) -> None:
    if config is not None:
        path = tmp_path / "relay.toml"
        path.write_text(config)
        argv = [*argv, "-c", str(path)]
    with pytest.raises(TunnelError) as info:
        build_relay_options(argv)
    assert info.value.exit_code == ExitCode.USAGE
    assert message in info.value.message


def test_cli_prints_one_line_and_returns_2(capsys) -> None:
    assert cli.run(["relay", "--bind", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: Invalid --bind") and err.count("\n") == 1


def test_relay_process_serves_and_stops_gracefully_on_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tunnel_asyncio.cli", "relay", "--dev", "--bind", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        assert match, line
        url = match.group(1)

        async def scenario() -> tuple[fr.Frame, int | None]:
            client = await TestClient.joined(url, 1)
            proc.send_signal(signal.SIGTERM)
            restarting = await client.recv()
            return restarting, await client.close_code()

        restarting, code = asyncio.run(scenario())
        assert restarting == fr.Restarting(1000, 5000) and code == 1001
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
