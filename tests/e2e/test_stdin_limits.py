"""Reading the pasted block is bounded (issue 18 item 9, the stdin part), on every runtime, with real processes:
a line longer than the 1 MiB block limit is refused without being read whole, and blank or whitespace lines count
towards the limit instead of being collected without end. Loopback only."""

from __future__ import annotations

import subprocess
import threading

import pytest

from .harness import LOOPBACK_ICE_ARGS, cli_argv, error_lines

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

RUNTIMES = ("asyncio", "trio", "gevent")
CHUNK = 1 << 20
#: What the test offers: far more than the limit, so "read it all" and "stopped early" are told apart.
OFFERED = 256 * CHUNK
TOO_LARGE = "Error: Manual payload too large (more than 1048576 characters)"


def _feed(chunk: bytes, runtime: str) -> tuple[int, int, str]:
    """Start a server, pour ``chunk`` into its stdin until it stops reading; (exit code, bytes taken, stderr)."""
    proc = subprocess.Popen(cli_argv(runtime, "server", "manual", "--allowed-tcp", "127.0.0.0/8",
                                     *LOOPBACK_ICE_ARGS),
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    written = [0]

    def pour() -> None:
        try:
            while written[0] < OFFERED:
                proc.stdin.write(chunk)
                written[0] += len(chunk)
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass

    writer = threading.Thread(target=pour, daemon=True)
    writer.start()
    err = proc.stderr.read().decode(errors="replace")
    code = proc.wait(30)
    writer.join(10)
    return code, written[0], err


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_line_longer_than_the_limit_is_refused_without_reading_it_all(runtime: str) -> None:
    code, taken, err = _feed(b"A" * CHUNK, runtime)  # one endless line, no newline
    assert code == 2, err
    assert error_lines(err) == [TOO_LARGE], err
    assert taken < 16 * CHUNK, f"{taken} bytes were taken before the refusal"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_blank_and_whitespace_lines_count_towards_the_limit(runtime: str) -> None:
    code, taken, err = _feed(b"\n \t\n\r\n" * (CHUNK // 5), runtime)
    assert code == 2, err
    assert error_lines(err) == [TOO_LARGE], err
    assert taken < 16 * CHUNK, f"{taken} bytes were taken before the refusal"
