"""Issue 4's "reconnect", end to end: the only relay a waiting server uses goes away and comes back (same address);
the server must reconnect and re-subscribe by itself, so a client that asks afterwards still gets its tunnel.

Real processes and nostr-sdk's LocalRelay on loopback; the client re-publishes its request while the server is
still reconnecting, so the test needs no sleeps tuned to the backoff.
"""

from __future__ import annotations

import hashlib
import os
import time

import pytest
from tests.nostr.conftest import TEST_KIND, LocalRelay, free_port
from tests.nostr.procs import Proc
from tests.nostr.test_e2e_plaintext import Echo, round_trip

from tunnel_core.nostr.keys import SecretKey

pytestmark = [pytest.mark.timeout(90)]


def _common(url: str) -> list[str]:
    return ["--relay", url, "--no-stun", "--host-candidate", "127.0.0.1", "--event-kind", str(TEST_KIND)]


def test_server_survives_its_relay_restarting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNNEL_LOG", "debug")  # the pool's RelayDown/RelayUp events show the reconnect happened
    server_key, client_key = SecretKey.generate(os.urandom), SecretKey.generate(os.urandom)
    relay = LocalRelay().start()
    echo = Echo()
    server = Proc(["server", "nostr", "--nsec", server_key.nsec, "--peer-npub", client_key.public_key.npub,
                   "--allowed-tcp", "127.0.0.0/8", *_common(relay.url)])
    client: Proc | None = None
    try:
        server.wait_for("Waiting for tunnel requests")
        relay.stop()  # every WebSocket of the server drops
        time.sleep(0.5)
        relay = LocalRelay(relay.port).start()  # back on the same address, with no memory of the subscription
        port = free_port()
        started = time.monotonic()
        client = Proc(["client", "nostr", "--nsec", client_key.nsec, "--peer-npub", server_key.public_key.npub,
                       "--source", f"tcp://127.0.0.1:{echo.port}", "--target", f"127.0.0.1:{port}",
                       "--max-wait", "20", "--republish-interval", "0.5", *_common(relay.url)])
        client.wait_for("Listening on TCP", timeout=30)
        payload = os.urandom(256 * 1024)
        got = round_trip(port, payload)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        took = time.monotonic() - started
        server.wait_for("Client connected over QUIC.")
        assert took < 20, f"tunnel took {took:.1f} s after the relay came back"
    finally:
        codes = [client.stop() if client else 0, server.stop()]
        relay.stop()
        echo.close()
    assert codes == [0, 0], (client.text if client else "") + "\n---\n" + server.text
    assert "Traceback" not in server.text
    down = server.text.find("RelayDown")
    assert down != -1 and server.text.find("RelayUp", down) != -1, server.text
