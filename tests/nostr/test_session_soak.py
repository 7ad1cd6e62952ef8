"""A nostr server is meant to run for days and serve session after session: each one brings its own ICE agent,
UDP socket and QUIC connection, all of which must be gone when the session ends. Bounded: a fixed number of short
sessions, one after another, from real client processes through a local relay."""

from __future__ import annotations

import os
import time

import pytest
from tests.nostr.conftest import TEST_KIND, LocalRelay, free_port
from tests.nostr.procs import Proc
from tests.nostr.test_e2e_plaintext import Echo, round_trip

from tunnel_core.nostr.keys import SecretKey

pytestmark = [pytest.mark.timeout(120)]

SESSIONS = 8


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_sessions_one_after_another_leave_nothing_behind(relay: LocalRelay) -> None:
    server_key, client_key = SecretKey.generate(os.urandom), SecretKey.generate(os.urandom)
    common = ["--relay", relay.url, "--no-stun", "--host-candidate", "127.0.0.1", "--event-kind", str(TEST_KIND)]
    echo = Echo()
    server = Proc(["server", "nostr", "--nsec", server_key.nsec, "--peer-npub", client_key.public_key.npub,
                   "--allowed-tcp", "127.0.0.0/8", *common])
    fds: list[int] = []
    try:
        server.wait_for("Waiting for tunnel requests")
        for index in range(SESSIONS):
            port = free_port()
            client = Proc(["client", "nostr", "--nsec", client_key.nsec, "--peer-npub", server_key.public_key.npub,
                           "--source", f"tcp://127.0.0.1:{echo.port}", "--target", f"127.0.0.1:{port}", *common])
            try:
                client.wait_for("Listening on TCP")
                payload = os.urandom(64 * 1024)
                assert round_trip(port, payload) == payload
            finally:
                assert client.stop() == 0, client.text
            ended = sum("ended" in line or "closed" in line for line in server.lines if line.startswith("Session "))
            deadline = time.monotonic() + 15
            while ended < index + 1 and time.monotonic() < deadline:  # the server notices the CONNECTION_CLOSE
                time.sleep(0.05)
                ended = sum("ended" in line or "closed" in line for line in server.lines
                            if line.startswith("Session "))
            assert ended == index + 1, server.text
            fds.append(_fds(server.proc.pid))
        assert server.proc.poll() is None, server.text
    finally:
        server.stop()
        echo.close()
    # After the first session (lazy imports, caches) every finished session returns every descriptor it took.
    assert max(fds[1:]) <= fds[1], f"server fds after each session: {fds}"
    assert "Traceback" not in server.text
