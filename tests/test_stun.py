"""STUN codec: RFC 5769 vectors, round trips, hostile input, ChannelData."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel_core.errors import LocalProtocolError, RemoteProtocolError
from tunnel_core.stun import (
    MAGIC_COOKIE,
    Attr,
    ErrorCode,
    MessageClass,
    Method,
    StunError,
    StunMessage,
    decode,
    decode_channel_data,
    encode,
    encode_channel_data,
    is_stun,
    long_term_key,
    short_term_key,
    transaction_id,
)


def unhex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# RFC 5769 test vectors, byte for byte as the RFC prints them. 2.1-2.3 pad with 0x20, which RFC 5389 allowed.
SHORT_TERM_PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"
VECTOR_TID = unhex("b7 e7 a7 01 bc 34 d6 86 fa 87 df ae")
SAMPLE_REQUEST = unhex("""
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff
    80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf""")
SAMPLE_IPV4_RESPONSE = unhex("""
    01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96""")
SAMPLE_IPV6_RESPONSE = unhex("""
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c""")
LONG_TERM_REQUEST = unhex("""
    00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
    00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
    00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41
    00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
    00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66""")
LONG_TERM_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
LONG_TERM_PASSWORD = "The\u00adM\u00aatr\u2168"  # SASLprep gives "TheMatrIX"


def zero_padding(vector: bytes, mi_offset: int) -> bytes:
    """The vector up to MESSAGE-INTEGRITY with 0x20 padding turned into the zeros RFC 8489 now requires."""
    out = bytearray(vector[:mi_offset])
    pos = 20
    while pos < mi_offset:
        _, length = struct.unpack_from("!HH", out, pos)
        end = pos + 4 + length
        padded = pos + 4 + ((length + 3) & ~3)
        out[end:padded] = bytes(padded - end)
        pos = padded
    return bytes(out)


# --- RFC 5769 ------------------------------------------------------------------------------------------


def test_rfc5769_sample_request() -> None:
    msg = decode(SAMPLE_REQUEST)
    assert msg.method == Method.BINDING
    assert msg.message_class == MessageClass.REQUEST
    assert msg.transaction_id == VECTOR_TID
    assert msg.attributes == (
        (Attr.SOFTWARE, "STUN test client"),
        (Attr.PRIORITY, 0x6E0001FF),
        (Attr.ICE_CONTROLLED, 0x932FF9B151263B36),
        (Attr.USERNAME, "evtj:h6vY"),
    )
    assert msg.has_integrity and msg.has_fingerprint
    assert msg.raw == SAMPLE_REQUEST
    assert msg.check_integrity(short_term_key(SHORT_TERM_PASSWORD))
    assert not msg.check_integrity(short_term_key("VOkJxbRl1RmTxUk/WvJxBT"))
    assert msg.unknown_required() == ()
    assert is_stun(SAMPLE_REQUEST)


@pytest.mark.parametrize(
    ("vector", "address"),
    [
        (SAMPLE_IPV4_RESPONSE, ("192.0.2.1", 32853)),
        (SAMPLE_IPV6_RESPONSE, ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
    ],
)
def test_rfc5769_responses(vector: bytes, address: tuple[str, int]) -> None:
    msg = decode(vector)
    assert msg.method == Method.BINDING
    assert msg.message_class == MessageClass.SUCCESS
    assert msg.transaction_id == VECTOR_TID
    assert msg.attributes == ((Attr.SOFTWARE, "test vector"), (Attr.XOR_MAPPED_ADDRESS, address))
    assert msg.get(Attr.XOR_MAPPED_ADDRESS) == address
    assert msg.has_fingerprint
    assert msg.check_integrity(short_term_key(SHORT_TERM_PASSWORD))
    assert not msg.check_integrity(b"wrong")


@pytest.mark.parametrize("vector", [SAMPLE_REQUEST, SAMPLE_IPV4_RESPONSE, SAMPLE_IPV6_RESPONSE])
def test_rfc5769_short_term_vectors_reencode(vector: bytes) -> None:
    """Re-encoding gives the vector's bytes except its 0x20 padding (RFC 8489 makes senders pad with zeros),
    and hence except the MAC and CRC that cover that padding; those we check are valid instead."""
    msg = decode(vector)
    key = short_term_key(SHORT_TERM_PASSWORD)
    again = encode(msg, integrity_key=key, fingerprint=True)
    mi_offset = len(vector) - 24 - 8
    assert len(again) == len(vector)
    assert again[:mi_offset] == zero_padding(vector, mi_offset)
    redecoded = decode(again)
    assert redecoded == msg
    assert redecoded.check_integrity(key) and redecoded.has_fingerprint


def test_rfc5769_long_term_request() -> None:
    msg = decode(LONG_TERM_REQUEST)
    assert msg.method == Method.BINDING and msg.message_class == MessageClass.REQUEST
    assert msg.attributes == (
        (Attr.USERNAME, LONG_TERM_USERNAME),
        (Attr.NONCE, "f//499k954d6OL34oL9FSTvy64sA"),
        (Attr.REALM, "example.org"),
    )
    assert msg.has_integrity and not msg.has_fingerprint
    key = long_term_key(LONG_TERM_USERNAME, "example.org", LONG_TERM_PASSWORD)
    assert key == hashlib.md5(f"{LONG_TERM_USERNAME}:example.org:TheMatrIX".encode()).digest()
    assert key == long_term_key(LONG_TERM_USERNAME, "example.org", "TheMatrIX")
    assert msg.check_integrity(key)
    assert not msg.check_integrity(long_term_key(LONG_TERM_USERNAME, "example.org", "TheMatrix"))
    # Zero padding here, so the re-encoding is byte-exact, MAC included.
    assert encode(msg, integrity_key=key) == LONG_TERM_REQUEST


# --- structure -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "message_class", "wire_type"),
    [
        (Method.BINDING, MessageClass.REQUEST, 0x0001),
        (Method.BINDING, MessageClass.INDICATION, 0x0011),
        (Method.BINDING, MessageClass.SUCCESS, 0x0101),
        (Method.BINDING, MessageClass.ERROR, 0x0111),
        (Method.ALLOCATE, MessageClass.ERROR, 0x0113),
        (Method.SEND, MessageClass.INDICATION, 0x0016),
        (Method.DATA, MessageClass.INDICATION, 0x0017),
        (Method.CHANNEL_BIND, MessageClass.SUCCESS, 0x0109),
        (0xFFF, MessageClass.ERROR, 0x3FFF),
    ],
)
def test_message_type_bits(method: int, message_class: MessageClass, wire_type: int) -> None:
    data = encode(StunMessage(method, message_class, bytes(12)))
    assert data[:2] == struct.pack("!H", wire_type)
    assert data[2:8] == b"\x00\x00" + struct.pack("!I", MAGIC_COOKIE)
    back = decode(data)
    assert (back.method, back.message_class) == (method, message_class)


def test_attributes_after_integrity_are_ignored_but_fingerprint_is_checked() -> None:
    key = b"k"
    signed = encode(StunMessage(Method.ALLOCATE, MessageClass.REQUEST, bytes(12), ((Attr.LIFETIME, 600),)),
                    integrity_key=key)
    extra = struct.pack("!HH", Attr.DATA, 4) + b"abcd"
    tampered = bytearray(signed + extra)
    struct.pack_into("!H", tampered, 2, len(tampered) - 20)
    msg = decode(bytes(tampered))
    assert msg.attributes == ((Attr.LIFETIME, 600),)
    assert msg.check_integrity(key)


def test_attribute_after_fingerprint_is_rejected() -> None:
    data = bytearray(encode(StunMessage(Method.BINDING, MessageClass.REQUEST, bytes(12)), fingerprint=True))
    data += struct.pack("!HH", Attr.SOFTWARE, 0)
    struct.pack_into("!H", data, 2, len(data) - 20)
    with pytest.raises(StunError):
        decode(bytes(data))


def test_wrong_fingerprint_is_rejected() -> None:
    data = bytearray(SAMPLE_REQUEST)
    data[-1] ^= 0x01
    with pytest.raises(StunError, match="FINGERPRINT"):
        decode(bytes(data))


def test_single_bit_flips_in_fingerprinted_message_are_detected() -> None:
    """Every single-bit flip either makes decode fail or removes the FINGERPRINT (its type bits were hit),
    so a receiver that requires FINGERPRINT, as ICE does, never accepts a corrupted message."""
    for vector in (SAMPLE_REQUEST, SAMPLE_IPV6_RESPONSE):
        for bit in range(len(vector) * 8):
            data = bytearray(vector)
            data[bit // 8] ^= 0x80 >> (bit % 8)
            try:
                msg = decode(bytes(data))
            except StunError:
                continue
            assert not msg.has_fingerprint, bit


def test_integrity_detects_tampering_and_trailing_fingerprint_does_not_matter() -> None:
    key = short_term_key("secretsecretsecretsecret")
    base = StunMessage(Method.BINDING, MessageClass.SUCCESS, b"abcdefghijkl",
                       ((Attr.XOR_MAPPED_ADDRESS, ("10.0.0.1", 4000)),))
    with_fp = decode(encode(base, integrity_key=key, fingerprint=True))
    without_fp = decode(encode(base, integrity_key=key))
    assert with_fp.check_integrity(key) and without_fp.check_integrity(key)
    data = bytearray(encode(base, integrity_key=key))
    data[27] ^= 0x01  # inside the address
    assert not decode(bytes(data)).check_integrity(key)
    assert not base.check_integrity(key)  # never decoded: nothing to check
    assert not decode(encode(base)).check_integrity(key)  # decoded, but unsigned


def test_unknown_attributes_are_carried_and_required_ones_reported() -> None:
    msg = StunMessage(Method.BINDING, MessageClass.REQUEST, bytes(12),
                      ((0x0003, b"\x00\x00\x00\x00"), (0x7FFF, b"x"), (0xC001, b"opt"), (0x7FFF, b"y")))
    back = decode(encode(msg))
    assert back == msg
    assert back.unknown_required() == (0x0003, 0x7FFF)
    assert back.get(0x7FFF) == b"x"
    assert back.get(Attr.USERNAME, "none") == "none"


def test_error_code_and_unknown_attributes_values() -> None:
    msg = StunMessage(Method.ALLOCATE, MessageClass.ERROR, bytes(12),
                      ((Attr.ERROR_CODE, ErrorCode(420, "Unknown Attribute")),
                       (Attr.UNKNOWN_ATTRIBUTES, (0x0003, 0x7FFF))))
    data = encode(msg)
    assert data[20:28] == struct.pack("!HHxxBB", Attr.ERROR_CODE, 4 + 17, 4, 20)
    assert decode(data).get(Attr.ERROR_CODE) == ErrorCode(420, "Unknown Attribute")
    assert decode(data) == msg


@pytest.mark.parametrize(
    ("data", "looks_like_stun"),
    [
        (b"", False),
        (bytes(19), False),
        (b"\x80" + SAMPLE_REQUEST[1:], False),  # top bits set
        (SAMPLE_REQUEST[:4] + b"\x21\x12\xa4\x43" + SAMPLE_REQUEST[8:], False),  # cookie
        (SAMPLE_REQUEST[:-4], False),  # shorter than the length field says
        (SAMPLE_REQUEST + bytes(4), False),  # longer
        (b"\x00\x01\x00\x02\x21\x12\xa4\x42" + bytes(14), False),  # length not a multiple of 4
        (b"\x00\x01\x00\x04\x21\x12\xa4\x42" + bytes(12) + b"\x00\x06\x00\x09", True),  # overrun
        (b"\x00\x01\x00\x08\x21\x12\xa4\x42" + bytes(12) + b"\x80\x28\x00\x04" + bytes(4), True),  # bad CRC
    ],
)
def test_malformed_framing_raises_stun_error(data: bytes, looks_like_stun: bool) -> None:
    assert is_stun(data) == looks_like_stun
    with pytest.raises(StunError):
        decode(data)


@pytest.mark.parametrize(
    ("atype", "value"),
    [
        (Attr.XOR_MAPPED_ADDRESS, b"\x00\x03\x00\x01\x01\x02\x03\x04"),  # family 3
        (Attr.XOR_MAPPED_ADDRESS, b"\x00\x01\x00\x01\x01\x02\x03"),  # short v4
        (Attr.MAPPED_ADDRESS, b"\x00\x02\x00\x01" + bytes(4)),  # v6 family, v4 length
        (Attr.PRIORITY, b"\x00\x00\x01"),
        (Attr.ICE_CONTROLLING, bytes(4)),
        (Attr.USE_CANDIDATE, b"\x00"),
        (Attr.USERNAME, b"\xff\xfe"),
        (Attr.ERROR_CODE, b"\x00\x00\x04"),
        (Attr.ERROR_CODE, b"\x00\x00\x04\x64"),  # number 100
        (Attr.UNKNOWN_ATTRIBUTES, b"\x00\x01\x00"),
        (Attr.CHANNEL_NUMBER, b"\x40\x00"),
        (Attr.REQUESTED_TRANSPORT, b"\x11"),
    ],
)
def test_malformed_known_attribute_raises_stun_error(atype: int, value: bytes) -> None:
    body = struct.pack("!HH", atype, len(value)) + value + bytes(-len(value) % 4)
    data = struct.pack("!HHI", 0x0001, len(body), MAGIC_COOKIE) + bytes(12) + body
    assert is_stun(data)
    with pytest.raises(StunError):
        decode(data)


def test_flag_attribute_decodes_to_none() -> None:
    data = b"\x00\x01\x00\x04\x21\x12\xa4\x42" + bytes(12) + b"\x00\x25\x00\x00"
    assert decode(data).attributes == ((Attr.USE_CANDIDATE, None),)


def test_encode_refuses_bad_values() -> None:
    tid = bytes(12)
    bad_attributes = [
        (Attr.MESSAGE_INTEGRITY, bytes(20)),
        (Attr.FINGERPRINT, bytes(4)),
        (Attr.XOR_MAPPED_ADDRESS, ("not-an-ip", 1)),
        (Attr.XOR_MAPPED_ADDRESS, ("1.2.3.4", 70000)),
        (Attr.PRIORITY, -1),
        (Attr.PRIORITY, 1 << 32),
        (Attr.USE_CANDIDATE, b""),
        (Attr.USERNAME, b"bytes"),
        (Attr.ERROR_CODE, 401),
        (Attr.ERROR_CODE, ErrorCode(800, "")),
        (Attr.UNKNOWN_ATTRIBUTES, 3),
        (0x7777, "text"),
    ]
    for attribute in bad_attributes:
        with pytest.raises(LocalProtocolError):
            encode(StunMessage(Method.BINDING, MessageClass.REQUEST, tid, (attribute,)))
    with pytest.raises(LocalProtocolError):
        encode(StunMessage(Method.BINDING, MessageClass.REQUEST, bytes(11)))
    with pytest.raises(LocalProtocolError):
        encode(StunMessage(0x1000, MessageClass.REQUEST, tid))


def test_keys_and_transaction_ids() -> None:
    assert short_term_key("pässword") == "pässword".encode()
    assert long_term_key("u", "test.local", "p") == hashlib.md5(b"u:test.local:p").digest()
    assert transaction_id(lambda n: bytes(range(n))) == bytes(range(12))
    with pytest.raises(LocalProtocolError):
        transaction_id(lambda n: bytes(n - 1))


def test_errors_belong_to_the_remote_family() -> None:
    assert issubclass(StunError, RemoteProtocolError)


# --- properties ----------------------------------------------------------------------------------------

ports = st.integers(0, 0xFFFF)
addresses = st.one_of(
    st.tuples(st.ip_addresses(v=4).map(str), ports),
    st.tuples(st.ip_addresses(v=6).map(lambda ip: ip.compressed), ports),
)
texts = st.text(max_size=40)
_KNOWN = {int(a) for a in Attr}
attribute = st.one_of(
    st.tuples(st.sampled_from([Attr.MAPPED_ADDRESS, Attr.XOR_MAPPED_ADDRESS, Attr.XOR_PEER_ADDRESS,
                               Attr.XOR_RELAYED_ADDRESS]), addresses),
    st.tuples(st.sampled_from([Attr.USERNAME, Attr.REALM, Attr.NONCE, Attr.SOFTWARE]), texts),
    st.tuples(st.just(Attr.ERROR_CODE), st.builds(ErrorCode, st.integers(0, 799), texts)),
    st.tuples(st.sampled_from([Attr.PRIORITY, Attr.LIFETIME]), st.integers(0, 2**32 - 1)),
    st.tuples(st.sampled_from([Attr.ICE_CONTROLLED, Attr.ICE_CONTROLLING]), st.integers(0, 2**64 - 1)),
    st.tuples(st.just(Attr.CHANNEL_NUMBER), st.integers(0, 0xFFFF)),
    st.tuples(st.just(Attr.REQUESTED_TRANSPORT), st.integers(0, 0xFF)),
    st.tuples(st.sampled_from([Attr.USE_CANDIDATE, Attr.DONT_FRAGMENT]), st.none()),
    st.tuples(st.just(Attr.DATA), st.binary(max_size=64)),
    st.tuples(st.just(Attr.UNKNOWN_ATTRIBUTES), st.lists(st.integers(0, 0xFFFF), max_size=5).map(tuple)),
    st.tuples(st.integers(0, 0xFFFF).filter(lambda t: t not in _KNOWN), st.binary(max_size=32)),
)
messages = st.builds(
    StunMessage,
    method=st.integers(0, 0xFFF),
    message_class=st.sampled_from(MessageClass),
    transaction_id=st.binary(min_size=12, max_size=12),
    attributes=st.lists(attribute, max_size=8).map(tuple),
)


@settings(max_examples=300)
@given(msg=messages, key=st.none() | st.binary(min_size=1, max_size=32), fingerprint=st.booleans())
def test_encode_decode_round_trip(msg: StunMessage, key: bytes | None, fingerprint: bool) -> None:
    data = encode(msg, integrity_key=key, fingerprint=fingerprint)
    assert is_stun(data)
    back = decode(data)
    assert back == msg
    assert back.raw == data
    assert back.has_integrity == (key is not None)
    assert back.has_fingerprint == fingerprint
    if key is not None:
        assert back.check_integrity(key)
        assert not back.check_integrity(key + b"x")
    assert encode(back, integrity_key=key, fingerprint=fingerprint) == data


def _decode_or_stun_error(data: bytes) -> None:
    try:
        msg = decode(data)
    except StunError:
        return
    msg.check_integrity(b"key")
    msg.unknown_required()
    # Anything we accept, we can also write back out.
    assert decode(encode(msg, fingerprint=msg.has_fingerprint)) == msg


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_stun_error(data: bytes) -> None:
    _decode_or_stun_error(data)
    is_stun(data)


@settings(max_examples=500)
@given(words=st.lists(st.binary(min_size=4, max_size=4), max_size=30), message_type=st.integers(0, 0x3FFF))
def test_good_header_arbitrary_body_raises_only_stun_error(words: list[bytes], message_type: int) -> None:
    body = b"".join(words)
    data = struct.pack("!HHI", message_type, len(body), MAGIC_COOKIE) + bytes(12) + body
    assert is_stun(data)
    _decode_or_stun_error(data)


@settings(max_examples=300)
@given(msg=messages, flips=st.lists(st.tuples(st.integers(0), st.integers(0, 7)), min_size=1, max_size=4))
def test_mutated_messages_raise_only_stun_error(msg: StunMessage, flips: list[tuple[int, int]]) -> None:
    data = bytearray(encode(msg, integrity_key=b"k", fingerprint=False))
    for position, bit in flips:
        data[position % len(data)] ^= 1 << bit
    _decode_or_stun_error(bytes(data))


# --- ChannelData ---------------------------------------------------------------------------------------


@given(channel=st.integers(0x4000, 0x7FFF), payload=st.binary(max_size=300))
def test_channel_data_round_trip(channel: int, payload: bytes) -> None:
    frame = encode_channel_data(channel, payload)
    assert len(frame) % 4 == 0
    assert not is_stun(frame)
    assert decode_channel_data(frame) == (channel, payload)
    assert decode_channel_data(frame[: 4 + len(payload)]) == (channel, payload)  # UDP may drop the padding


@given(st.binary(max_size=80))
def test_channel_data_garbage_raises_only_stun_error(data: bytes) -> None:
    try:
        channel, payload = decode_channel_data(data)
    except StunError:
        return
    assert 0x4000 <= channel <= 0x7FFF and len(payload) <= len(data) - 4


def test_channel_data_errors() -> None:
    with pytest.raises(StunError):
        decode_channel_data(b"\x40\x00\x00")
    with pytest.raises(StunError):
        decode_channel_data(b"\x80\x00\x00\x00")
    with pytest.raises(StunError):
        decode_channel_data(b"\x40\x00\x00\x05abcd")  # truncated
    with pytest.raises(StunError):
        decode_channel_data(b"\x40\x00\x00\x01a" + bytes(7))  # more than padding
    with pytest.raises(LocalProtocolError):
        encode_channel_data(0x3FFF, b"x")
    with pytest.raises(LocalProtocolError):
        encode_channel_data(0x4000, bytes(0x10000))
