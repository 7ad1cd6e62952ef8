"""``--plaintext-compat`` end to end: real `tunnel` processes through nostr-sdk's LocalRelay on 127.0.0.1.

The unit tests prove the codec; these prove what a relay (or anyone subscribed to it) actually sees, because the
whole point of the flag is a wire-visible difference: upstream tunnel-rs puts base64url plaintext JSON in the event
content, our default puts NIP-44 ciphertext there. A third-party observer subscribes to the relay with a plain
WebSocket, as any relay user could, and inspects the events of the session.

A mismatch (one side plaintext, the other encrypted) cannot be detected by either side - each just sees events it
cannot read - so it must end as a clean client timeout, bounded by ``--max-wait``, never a crash or a hang.

Loopback only: the relay, the host candidates (``--no-stun --host-candidate 127.0.0.1``) and the echo service.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import socket
import threading
import time
from typing import Any

import pytest
from tests.nostr.conftest import TEST_KIND, LocalRelay, free_port
from tests.nostr.procs import Proc
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tunnel_core.nostr import nip44
from tunnel_core.nostr.keys import SecretKey
from tunnel_core.nostr.messages import transfer_id
from tunnel_core.options import ExitCode

pytestmark = pytest.mark.timeout(60)

#: Reference 5.4: the upstream JSON shapes, in upstream's field order.
REQUEST_FIELDS = ["version", "ice_ufrag", "ice_pwd", "candidates", "session_id", "timestamp", "source"]
OFFER_FIELDS = ["version", "ice_ufrag", "ice_pwd", "candidates", "quic_fingerprint", "session_id"]
ANSWER_FIELDS = ["version", "ice_ufrag", "ice_pwd", "candidates", "session_id"]
BASE64URL_NOPAD = re.compile(r"^[A-Za-z0-9_-]+$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")

#: Mismatch runs: short enough to keep the file fast, long enough for two re-publishes.
MAX_WAIT = 2.0
REPUBLISH = 0.5


# ---------------------------------------------------------------------------------------------- helpers


class Observer:
    """A third party on the relay: a plain WebSocket subscription to every event of one transfer id."""

    def __init__(self, url: str, tid: str) -> None:
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, tid), name="relay-observer", daemon=True)
        self._thread.start()
        # Ephemeral events are not stored: we must be subscribed before anybody publishes.
        assert self._ready.wait(5), "relay sent no EOSE for the observer's subscription"

    def _run(self, url: str, tid: str) -> None:
        deadline = time.monotonic() + 55
        with connect(url, open_timeout=5) as ws:
            ws.send(json.dumps(["REQ", "observer", {"kinds": [TEST_KIND], "#t": [tid]}]))
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    raw = ws.recv(timeout=0.1)
                except TimeoutError:
                    continue
                except ConnectionClosed:
                    break
                msg = json.loads(raw)
                if msg[0] == "EOSE":
                    self._ready.set()
                elif msg[0] == "EVENT" and msg[1] == "observer":
                    self.events.append(msg[2])

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if ["type", kind] in e["tags"]]

    def wait_for_types(self, kinds: tuple[str, ...], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.of_type(k) for k in kinds):
            assert time.monotonic() < deadline, f"observer saw only {[e['tags'] for e in self.events]}"
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Echo:
    """A loopback TCP echo service that also records a digest of every connection it served."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.digests: list[str] = []
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        deadline = time.monotonic() + 55
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            self.accepted += 1
            digest = hashlib.sha256()
            with conn:
                conn.settimeout(10)
                while data := conn.recv(65536):
                    digest.update(data)
                    conn.sendall(data)
            self.digests.append(digest.hexdigest())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def common_args(relay: LocalRelay) -> list[str]:
    return ["--relay", relay.url, "--no-stun", "--host-candidate", "127.0.0.1", "--event-kind", str(TEST_KIND)]


def server_argv(server: SecretKey, client: SecretKey, relay: LocalRelay, plaintext: bool) -> list[str]:
    return ["server", "nostr", "--nsec", server.nsec, "--peer-npub", client.public_key.npub, "--allowed-tcp",
            "127.0.0.0/8", *common_args(relay), *(["--plaintext-compat"] if plaintext else [])]


def client_argv(client: SecretKey, server: SecretKey, relay: LocalRelay, plaintext: bool, eport: int, port: int,
                *extra: str) -> list[str]:
    return ["client", "nostr", "--nsec", client.nsec, "--peer-npub", server.public_key.npub, "--source",
            f"tcp://127.0.0.1:{eport}", "--target", f"127.0.0.1:{port}", *common_args(relay), *extra,
            *(["--plaintext-compat"] if plaintext else [])]


def round_trip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        got = bytearray()
        while len(got) < len(payload):
            chunk = sock.recv(65536)
            assert chunk, f"tunnel closed after {len(got)} of {len(payload)} bytes"
            got += chunk
    return bytes(got)


def plaintext_json(event: dict[str, Any]) -> dict[str, Any]:
    """Upstream's content: base64url without padding of compact JSON (reference 5.3)."""
    content = event["content"]
    assert BASE64URL_NOPAD.match(content), content[:40]
    body = base64.urlsafe_b64decode(content + "=" * (-len(content) % 4))
    obj = json.loads(body)
    assert isinstance(obj, dict)
    return obj


def assert_tags(event: dict[str, Any], tid: str, recipient: SecretKey, kind: str) -> None:
    assert event["kind"] == TEST_KIND
    assert event["tags"] == [["t", tid], ["p", recipient.public_key.hex], ["type", kind]]


def assert_not_json(content: str) -> None:
    """NIP-44 v2 payload: neither JSON nor base64url-of-JSON; standard base64 whose first byte is version 2."""
    with pytest.raises(ValueError):
        json.loads(content)
    with pytest.raises((ValueError, binascii.Error)):
        json.loads(base64.urlsafe_b64decode(content + "=" * (-len(content) % 4)))
    assert base64.b64decode(content, validate=True)[0] == 2


def _start(relay: LocalRelay, server_plain: bool) -> tuple[SecretKey, SecretKey, Observer, Echo, Proc]:
    """Fresh keys, an observer subscribed before anything is published, an echo service, and a waiting server."""
    server_key, client_key = SecretKey.generate(os.urandom), SecretKey.generate(os.urandom)
    observer = Observer(relay.url, transfer_id(server_key.public_key, client_key.public_key))
    echo = Echo()
    server = Proc(server_argv(server_key, client_key, relay, server_plain))
    try:
        server.wait_for("Waiting for tunnel requests (max sessions: 10)...")
    except AssertionError:
        server.stop()
        observer.close()
        echo.close()
        raise
    return server_key, client_key, observer, echo, server


# ---------------------------------------------------------------------------------------------- tunnel + wire


@pytest.mark.parametrize("plaintext", [True, False], ids=["plaintext-compat", "default-nip44"])
def test_tunnel_forwards_and_relay_sees_the_expected_format(relay: LocalRelay, plaintext: bool) -> None:
    server_key, client_key, observer, echo, server = _start(relay, plaintext)
    tid = transfer_id(server_key.public_key, client_key.public_key)
    client: Proc | None = None
    try:
        port = free_port()
        client = Proc(client_argv(client_key, server_key, relay, plaintext, echo.port, port))
        client.wait_for("Listening on TCP")
        payload = os.urandom(512 * 1024)
        got = round_trip(port, payload)
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()
        assert len(got) == len(payload)
        server.wait_for("Client connected over QUIC.")
        observer.wait_for_types(("tunnel-request", "tunnel-offer", "tunnel-answer"))
    finally:
        codes = [client.stop() if client else 0, server.stop()]
        observer.close()
        echo.close()
    assert codes == [0, 0], server.text
    # The echo service saw exactly the bytes we sent (digest taken on the far side of the tunnel).
    assert echo.digests == [hashlib.sha256(payload).hexdigest()]

    request, offer, answer = (observer.of_type(k) for k in ("tunnel-request", "tunnel-offer", "tunnel-answer"))
    assert len(offer) == 1 and len(answer) == 1  # one session; the request may have been re-published
    for ev in request + answer:
        assert ev["pubkey"] == client_key.public_key.hex
        assert_tags(ev, tid, server_key, ev["tags"][2][1])
    assert offer[0]["pubkey"] == server_key.public_key.hex
    assert_tags(offer[0], tid, client_key, "tunnel-offer")

    if plaintext:
        req = plaintext_json(request[0])
        assert list(req) == REQUEST_FIELDS  # exactly upstream's: no quic_fingerprint, order preserved
        assert req["version"] == 1 and req["source"] == f"tcp://127.0.0.1:{echo.port}"
        assert HEX16.match(req["session_id"]) and abs(req["timestamp"] - time.time()) < 60
        assert req["candidates"] and all(c.startswith("candidate:") and " 127.0.0.1 " in c
                                         for c in req["candidates"])
        off = plaintext_json(offer[0])
        assert list(off) == OFFER_FIELDS  # no "source" in the nostr offer
        assert off["version"] == 1 and off["session_id"] == req["session_id"]
        assert HEX64.match(off["quic_fingerprint"])
        assert off["ice_ufrag"] != req["ice_ufrag"] and off["candidates"]
        ans = plaintext_json(answer[0])
        assert list(ans) == ANSWER_FIELDS  # no quic_fingerprint in the answer
        assert ans["session_id"] == req["session_id"]
        assert (ans["ice_ufrag"], ans["ice_pwd"], ans["candidates"]) == (
            req["ice_ufrag"], req["ice_pwd"], req["candidates"])
    else:
        for ev in request + offer + answer:
            assert_not_json(ev["content"])
        # Only the two peers can read it: the conversation key opens it to our JSON (plus the client pin).
        conv = nip44.conversation_key(server_key, client_key.public_key)
        req = json.loads(nip44.decrypt(request[0]["content"], conv))
        assert list(req) == [*REQUEST_FIELDS, "quic_fingerprint"]
        assert req["session_id"] not in request[0]["content"]
        off = json.loads(nip44.decrypt(offer[0]["content"], conv))
        assert list(off) == OFFER_FIELDS and off["session_id"] == req["session_id"]


# ---------------------------------------------------------------------------------------------- mismatch


@pytest.mark.parametrize(("client_plain", "server_plain"), [(True, False), (False, True)],
                         ids=["plaintext-client-vs-encrypted-server", "encrypted-client-vs-plaintext-server"])
def test_format_mismatch_times_out_cleanly(relay: LocalRelay, client_plain: bool, server_plain: bool) -> None:
    server_key, client_key, observer, echo, server = _start(relay, server_plain)
    client: Proc | None = None
    try:
        port = free_port()
        started = time.monotonic()
        client = Proc(client_argv(client_key, server_key, relay, client_plain, echo.port, port, "--max-wait",
                                  f"{MAX_WAIT:g}", "--republish-interval", f"{REPUBLISH:g}"))
        code = client.wait(MAX_WAIT + 8)  # interpreter start-up + relay connect + max-wait, with slack
        elapsed = time.monotonic() - started
        # Nothing listens on the client's target: nothing can be forwarded.
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
        assert server.proc.poll() is None, server.text  # the server ignored the unreadable events and lives on
        time.sleep(0.2)
    finally:
        client_code = client.stop() if client else None
        server_code = server.stop()
        observer.close()
        echo.close()
    assert code == client_code == ExitCode.CONNECT_FAILED, client.text
    assert MAX_WAIT <= elapsed < MAX_WAIT + 8
    assert "Traceback" not in client.text and "Traceback" not in server.text
    errors = [line for line in client.lines if "Error" in line]
    assert errors == [f"Error: Timeout waiting for offer from peer ({MAX_WAIT:g}s)"], client.text
    assert client.lines[-1] == errors[0]
    assert "Listening on" not in client.text and "Received offer" not in client.text
    assert "Session " not in server.text, server.text  # no session was ever started
    assert server_code == 0, server.text
    assert echo.accepted == 0 and echo.digests == []
    # The request did reach the relay (re-published), in the client's own format; no answer ever came back.
    requests = observer.of_type("tunnel-request")
    assert len(requests) >= 2
    assert not observer.of_type("tunnel-offer") and not observer.of_type("tunnel-reject")
    for ev in requests:
        if client_plain:
            assert list(plaintext_json(ev)) == REQUEST_FIELDS
        else:
            assert_not_json(ev["content"])
