"""tunnel_core.wire: SourceRequest/SourceResponse framing and the UDP-over-stream codec (reference 3.1-3.3)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel_core.errors import LocalProtocolError
from tunnel_core.wire import (
    MAX_MESSAGE_SIZE,
    MAX_REASON_BYTES,
    STREAM_OPEN_MARKER,
    MessageReader,
    SourceRequest,
    SourceResponse,
    UdpFrameDecoder,
    WireError,
    decode_source_request,
    decode_source_response,
    encode_source_request,
    encode_source_response,
    encode_udp_frame,
    split_message,
    truncate_reason,
)

versions = st.integers(min_value=0, max_value=0xFFFF)


# ---------------------------------------------------------------------------------------------- constants/golden


def test_constants() -> None:
    assert STREAM_OPEN_MARKER == b"\x00"
    assert MAX_MESSAGE_SIZE == 16384
    assert MAX_REASON_BYTES == 512


def test_source_request_v3_golden_vector() -> None:
    encoded = encode_source_request(SourceRequest(source="tcp://127.0.0.1:22", version=3))
    body = b'{"version":3,"source":"tcp://127.0.0.1:22"}'
    assert len(body) == 43
    assert encoded == b"\x00\x00\x00\x2b" + body


def test_source_response_accepted_omits_reason() -> None:
    assert encode_source_response(SourceResponse(accepted=True, version=3)) == (
        b"\x00\x00\x00\x1d" + b'{"version":3,"accepted":true}'
    )


def test_source_response_rejected_carries_reason() -> None:
    encoded = encode_source_response(SourceResponse(accepted=False, reason="Session limit reached", version=1))
    assert encoded[4:] == b'{"version":1,"accepted":false,"reason":"Session limit reached"}'
    assert int.from_bytes(encoded[:4], "big") == len(encoded) - 4


def test_non_ascii_is_written_as_utf8_like_serde() -> None:
    encoded = encode_source_request(SourceRequest(source="tcp://h\u00e9\n\"x\u0001:1"))
    assert encoded[4:] == '{"version":1,"source":"tcp://h\u00e9\\n\\"x\\u0001:1"}'.encode()


# ---------------------------------------------------------------------------------------------- truncate_reason


def test_truncate_reason_short_unchanged() -> None:
    assert truncate_reason("short") == "short"
    assert truncate_reason("x" * 512) == "x" * 512


def test_truncate_reason_ascii() -> None:
    out = truncate_reason("a" * 600)
    assert out == "a" * 509 + "..."
    assert len(out.encode()) == 512


def test_truncate_reason_respects_utf8_boundary() -> None:
    # 2-byte characters: 509 is odd, so the cut must step back to 508 bytes.
    out = truncate_reason("\u00e9" * 300)
    assert out == "\u00e9" * 254 + "..."
    # 4-byte characters: floor(509 / 4) * 4 = 508.
    assert truncate_reason("\U0001f510" * 200) == "\U0001f510" * 127 + "..."


@given(st.text())
def test_truncate_reason_property(reason: str) -> None:
    out = truncate_reason(reason)
    assert len(out.encode()) <= MAX_REASON_BYTES
    if len(reason.encode()) <= MAX_REASON_BYTES:
        assert out == reason
    else:
        assert out.endswith("...")
        assert reason.startswith(out[:-3])


def test_source_response_reason_is_truncated_on_construction() -> None:
    resp = SourceResponse(accepted=False, reason="r" * 1000)
    assert resp.reason == "r" * 509 + "..."


# ---------------------------------------------------------------------------------------------- round trips


@given(source=st.text(max_size=200), version=versions)
def test_source_request_round_trip(source: str, version: int) -> None:
    req = SourceRequest(source=source, version=version)
    body = split_message(encode_source_request(req), "SourceRequest")
    assert decode_source_request(body, expected_version=version) == req


@given(accepted=st.booleans(), reason=st.none() | st.text(max_size=600), version=versions)
def test_source_response_round_trip(accepted: bool, reason: str | None, version: int) -> None:
    resp = SourceResponse(accepted=accepted, reason=reason, version=version)
    body = split_message(encode_source_response(resp), "SourceResponse")
    assert decode_source_response(body, expected_version=version) == resp


@given(st.binary(max_size=300))
def test_decode_source_request_arbitrary_bytes_raise_only_wire_error(data: bytes) -> None:
    try:
        decode_source_request(data, expected_version=3)
    except WireError:
        pass


@given(st.binary(max_size=300))
def test_decode_source_response_arbitrary_bytes_raise_only_wire_error(data: bytes) -> None:
    try:
        decode_source_response(data, expected_version=3)
    except WireError:
        pass


@given(st.dictionaries(st.text(max_size=10), st.none() | st.booleans() | st.integers() | st.text(max_size=10)))
def test_decode_json_objects_raise_only_wire_error(obj: dict[str, object]) -> None:
    body = json.dumps(obj).encode()
    try:
        decode_source_request(body, expected_version=1)
    except WireError:
        pass
    try:
        decode_source_response(body, expected_version=1)
    except WireError:
        pass


# ---------------------------------------------------------------------------------------------- decode errors


def test_unknown_fields_are_ignored_and_null_reason_is_none() -> None:
    assert decode_source_request(b'{"extra":[1,2],"version":3,"source":"s"}', expected_version=3) == (
        SourceRequest(source="s", version=3)
    )
    resp = decode_source_response(b'{"version":3,"accepted":false,"reason":null}', expected_version=3)
    assert resp == SourceResponse(accepted=False, reason=None, version=3)


def test_long_reason_from_peer_is_truncated() -> None:
    body = json.dumps({"version": 3, "accepted": False, "reason": "z" * 5000}).encode()
    assert decode_source_response(body, expected_version=3).reason == "z" * 509 + "..."


def test_version_mismatch_message() -> None:
    with pytest.raises(WireError, match=r"^SourceRequest version mismatch: expected 3, got 4$"):
        decode_source_request(b'{"version":4,"source":"tcp://127.0.0.1:22"}', expected_version=3)
    with pytest.raises(WireError, match=r"^SourceResponse version mismatch: expected 1, got 3$"):
        decode_source_response(b'{"version":3,"accepted":true}', expected_version=1)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        b"[3, \"tcp://x:1\"]",
        b'{"version":3}',
        b'{"source":"s"}',
        b'{"version":"3","source":"s"}',
        b'{"version":3.0,"source":"s"}',
        b'{"version":true,"source":"s"}',
        b'{"version":-1,"source":"s"}',
        b'{"version":65536,"source":"s"}',
        b'{"version":3,"source":5}',
        b'{"version":3,"source":null}',
        b'{"version":3,"source":"\\ud800"}',
        b'{"version":3,"source":"a","source":"b"}',
        b'{"version":NaN,"source":"s"}',
        b'\xef\xbb\xbf{"version":3,"source":"s"}',
        b'{"version":3,"source":"\xff"}',
        '{"version":3,"source":"s"}'.encode("utf-16"),
        b"[" * 5000 + b"]" * 5000,
        b'{"version":' + b"9" * 5000 + b',"source":"s"}',
    ],
)
def test_invalid_source_request_json(body: bytes) -> None:
    with pytest.raises(WireError, match=r"^Invalid SourceRequest JSON$"):
        decode_source_request(body, expected_version=3)


@pytest.mark.parametrize(
    "body",
    [b'{"version":3,"accepted":1}', b'{"version":3}', b'{"version":3,"accepted":true,"reason":7}'],
)
def test_invalid_source_response_json(body: bytes) -> None:
    with pytest.raises(WireError, match=r"^Invalid SourceResponse JSON$"):
        decode_source_response(body, expected_version=3)


def test_oversized_body_rejected() -> None:
    with pytest.raises(WireError, match=r"^SourceRequest length too large: 16385 bytes$"):
        decode_source_request(b" " * 16385, expected_version=3)


def test_encode_too_large_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError, match=r"^SourceRequest too large: \d+ bytes$"):
        encode_source_request(SourceRequest(source="x" * MAX_MESSAGE_SIZE))
    # Exactly at the limit is fine.
    overhead = len(b'{"version":1,"source":""}')
    encoded = encode_source_request(SourceRequest(source="x" * (MAX_MESSAGE_SIZE - overhead)))
    assert len(encoded) == 4 + MAX_MESSAGE_SIZE


def test_encode_rejects_out_of_range_version_and_surrogates() -> None:
    with pytest.raises(LocalProtocolError):
        encode_source_request(SourceRequest(source="s", version=70000))
    with pytest.raises(LocalProtocolError):
        encode_source_request(SourceRequest(source="\ud800"))


# ---------------------------------------------------------------------------------------------- split_message


def test_split_message_errors() -> None:
    with pytest.raises(WireError, match=r"^SourceRequest too short: 2 bytes$"):
        split_message(b"\x00\x00", "SourceRequest")
    with pytest.raises(WireError, match=r"^SourceRequest incomplete: expected 104 bytes, got 8$"):
        split_message(b"\x00\x00\x00\x64abcd", "SourceRequest")
    with pytest.raises(WireError, match=r"^SourceRequest length too large: 16385 bytes$"):
        split_message((16385).to_bytes(4, "big"), "SourceRequest")
    assert split_message(b"\x00\x00\x00\x02hi-trailing", "X") == b"hi"


# ---------------------------------------------------------------------------------------------- MessageReader


def test_message_reader_byte_by_byte_with_remainder() -> None:
    message = encode_source_request(SourceRequest(source="udp://127.0.0.1:53", version=3))
    reader = MessageReader("SourceRequest")
    assert [reader.feed(message[i : i + 1]) for i in range(len(message) - 1)] == [None] * (len(message) - 1)
    assert not reader.complete
    body = reader.feed(message[-1:] + b"\x00\x03raw")
    assert body is not None
    assert decode_source_request(body, expected_version=3).source == "udp://127.0.0.1:53"
    assert reader.complete
    assert reader.remainder == b"\x00\x03raw"
    reader.feed_eof()  # complete: EOF is fine
    with pytest.raises(LocalProtocolError):
        reader.feed(b"more")


@given(st.binary(max_size=100), st.binary(max_size=50), st.data())
def test_message_reader_any_chunking(body: bytes, tail: bytes, data: st.DataObject) -> None:
    stream = len(body).to_bytes(4, "big") + body + tail
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    reader = MessageReader()
    got = None
    rest = b""
    for chunk in chunks:
        if got is None:
            got = reader.feed(chunk)
        else:
            rest += chunk
    assert got == body
    assert reader.remainder + rest == tail


def test_message_reader_length_too_large() -> None:
    reader = MessageReader("SourceRequest")
    with pytest.raises(WireError, match=r"^Message length too large: 16385 bytes$"):
        reader.feed((16385).to_bytes(4, "big"))
    with pytest.raises(LocalProtocolError):
        reader.feed(b"x")


def test_message_reader_eof_errors() -> None:
    reader = MessageReader("SourceResponse")
    reader.feed(b"\x00\x00")
    with pytest.raises(WireError, match=r"^SourceResponse too short: 2 bytes$"):
        reader.feed_eof()
    reader = MessageReader("SourceResponse")
    assert reader.feed(b"\x00\x00\x00\x10{}") is None
    with pytest.raises(WireError, match=r"^SourceResponse incomplete: expected 20 bytes, got 6$"):
        reader.feed_eof()


def test_message_reader_empty_body() -> None:
    reader = MessageReader()
    assert reader.feed(b"\x00\x00\x00\x00xyz") == b""
    assert reader.remainder == b"xyz"


# ---------------------------------------------------------------------------------------------- UDP framing


def test_udp_frame_encoding() -> None:
    assert encode_udp_frame(b"abc") == b"\x00\x03abc"
    assert encode_udp_frame(b"") == b"\x00\x00"
    assert encode_udp_frame(b"x" * 65535)[:2] == b"\xff\xff"
    with pytest.raises(LocalProtocolError):
        encode_udp_frame(b"x" * 65536)


datagrams = st.lists(st.binary(max_size=300), max_size=12)


@given(datagrams, st.data())
def test_udp_any_split_yields_the_same_datagrams(frames: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_udp_frame(d) for d in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    decoder = UdpFrameDecoder()
    out: list[bytes] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out.extend(decoder.feed(stream[a:b]))
        assert decoder.buffered <= 2 + 300
    assert out == frames
    assert decoder.buffered == 0
    decoder.feed_eof()


def test_udp_large_frames_byte_by_byte() -> None:
    frames = [b"\xaa" * 65535, b"", b"z"]
    stream = b"".join(encode_udp_frame(d) for d in frames)
    decoder = UdpFrameDecoder()
    out = []
    for i in range(0, len(stream), 7):
        out.extend(decoder.feed(stream[i : i + 7]))
    assert out == frames


@given(st.binary(max_size=400), st.data())
def test_udp_decoder_never_raises_on_feed(stream: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    decoder = UdpFrameDecoder()
    total = 0
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        total += sum(2 + len(d) for d in decoder.feed(stream[a:b]))
    assert total + decoder.buffered == len(stream)
    try:
        decoder.feed_eof()
    except WireError:
        assert decoder.buffered == 0  # cleared when reporting


def test_udp_fin_mid_frame_is_an_error() -> None:
    decoder = UdpFrameDecoder()
    assert decoder.feed(b"\x00\x05ab") == []
    assert decoder.buffered == 4
    with pytest.raises(WireError, match="mid-frame"):
        decoder.feed_eof()
    with pytest.raises(LocalProtocolError):
        decoder.feed(b"x")


def test_udp_fin_inside_length_prefix_is_an_error() -> None:
    decoder = UdpFrameDecoder()
    assert decoder.feed(b"\x00\x01a\x00") == [b"a"]
    with pytest.raises(WireError):
        decoder.feed_eof()
