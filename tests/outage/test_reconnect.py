"""Reconnect instead of exiting, nostr and iroh mode, real processes in the NAT lab (issue 15 item 2;
docs/reconnect.md).

- The server is restarted with the same keys while a transfer runs: the client says ``Reconnecting...`` once,
  resets the open connection with one line (nostr: its durable stream cannot be resumed, docs/durable.md),
  comes back by itself, and a new local connection works; the client's
  local listener was never closed.
- A cut past the consent limit: consent is lost on both sides, the client reconnects once the path is back - in
  test_durable.py, whose 90 s cut shows that and the durable streams at once.
- With the server gone for good and a short ``--reconnect-timeout``, the client gives up: exit 11, with how long
  it tried. (``--reconnect-timeout 0``, today's exit 11 at once, is the NAT suite's killed-server run.)
"""

from __future__ import annotations

import time

import pytest
from tests.nat.lab import Lab
from tests.nat.modes import MODES, Connected, Proc, RunningPair

from .iroh_e4 import start_iroh_e4

pytestmark = [pytest.mark.nat, pytest.mark.timeout(400)]

SMALL = 1024 * 1024


def _connected(pair: RunningPair) -> None:
    outcome = pair.wait_connected()
    assert isinstance(outcome, Connected), pair.describe()
    first = pair.transfer(SMALL, timeout=60)
    assert first.get("ok") is True, (first, pair.describe())


def _count(proc: Proc, text: str) -> int:
    return sum(text in line for line in proc.stderr_lines)


@pytest.mark.parametrize("mode", ["nostr", "iroh", "iroh-e4"])
def test_client_reconnects_by_itself_after_a_server_restart(lab: Lab, mode: str) -> None:
    pair = start_iroh_e4(lab, 7100, 7000, ()) if mode == "iroh-e4" else MODES[mode].start(lab, turn=False)
    try:
        _connected(pair)
        mover = pair.start_transfer(10**10, timeout=120)  # open during the restart: reset with one line
        assert mover.stdout.get(timeout=15) == "started\n", pair.describe()
        pair.server.stop()
        restarted_at = time.monotonic()
        pair.server = Proc("server", pair.server.argv)  # same keys, same flags
        if mode == "nostr":
            assert pair.server.wait_line(r"Waiting for tunnel requests", 20), pair.describe()
        assert pair.client.wait_line(r"Reconnecting\.\.\.", 30), pair.describe()
        back = pair.client.wait_line(r"Tunnel back after ([\d.]+)s", 120)
        assert back is not None, pair.describe()
        took = time.monotonic() - restarted_at
        mover.proc.wait(timeout=30)
        assert pair.client.proc.poll() is None
        again = pair.transfer(SMALL, timeout=60)
        assert again.get("ok") is True, (again, pair.describe())
        assert _count(pair.client, "Reconnecting...") == 1
        # nostr, iroh e4: the stream was durable (docs/durable.md), but the restarted server lost it; iroh e2: not
        reason = "the tunnel was lost" if mode == "iroh" else "the server no longer has it"
        assert _count(pair.client, f"reset: {reason}") == 1, pair.describe()
        print(f"\n[reconnect] {mode} server restart: back after {back.group(1)}s of reconnecting, "
              f"{took:.1f}s after the restart", flush=True)
    finally:
        pair.close()


def test_nostr_client_gives_up_after_its_reconnect_timeout_with_exit_11(lab: Lab) -> None:
    pair = MODES["nostr"].start(lab, turn=False, client_extra=("--reconnect-timeout", "8s"))
    try:
        _connected(pair)
        pair.server.stop()
        stopped_at = time.monotonic()
        code = pair.client.proc.wait(timeout=60)
        took = time.monotonic() - stopped_at
        assert code == 11, pair.describe()
        last = pair.client.stderr_lines[-1]
        assert "Gave up reconnecting after" in last and "attempt" in last, pair.describe()
        assert took < 8 + 20, took
        assert _count(pair.client, "Reconnecting...") == 1
    finally:
        pair.close()
