from __future__ import annotations

import json
import os

import nostr_sdk
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel_core.nostr.errors import NostrError
from tunnel_core.nostr.event import Event, parse_event, serialize, sign_event
from tunnel_core.nostr.keys import SecretKey

KEY = SecretKey(bytes.fromhex("67dea2ed018072d675f5415ecfaed7d2597555e202d85b3d65ea4e58d2d92ffa"))


def _event(content: str = "hello \"nostr\"\n\u00e9\U0001f600", **kw: object) -> Event:
    return sign_event(KEY, created_at=1_700_000_000, kind=24242,
                      tags=[["t", "ab" * 16], ["p", "cd" * 32], ["type", "tunnel-request"]],
                      content=content, rng=os.urandom, **kw)  # type: ignore[arg-type]


def test_sign_and_verify() -> None:
    ev = _event()
    ev.verify()
    assert parse_event(ev.to_json()) == ev
    assert ev.tag("type") == "tunnel-request"
    assert ev.tag("missing") is None


def test_serialization_is_canonical() -> None:
    assert serialize("aa", 1, 2, (("t", "x"),), "a\nb") == b'[0,"aa",1,2,[["t","x"]],"a\\nb"]'


def test_nostr_sdk_verifies_our_events() -> None:
    for content in ("", "x", "multi\nline \t \\ \" \u2028 \x01 \x7f", "e" * 5000):
        ev = _event(content)
        theirs = nostr_sdk.Event.from_json(ev.to_json())
        assert theirs.verify()
        assert theirs.id().to_hex() == ev.id


def test_we_verify_nostr_sdk_events() -> None:
    keys = nostr_sdk.Keys.generate()
    built = nostr_sdk.EventBuilder(nostr_sdk.Kind(24242), "content \u00e9\n").tags(
        [nostr_sdk.Tag.parse(["t", "ab" * 16]), nostr_sdk.Tag.parse(["type", "tunnel-offer"])]
    ).finalize(keys)
    ours = parse_event(built.as_json())
    assert ours.pubkey == keys.public_key().to_hex()
    assert ours.tag("type") == "tunnel-offer"


@pytest.mark.parametrize("field", ["content", "created_at", "kind", "tags", "pubkey", "sig", "id"])
def test_tampering_is_detected(field: str) -> None:
    obj = _event().to_dict()
    other = SecretKey.generate(os.urandom).public_key.hex
    obj[field] = {
        "content": "changed", "created_at": 1, "kind": 24243, "tags": [["t", "00" * 16]],
        "pubkey": other, "sig": "00" * 64, "id": "11" * 32,
    }[field]
    with pytest.raises(NostrError):
        parse_event(json.dumps(obj))
    assert not nostr_sdk.Event.from_json(json.dumps(obj)).verify() if field in ("content", "sig") else True


@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_nostr_error(data: bytes) -> None:
    try:
        parse_event(data)
    except NostrError:
        pass


@given(st.dictionaries(st.sampled_from(["id", "pubkey", "created_at", "kind", "tags", "content", "sig"]),
                       st.one_of(st.text(max_size=130), st.integers(), st.lists(st.lists(st.text(max_size=5))))))
def test_arbitrary_objects_raise_only_nostr_error(obj: dict) -> None:
    try:
        parse_event(json.dumps(obj))
    except NostrError:
        pass
