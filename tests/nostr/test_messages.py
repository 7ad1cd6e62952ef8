from __future__ import annotations

import base64
import json
import os

import nostr_sdk
import pytest

from tunnel_core.blocks import ManualAnswer, ManualOffer, ManualReject, ManualRequest
from tunnel_core.errors import LocalProtocolError
from tunnel_core.nostr.errors import NostrError
from tunnel_core.nostr.keys import SecretKey
from tunnel_core.nostr.messages import (
    KIND,
    TYPE_ANSWER,
    TYPE_OFFER,
    TYPE_REJECT,
    TYPE_REQUEST,
    Channel,
    NostrRequest,
    session_id,
    transfer_id,
)

CLIENT = SecretKey.generate(os.urandom)
SERVER = SecretKey.generate(os.urandom)
FP = "ab" * 32


def _request(sid: str = "0123456789abcdef", fp: str | None = FP) -> NostrRequest:
    return NostrRequest(ManualRequest(ice_ufrag="uf", ice_pwd="pw" * 11,
                                      candidates=("candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host",),
                                      session_id=sid, timestamp=1_700_000_000, source="tcp://127.0.0.1:22"),
                        quic_fingerprint=fp)


def test_transfer_id_matches_reference_rule() -> None:
    a, b = CLIENT.public_key, SERVER.public_key
    assert transfer_id(a, b) == transfer_id(b, a)
    assert len(transfer_id(a, b)) == 32
    # Reference 5.2 example computation with two known keys.
    import hashlib

    lo, hi = sorted((a.hex, b.hex))
    assert transfer_id(a, b) == hashlib.sha256((lo + hi).encode()).hexdigest()[:32]


def test_session_id_is_16_hex() -> None:
    sid = session_id(os.urandom)
    assert len(sid) == 16 and int(sid, 16) >= 0


@pytest.mark.parametrize(("message", "type_name"), [
    (_request(), TYPE_REQUEST),
    (ManualOffer(ice_ufrag="u", ice_pwd="p", candidates=(), quic_fingerprint=FP, session_id="s"), TYPE_OFFER),
    (ManualAnswer(ice_ufrag="u", ice_pwd="p", candidates=(), session_id="s"), TYPE_ANSWER),
    (ManualReject(session_id="s", reason="Server at capacity (3/3 sessions)"), TYPE_REJECT),
])
def test_seal_and_open(message: object, type_name: str) -> None:
    sender, receiver = Channel(CLIENT, SERVER.public_key), Channel(SERVER, CLIENT.public_key)
    event = sender.seal(message, created_at=1_700_000_000, rng=os.urandom)  # type: ignore[arg-type]
    assert event.kind == KIND
    assert [list(t) for t in event.tags] == [["t", sender.transfer_id], ["p", SERVER.public_key.hex],
                                             ["type", type_name]]
    assert "127.0.0.1" not in event.content and "version" not in event.content  # encrypted
    received = receiver.open(event, (type_name,))
    assert received.message == message
    # nostr-sdk verifies the event and decrypts its content with the receiver's key.
    assert nostr_sdk.Event.from_json(event.to_json()).verify()
    keys = nostr_sdk.Keys.parse(SERVER.hex)
    plain = nostr_sdk.nip44_decrypt(keys.secret_key(), nostr_sdk.PublicKey.parse(CLIENT.public_key.hex),
                                    event.content)
    assert json.loads(plain)["version"] == 1


def test_request_json_shape_extends_reference_with_fingerprint() -> None:
    body = json.loads(_request().to_json())
    assert list(body) == ["version", "ice_ufrag", "ice_pwd", "candidates", "session_id", "timestamp", "source",
                          "quic_fingerprint"]
    assert NostrRequest.from_json(_request(fp=None).to_json()).quic_fingerprint is None
    with pytest.raises(NostrError):
        NostrRequest.from_json(json.dumps({**body, "quic_fingerprint": "nothex"}).encode())


def test_rejects_wrong_author_transfer_type_and_recipient() -> None:
    intruder = SecretKey.generate(os.urandom)
    receiver = Channel(SERVER, CLIENT.public_key)
    forged = Channel(intruder, SERVER.public_key).seal(_request(), created_at=1, rng=os.urandom)
    with pytest.raises(NostrError, match="not authored"):
        receiver.open(forged, (TYPE_REQUEST,))
    good = Channel(CLIENT, SERVER.public_key).seal(_request(), created_at=1, rng=os.urandom)
    with pytest.raises(NostrError, match="unexpected message type"):
        receiver.open(good, (TYPE_OFFER,))
    # Addressed to someone else (the client talking to another server).
    other_server = SecretKey.generate(os.urandom)
    elsewhere = Channel(CLIENT, other_server.public_key).seal(_request(), created_at=1, rng=os.urandom)
    with pytest.raises(NostrError):
        receiver.open(elsewhere, (TYPE_REQUEST,))


def test_content_encrypted_to_someone_else_is_rejected() -> None:
    # Right author and tags, but the content is encrypted for a third key: the MAC fails.
    third = SecretKey.generate(os.urandom)
    sealed = Channel(CLIENT, third.public_key).seal(_request(), created_at=1, rng=os.urandom)
    receiver = Channel(SERVER, CLIENT.public_key)
    import attrs

    retagged = attrs.evolve(sealed, tags=(("t", receiver.transfer_id), ("p", SERVER.public_key.hex),
                                          ("type", TYPE_REQUEST)))
    with pytest.raises(NostrError):
        receiver.open(retagged, (TYPE_REQUEST,))


def test_plaintext_compat_mode_is_upstream_format() -> None:
    event = Channel(CLIENT, SERVER.public_key, plaintext=True).seal(_request(fp=None), created_at=1, rng=os.urandom)
    body = base64.urlsafe_b64decode(event.content + "=" * (-len(event.content) % 4))
    assert json.loads(body)["source"] == "tcp://127.0.0.1:22"
    assert "=" not in event.content
    received = Channel(SERVER, CLIENT.public_key, plaintext=True).open(event, (TYPE_REQUEST,))
    assert received.message == _request(fp=None)


def test_kind_must_be_ephemeral() -> None:
    with pytest.raises(LocalProtocolError):
        Channel(CLIENT, SERVER.public_key, kind=1)
    channel = Channel(CLIENT, SERVER.public_key, kind=24243)
    assert channel.subscription_filter()["kinds"] == [24243]
