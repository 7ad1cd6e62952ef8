"""tunnel_core.blocks: TRS1 payloads, BEGIN/END blocks and the manual/nostr JSON messages (reference 4.2-4.4, 5.4)."""

from __future__ import annotations

import base64
import json
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel_core.blocks import (
    MANUAL_SIGNAL_VERSION,
    BlockError,
    BlockReader,
    ManualAnswer,
    ManualOffer,
    ManualReject,
    ManualRequest,
    begin_marker,
    decode_answer,
    decode_offer,
    decode_payload,
    encode_block,
    encode_payload,
    end_marker,
    read_block,
)
from tunnel_core.errors import LocalProtocolError

GOLDEN_JSON = (
    b'{"version":1,"ice_ufrag":"abcd","ice_pwd":"0123456789abcdefghijkl","candidates":["candidate:1 1 udp'
    b' 2130706431 192.168.1.10 50000 typ host"],"quic_fingerprint":"","source":"tcp://127.0.0.1:22"}'
)
GOLDEN_OFFER = ManualOffer(
    ice_ufrag="abcd",
    ice_pwd="0123456789abcdefghijkl",
    candidates=("candidate:1 1 udp 2130706431 192.168.1.10 50000 typ host",),
    quic_fingerprint="",
    source="tcp://127.0.0.1:22",
)
ANSWER = ManualAnswer(
    ice_ufrag="wxyz",
    ice_pwd="p" * 22,
    candidates=("candidate:2 1 udp 2130706431 127.0.0.1 40000 typ host",),
    quic_fingerprint="ab" * 32,
)


def _payload(obj: object) -> str:
    return encode_payload(json.dumps(obj, separators=(",", ":")).encode())


# ---------------------------------------------------------------------------------------------- golden vectors


def test_golden_offer_json_and_payload() -> None:
    assert MANUAL_SIGNAL_VERSION == 1
    assert GOLDEN_OFFER.to_json() == GOLDEN_JSON
    payload = encode_payload(GOLDEN_JSON)
    assert payload.startswith("TRS1:0bef0b95:eyJ2ZXJzaW9uIjoxLCJpY2VfdW")
    assert len(payload) == 272
    assert decode_payload(payload) == GOLDEN_JSON
    assert decode_offer(payload) == GOLDEN_OFFER


def test_golden_block_layout() -> None:
    block = encode_block("OFFER", GOLDEN_OFFER)
    lines = block.split("\n")
    assert block.startswith("\n-----BEGIN TUNNEL-RS MANUAL OFFER-----\n")
    assert block.endswith("\n-----END TUNNEL-RS MANUAL OFFER-----\n\n")
    body = lines[2:-3]
    assert [len(line) for line in body] == [76, 76, 76, 44]
    assert "".join(body) == encode_payload(GOLDEN_JSON)
    assert decode_offer(block) == GOLDEN_OFFER


def test_optional_fields_omitted_and_ordered() -> None:
    offer = ManualOffer(ice_ufrag="u", ice_pwd="p", candidates=(), quic_fingerprint="f", session_id="s")
    assert offer.to_json() == (
        b'{"version":1,"ice_ufrag":"u","ice_pwd":"p","candidates":[],"quic_fingerprint":"f","session_id":"s"}'
    )
    answer = ManualAnswer(ice_ufrag="u", ice_pwd="p", candidates=["c"], session_id="s", quic_fingerprint="f")
    assert answer.to_json() == (
        b'{"version":1,"ice_ufrag":"u","ice_pwd":"p","candidates":["c"],"session_id":"s","quic_fingerprint":"f"}'
    )
    assert ManualAnswer(ice_ufrag="u", ice_pwd="p", candidates=()).to_json() == (
        b'{"version":1,"ice_ufrag":"u","ice_pwd":"p","candidates":[]}'
    )


def test_nostr_messages_shapes() -> None:
    request = ManualRequest(
        ice_ufrag="u", ice_pwd="p", candidates=("c",), session_id="0011223344556677", timestamp=1700000000,
        source="tcp://127.0.0.1:22",
    )
    assert request.to_json() == (
        b'{"version":1,"ice_ufrag":"u","ice_pwd":"p","candidates":["c"],"session_id":"0011223344556677",'
        b'"timestamp":1700000000,"source":"tcp://127.0.0.1:22"}'
    )
    assert ManualRequest.from_json(request.to_json()) == request
    reject = ManualReject(session_id="0011223344556677", reason="busy")
    assert reject.to_json() == b'{"version":1,"session_id":"0011223344556677","reason":"busy"}'
    assert ManualReject.from_json(reject.to_json()) == reject


def test_reject_reason_truncated() -> None:
    reject = ManualReject(session_id="s", reason="\u00e9" * 400)
    assert len(reject.reason.encode()) <= 512
    assert reject.reason.endswith("...")
    long_json = json.dumps({"version": 1, "session_id": "s", "reason": "x" * 2000}).encode()
    assert ManualReject.from_json(long_json).reason == "x" * 509 + "..."


# ---------------------------------------------------------------------------------------------- round trips

texts = st.text(max_size=40)
candidates = st.lists(st.text(max_size=80), max_size=5).map(tuple)
offers = st.builds(
    ManualOffer, ice_ufrag=texts, ice_pwd=texts, candidates=candidates, quic_fingerprint=texts,
    session_id=st.none() | texts, source=st.none() | texts,
)
answers = st.builds(
    ManualAnswer, ice_ufrag=texts, ice_pwd=texts, candidates=candidates, session_id=st.none() | texts,
    quic_fingerprint=st.none() | texts,
)
requests = st.builds(
    ManualRequest, ice_ufrag=texts, ice_pwd=texts, candidates=candidates, session_id=texts,
    timestamp=st.integers(0, 2**64 - 1), source=st.none() | texts,
)
rejects = st.builds(ManualReject, session_id=texts, reason=st.text(max_size=600))


@given(offers)
def test_offer_block_round_trip(offer: ManualOffer) -> None:
    block = encode_block("OFFER", offer)
    assert decode_offer(block) == offer
    assert all(len(line) <= 76 for line in block.split("\n"))


@given(answers)
def test_answer_block_round_trip(answer: ManualAnswer) -> None:
    assert decode_answer(encode_block("ANSWER", answer)) == answer


@given(requests)
def test_request_json_round_trip(request: ManualRequest) -> None:
    assert ManualRequest.from_json(request.to_json()) == request


@given(rejects)
def test_reject_json_round_trip(reject: ManualReject) -> None:
    assert ManualReject.from_json(reject.to_json()) == reject


@given(st.binary(max_size=500))
def test_payload_round_trip(data: bytes) -> None:
    payload = encode_payload(data)
    assert payload.isascii()
    assert decode_payload(payload) == data
    assert decode_payload(f"  {payload}\r\n") == data


# ---------------------------------------------------------------------------------------------- fuzz-ish properties


@given(st.text(max_size=300))
def test_decode_offer_arbitrary_text_raises_only_signal_error(text: str) -> None:
    try:
        decode_offer(text)
    except BlockError:
        pass


@given(st.binary(max_size=300))
def test_from_json_arbitrary_bytes_raise_only_signal_error(data: bytes) -> None:
    for cls in (ManualOffer, ManualAnswer, ManualRequest, ManualReject):
        try:
            cls.from_json(data)
        except BlockError:
            pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
field_names = st.sampled_from(
    ["version", "ice_ufrag", "ice_pwd", "candidates", "quic_fingerprint", "session_id", "source", "timestamp",
     "reason", "other"]
)


@given(st.dictionaries(field_names, json_values))
def test_from_json_arbitrary_objects_raise_only_signal_error(obj: dict[str, object]) -> None:
    body = json.dumps(obj).encode()
    for cls in (ManualOffer, ManualAnswer, ManualRequest, ManualReject):
        try:
            cls.from_json(body)
        except BlockError:
            pass


@given(st.lists(st.text(max_size=40), max_size=12))
def test_block_reader_arbitrary_lines_raise_only_signal_error(lines: list[str]) -> None:
    reader = BlockReader("OFFER")
    try:
        for line in lines:
            if reader.feed_line(line) is not None:
                return
        reader.feed_eof()
    except BlockError:
        pass


# ---------------------------------------------------------------------------------------------- payload errors


def test_payload_error_messages() -> None:
    good = encode_payload(GOLDEN_JSON)
    _, crc, body = good.split(":")
    cases: dict[str, str | None] = {
        "hello": "Invalid manual payload checksum",
        "TRS1:abc": "Invalid manual payload body",
        f"XYZ1:{crc}:{body}": "Manual payload missing prefix",
        f"TRS:{crc}:{body}": 'Invalid signaling version: ""',
        f"TRSx:{crc}:{body}": 'Invalid signaling version: "x"',
        f'TRS"\t:{crc}:{body}': 'Invalid signaling version: "\\"\\t"',
        f"TRS70000:{crc}:{body}": 'Invalid signaling version: "70000"',
        # Capped (issue 18 item 6): a 5000-digit version is not echoed whole.
        "TRS" + "9" * 5000 + f":{crc}:{body}": 'Invalid signaling version: "' + "9" * 199 + '... (5002 characters)',
        f"TRS+0000000000001:{crc}:{body}": None,
        f"TRS2:{crc}:{body}": "Signaling version mismatch (expected 1, got 2)",
        f"TRS+2:{crc}:{body}": "Signaling version mismatch (expected 1, got 2)",
        f"TRS1:xyz:{body}": "Invalid manual payload checksum",
        f"TRS1::{body}": "Invalid manual payload checksum",
        f"TRS1:1ffffffff:{body}": "Invalid manual payload checksum",
        f"TRS1:{crc}:{body}=": "Manual payload base64 decode failed",
        f"TRS1:{crc}:{body[:-1]}+": "Manual payload base64 decode failed",
        f"TRS1:{crc}:{body}AAA": "Manual payload base64 decode failed",  # length % 4 == 1
        f"TRS1:{crc}:ab": "Manual payload base64 decode failed",
    }
    for payload, message in cases.items():
        if message is None:  # Rust's u16 parser accepts a '+' and leading zeros; so do we
            assert decode_payload(payload) == GOLDEN_JSON
            continue
        with pytest.raises(BlockError) as info:
            decode_payload(payload)
        assert str(info.value) == message, payload


def test_tampered_checksum() -> None:
    good = encode_payload(GOLDEN_JSON)
    tampered = good.replace(":0bef0b95:", ":0bef0b96:")
    with pytest.raises(BlockError, match=r"^Manual payload checksum mismatch \(expected 0bef0b96, got 0bef0b95\)$"):
        decode_payload(tampered)
    # Uppercase and shorter hex parse like Rust's from_str_radix: same value, same verdict.
    assert decode_payload(good.replace(":0bef0b95:", ":0BEF0B95:")) == GOLDEN_JSON
    assert decode_payload(good.replace(":0bef0b95:", ":bef0b95:")) == GOLDEN_JSON


def test_tampered_body() -> None:
    good = encode_payload(GOLDEN_JSON)
    body = good.split(":", 2)[2]
    flipped = ("A" if body[20] != "A" else "B").join([body[:20], body[21:]])
    with pytest.raises(BlockError, match=r"^Manual payload checksum mismatch"):
        decode_payload(good.rsplit(":", 1)[0] + ":" + flipped)


def test_json_parse_failed() -> None:
    for raw in [b"not json", b"[]", b'{"version":1}', b'{"version":1,"ice_ufrag":1,"ice_pwd":"","candidates":[],'
                b'"quic_fingerprint":""}']:
        with pytest.raises(BlockError, match=r"^Manual payload JSON parse failed$"):
            decode_offer(encode_payload(raw))


def test_offer_requires_fingerprint_key_but_answer_does_not() -> None:
    offer_without = {"version": 1, "ice_ufrag": "u", "ice_pwd": "p", "candidates": []}
    with pytest.raises(BlockError, match="JSON parse failed"):
        decode_offer(_payload(offer_without))
    assert decode_answer(_payload(offer_without)) == ManualAnswer(ice_ufrag="u", ice_pwd="p", candidates=())


def test_unknown_fields_ignored_and_nulls_are_none() -> None:
    obj = {"version": 1, "ice_ufrag": "u", "ice_pwd": "p", "candidates": ["c"], "quic_fingerprint": "",
           "session_id": None, "source": None, "future": {"x": [1]}}
    assert decode_offer(_payload(obj)) == ManualOffer(ice_ufrag="u", ice_pwd="p", candidates=("c",))


def test_struct_version_mismatch() -> None:
    obj = {"version": 2, "ice_ufrag": "u", "ice_pwd": "p", "candidates": [], "quic_fingerprint": ""}
    with pytest.raises(BlockError, match=r"^Manual signaling version mismatch \(expected 1, got 2\)$"):
        decode_offer(_payload(obj))
    with pytest.raises(BlockError, match=r"^Manual signaling version mismatch \(expected 1, got 0\)$"):
        ManualReject.from_json(b'{"version":0,"session_id":"s","reason":"r"}')
    with pytest.raises(BlockError, match=r"^Manual payload JSON parse failed$"):
        ManualReject.from_json(b'{"version":70000,"session_id":"s","reason":"r"}')


def test_request_timestamp_must_be_u64() -> None:
    base = {"version": 1, "ice_ufrag": "u", "ice_pwd": "p", "candidates": [], "session_id": "s"}
    for ts in (-1, 2**64, 1.5, "1", True):
        with pytest.raises(BlockError, match="JSON parse failed"):
            ManualRequest.from_json(json.dumps({**base, "timestamp": ts}).encode())
    with pytest.raises(LocalProtocolError):
        ManualRequest(ice_ufrag="u", ice_pwd="p", candidates=(), session_id="s", timestamp=-1).to_json()


def test_lone_surrogate_cannot_be_encoded() -> None:
    with pytest.raises(LocalProtocolError):
        ManualOffer(ice_ufrag="\ud800", ice_pwd="p", candidates=()).to_json()


# ---------------------------------------------------------------------------------------------- block reading


def test_block_tolerates_crlf_indentation_and_blank_lines() -> None:
    block = encode_block("ANSWER", ANSWER)
    mangled = "\r\n\r\n".join("    " + line + " \t" for line in block.split("\n"))
    assert decode_answer(mangled) == ANSWER


def test_block_reader_line_by_line_stops_at_end() -> None:
    block = encode_block("OFFER", GOLDEN_OFFER)
    reader = BlockReader("OFFER")
    results = [reader.feed_line(line + "\n") for line in block.split("\n")[:-2]]
    assert results[:-1] == [None] * (len(results) - 1)
    assert results[-1] == encode_payload(GOLDEN_JSON)
    assert reader.done
    reader.feed_eof()
    with pytest.raises(LocalProtocolError):
        reader.feed_line("more")


def test_block_reader_accepts_several_lines_per_call() -> None:
    reader = BlockReader("ANSWER")
    assert reader.feed_line(encode_block("ANSWER", ANSWER)) is not None


def test_missing_begin_marker() -> None:
    reader = BlockReader("OFFER")
    assert reader.feed_line("\n") is None
    assert reader.feed_line("   ") is None
    with pytest.raises(BlockError, match=r"^Missing BEGIN marker$"):
        reader.feed_eof()
    with pytest.raises(BlockError, match=r"^Missing BEGIN marker$"):
        read_block([], "OFFER")


def test_unexpected_text_before_begin() -> None:
    with pytest.raises(BlockError, match=r"^Unexpected text before BEGIN marker$"):
        decode_offer("hello\n" + encode_block("OFFER", GOLDEN_OFFER))
    with pytest.raises(BlockError, match=r"^Unexpected text before BEGIN marker$"):
        decode_offer(end_marker("OFFER") + "\n")
    reader = BlockReader("OFFER")
    with pytest.raises(BlockError):
        reader.feed_line("junk")
    with pytest.raises(LocalProtocolError):  # a failed reader stays failed
        reader.feed_line(begin_marker("OFFER"))


def test_end_marker_not_found() -> None:
    block = encode_block("OFFER", GOLDEN_OFFER)
    truncated = block[: block.index("-----END")]
    with pytest.raises(BlockError, match=r"^END marker not found$"):
        decode_offer(truncated)


def test_no_payload_between_markers() -> None:
    with pytest.raises(BlockError, match=r"^No payload found between markers$"):
        decode_offer(f"{begin_marker('OFFER')}\n\n   \n{end_marker('OFFER')}\n")


def test_wrong_kind_is_refused_clearly() -> None:
    with pytest.raises(BlockError, match=r"^Expected an OFFER block but got an ANSWER block$"):
        decode_offer(encode_block("ANSWER", ANSWER))
    with pytest.raises(BlockError, match=r"^Expected an ANSWER block but got an OFFER block$"):
        decode_answer(encode_block("OFFER", GOLDEN_OFFER))


def test_mismatched_end_and_nested_begin() -> None:
    payload = encode_payload(GOLDEN_JSON)
    with pytest.raises(BlockError, match=r"^Mismatched END marker"):
        decode_offer(f"{begin_marker('OFFER')}\n{payload}\n{end_marker('ANSWER')}\n")
    with pytest.raises(BlockError, match=r"^Unexpected BEGIN marker inside block$"):
        decode_offer(f"{begin_marker('OFFER')}\n{payload}\n{begin_marker('OFFER')}\n")


def test_oversized_paste_is_refused() -> None:
    reader = BlockReader("OFFER")
    reader.feed_line(begin_marker("OFFER"))
    with pytest.raises(BlockError, match="too large"):
        for _ in range(20000):
            reader.feed_line("A" * 76)


def test_encode_block_checks_kind() -> None:
    with pytest.raises(LocalProtocolError):
        encode_block("ANSWER", GOLDEN_OFFER)
    with pytest.raises(LocalProtocolError):
        encode_block("REQUEST", GOLDEN_OFFER)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        BlockReader("offer")  # type: ignore[arg-type]


def test_block_payload_with_interior_whitespace_fails_in_base64() -> None:
    payload = encode_payload(GOLDEN_JSON)
    broken = payload[:100] + " " + payload[100:]
    with pytest.raises(BlockError, match=r"^Manual payload base64 decode failed$"):
        decode_offer(f"{begin_marker('OFFER')}\n{broken}\n{end_marker('OFFER')}")


def test_payload_crc_is_over_exact_json_bytes() -> None:
    # A peer that formats JSON differently (spaces) still interoperates: the CRC covers what it sent.
    spaced = json.dumps(json.loads(GOLDEN_JSON)).encode()
    payload = f"TRS1:{zlib.crc32(spaced):08x}:{base64.urlsafe_b64encode(spaced).decode().rstrip('=')}"
    assert decode_offer(payload) == GOLDEN_OFFER
