from __future__ import annotations

import os

import nostr_sdk
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel_core.nostr.errors import NostrError
from tunnel_core.nostr.keys import PublicKey, SecretKey, bech32_decode, bech32_encode

# NIP-19's own examples.
NPUB = "npub180cvv07tjdrrgpa0j7j7tmnyl2yr6yr7l8j4s3evf6u64th6gkwsyjh6w6"
NPUB_HEX = "3bf0c63fcb93463407af97a5e5ee64fa883d107ef9e558472c4eb9aaaefa459d"
NSEC = "nsec1vl029mgpspedva04g90vltkh6fvh240zqtv9k0t9af8935ke9laqsnlfe5"
NSEC_HEX = "67dea2ed018072d675f5415ecfaed7d2597555e202d85b3d65ea4e58d2d92ffa"


def test_nip19_examples() -> None:
    assert PublicKey.parse(NPUB).hex == NPUB_HEX
    assert PublicKey.parse(NPUB_HEX).npub == NPUB
    assert SecretKey.parse(NSEC).hex == NSEC_HEX
    assert SecretKey.parse(NSEC_HEX).nsec == NSEC


def test_matches_nostr_sdk() -> None:
    for _ in range(5):
        keys = nostr_sdk.Keys.generate()
        ours = SecretKey.parse(keys.secret_key().to_hex())
        assert ours.nsec == keys.secret_key().to_bech32()
        assert ours.public_key.hex == keys.public_key().to_hex()
        assert ours.public_key.npub == keys.public_key().to_bech32()
        assert PublicKey.parse(keys.public_key().to_bech32()).hex == keys.public_key().to_hex()


@pytest.mark.parametrize("text", ["", "nsec1", "nsec1qqqq", NSEC[:-1] + "6", NPUB, "zz" * 32, "00" * 32, "ff" * 32])
def test_bad_secret_keys(text: str) -> None:
    with pytest.raises(NostrError, match="Failed to parse private key"):
        SecretKey.parse(text)


@pytest.mark.parametrize("text", ["npub1", NPUB[:-1] + "7", NSEC, "00" * 32, "x" * 64, "abc"])
def test_bad_public_keys(text: str) -> None:
    with pytest.raises(NostrError, match="Failed to parse peer public key"):
        PublicKey.parse(text)


def test_repr_hides_secret() -> None:
    key = SecretKey.generate(os.urandom)
    assert key.hex not in repr(key)


@given(st.binary(min_size=0, max_size=64), st.sampled_from(["npub", "nsec", "note", "x"]))
def test_bech32_roundtrip(data: bytes, hrp: str) -> None:
    assert bech32_decode(bech32_encode(hrp, data)) == (hrp, data)


@given(st.text(max_size=120))
def test_bech32_decode_arbitrary_text_raises_only_nostr_error(text: str) -> None:
    try:
        bech32_decode(text)
    except NostrError:
        pass


@given(st.text(max_size=80))
def test_key_parsers_raise_only_nostr_error(text: str) -> None:
    for parse in (SecretKey.parse, PublicKey.parse):
        try:
            parse(text)
        except NostrError:
            pass
