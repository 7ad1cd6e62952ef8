"""Stop signals on real processes, on every runtime (issue 18 item 12).

- SIGHUP (the terminal went away) closes the tunnel with a QUIC CONNECTION_CLOSE like SIGTERM: the server hears it
  at once and exits 0 by itself, instead of waiting ~28 s for ICE consent to lapse.
- A signal right after the server printed ``Connection closed.`` (while the process winds down) keeps exit 0.
- Ctrl-C while the program is still starting gives one line and exit 0, never a KeyboardInterrupt traceback.
- A client whose server was stopped on purpose says so (``Error: The server closed the tunnel``, exit 11), not
  ``Error: done``.
Loopback only.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from . import programs
from .harness import LOOPBACK_ICE_ARGS, ManualTunnel, cli_argv, error_lines

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

RUNTIMES = ("asyncio", "trio", "gevent")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_sighup_closes_the_tunnel_orderly(runtime: str) -> None:
    with programs.TcpEchoServer() as echo, ManualTunnel(f"tcp://127.0.0.1:{echo.port}", runtime=runtime) as t:
        assert programs.tcp_ping_pong(t.local_port, 3), t.logs()
        # The server gets 5 s to notice and exit by itself: only a QUIC close tells it that fast.
        t.assert_clean_exit(signal.SIGHUP)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_signal_right_after_connection_closed_keeps_exit_0(runtime: str) -> None:
    with programs.TcpEchoServer() as echo, ManualTunnel(f"tcp://127.0.0.1:{echo.port}", runtime=runtime) as t:
        assert t.client is not None and t.server is not None
        assert programs.tcp_ping_pong(t.local_port, 3), t.logs()
        assert t.client.stop(signal.SIGTERM) == 0, t.logs()
        t.server.wait_stderr(r"Connection closed\.", 10)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # while the process winds down
            try:
                t.server.proc.send_signal(sig)
            except ProcessLookupError:
                break
        code = t.server.wait_exit(10)
        assert code == 0, t.logs()
        assert "Traceback" not in t.server.stderr, t.logs()


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("delay", [0.12, 0.25, 0.4, 0.6])
def test_ctrl_c_during_start_up_gives_no_traceback(runtime: str, delay: float) -> None:
    """Python's own start-up (site, runpy: before any of our code runs) cannot be guarded, and Python ignores a
    KeyboardInterrupt that lands in one of its import-lock callbacks; so a traceback made only of ``<frozen ...>``
    frames is tolerated, and a user whose first Ctrl-C was swallowed presses it again."""
    proc = subprocess.Popen(cli_argv(runtime, "server", "manual", "--allowed-tcp", "127.0.0.0/8",
                                     *LOOPBACK_ICE_ARGS),
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(3)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
    err = proc.stderr.read()
    ours = [line for line in err.splitlines() if line.strip().startswith("File ") and "<frozen" not in line]
    assert not ours, err  # never a traceback through our code
    if "Traceback" in err:
        return  # interrupted inside Python's own start-up or import machinery (frozen frames only): checked above
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert error_lines(err) == [], err


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_client_says_the_server_closed_the_tunnel(runtime: str) -> None:
    with programs.TcpEchoServer() as echo, ManualTunnel(f"tcp://127.0.0.1:{echo.port}", runtime=runtime) as t:
        assert t.client is not None and t.server is not None
        assert programs.tcp_ping_pong(t.local_port, 3), t.logs()
        assert t.server.stop(signal.SIGTERM) == 0, t.logs()
        code = t.client.wait_exit(10)  # by itself: the server's QUIC close reached it
        assert code == 11, t.logs()
        assert error_lines(t.client.stderr) == ["Error: The server closed the tunnel"], t.logs()
