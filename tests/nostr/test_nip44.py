"""NIP-44 v2 against the official vectors (paulmillr/nip44, vendored, sha256-checked) and against nostr-sdk."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

import nostr_sdk
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel_core.nostr import nip44
from tunnel_core.nostr.errors import NostrError
from tunnel_core.nostr.keys import PublicKey, SecretKey

VECTORS = pathlib.Path(__file__).with_name("nip44.vectors.json")
VECTORS_SHA256 = "269ed0f69e4c192512cc779e78c555090cebc7c785b609e338a62afc3ce25040"


def _v2() -> dict:
    raw = VECTORS.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == VECTORS_SHA256
    return json.loads(raw)["v2"]


V2 = _v2()


@pytest.mark.parametrize("case", V2["valid"]["get_conversation_key"])
def test_conversation_key(case: dict) -> None:
    key = nip44.conversation_key(SecretKey(bytes.fromhex(case["sec1"])), PublicKey(bytes.fromhex(case["pub2"])))
    assert key.hex() == case["conversation_key"]


def test_message_keys() -> None:
    data = V2["valid"]["get_message_keys"]
    conv = bytes.fromhex(data["conversation_key"])
    for case in data["keys"]:
        keys = nip44.message_keys(conv, bytes.fromhex(case["nonce"]))
        assert tuple(k.hex() for k in keys) == (case["chacha_key"], case["chacha_nonce"], case["hmac_key"])


@pytest.mark.parametrize(("unpadded", "padded"), V2["valid"]["calc_padded_len"])
def test_padding(unpadded: int, padded: int) -> None:
    assert nip44.calc_padded_len(unpadded) == padded


@pytest.mark.parametrize("case", V2["valid"]["encrypt_decrypt"])
def test_encrypt_decrypt(case: dict) -> None:
    sk1, sk2 = SecretKey(bytes.fromhex(case["sec1"])), SecretKey(bytes.fromhex(case["sec2"]))
    conv = nip44.conversation_key(sk1, sk2.public_key)
    assert conv.hex() == case["conversation_key"]
    assert nip44.encrypt_with_nonce(case["plaintext"], conv, bytes.fromhex(case["nonce"])) == case["payload"]
    assert nip44.decrypt(case["payload"], nip44.conversation_key(sk2, sk1.public_key)) == case["plaintext"]


@pytest.mark.parametrize("case", V2["valid"]["encrypt_decrypt_long_msg"])
def test_long_messages(case: dict) -> None:
    plaintext = case["pattern"] * case["repeat"]
    assert hashlib.sha256(plaintext.encode()).hexdigest() == case["plaintext_sha256"]
    conv, nonce = bytes.fromhex(case["conversation_key"]), bytes.fromhex(case["nonce"])
    payload = nip44.encrypt_with_nonce(plaintext, conv, nonce)
    assert hashlib.sha256(payload.encode()).hexdigest() == case["payload_sha256"]
    assert nip44.decrypt(payload, conv) == plaintext


@pytest.mark.parametrize("length", V2["invalid"]["encrypt_msg_lengths"])
def test_invalid_lengths(length: int) -> None:
    with pytest.raises(NostrError):
        nip44.encrypt_with_nonce("a" * length, b"\x01" * 32, b"\x02" * 32)


@pytest.mark.parametrize("case", V2["invalid"]["get_conversation_key"])
def test_invalid_conversation_keys(case: dict) -> None:
    with pytest.raises(NostrError):
        nip44.conversation_key(SecretKey(bytes.fromhex(case["sec1"])), PublicKey(bytes.fromhex(case["pub2"])))


@pytest.mark.parametrize("case", V2["invalid"]["decrypt"])
def test_invalid_payloads(case: dict) -> None:
    with pytest.raises(NostrError):
        nip44.decrypt(case["payload"], bytes.fromhex(case["conversation_key"]))


def test_interop_with_nostr_sdk_both_ways() -> None:
    a, b = nostr_sdk.Keys.generate(), nostr_sdk.Keys.generate()
    a_ours = SecretKey.parse(a.secret_key().to_hex())
    b_ours = SecretKey.parse(b.secret_key().to_hex())
    text = '{"candidates":["candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host"],"ice_pwd":"secret"}'
    ours = nip44.encrypt(text, nip44.conversation_key(a_ours, b_ours.public_key), os.urandom)
    assert nostr_sdk.nip44_decrypt(b.secret_key(), a.public_key(), ours) == text
    theirs = nostr_sdk.nip44_encrypt(b.secret_key(), a.public_key(), text, nostr_sdk.Nip44Version.V2)
    assert nip44.decrypt(theirs, nip44.conversation_key(a_ours, b_ours.public_key)) == text


@settings(max_examples=50)
@given(st.text(min_size=1, max_size=2000).filter(lambda t: 1 <= len(t.encode()) <= 65535))
def test_roundtrip(text: str) -> None:
    conv = bytes(range(32))
    assert nip44.decrypt(nip44.encrypt(text, conv, os.urandom), conv) == text


@given(st.text(max_size=300))
def test_decrypt_arbitrary_text_raises_only_nip44_error(text: str) -> None:
    try:
        nip44.decrypt(text, bytes(32))
    except nip44.Nip44Error:
        pass
