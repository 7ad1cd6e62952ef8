"""The relay frame codec: iroh's own byte snapshots, round trips, and bad input raising only FrameError."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from tunnel_core.iroh_relay import frames as fr
from tunnel_core.iroh_relay.handshake import challenge_message, new_challenge, sign_challenge, verify_client_auth

# iroh-relay protos/relay.rs snapshot tests use SecretKey::from_bytes(&[42; 32]).
KEY42 = Ed25519PrivateKey.from_private_bytes(bytes([42] * 32)).public_key().public_bytes_raw()
HELLO = b"Hello World!"


def test_key42_matches_iroh_snapshot() -> None:
    assert KEY42.hex() == "197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d61"


@pytest.mark.parametrize(("frame", "expected"), [
    (fr.Health("Hello? Yes this is dog."), "0b" + b"Hello? Yes this is dog.".hex()),
    (fr.EndpointGone(KEY42), "08" + KEY42.hex()),
    (fr.Ping(bytes([42] * 8)), "09" + "2a" * 8),
    (fr.Pong(bytes([42] * 8)), "0a" + "2a" * 8),
    (fr.RelayToClientDatagramBatch(KEY42, 3, 6, HELLO), "07" + KEY42.hex() + "03" + "0006" + HELLO.hex()),
    (fr.RelayToClientDatagram(KEY42, 3, HELLO), "06" + KEY42.hex() + "03" + HELLO.hex()),
    (fr.Restarting(10, 20), "0c0000000a00000014"),
    (fr.Status(1), "0d01"),
    (fr.Status(2), "0d02"),
    (fr.ClientToRelayDatagramBatch(KEY42, 3, 6, HELLO), "05" + KEY42.hex() + "03" + "0006" + HELLO.hex()),
    (fr.ClientToRelayDatagram(KEY42, 3, HELLO), "04" + KEY42.hex() + "03" + HELLO.hex()),
    (fr.ServerConfirmsAuth(), "02"),
    (fr.ServerDeniesAuth("no"), "03026e6f"),
])
def test_encodings_match_iroh(frame: fr.Frame, expected: str) -> None:
    assert fr.encode_frame(frame).hex() == expected
    assert fr.decode_frame(bytes.fromhex(expected)) == frame


def test_client_auth_layout_and_signature() -> None:
    secret = bytes(range(32))
    challenge = new_challenge(lambda n: bytes([7] * n))
    auth = sign_challenge(secret, challenge)
    wire = fr.encode_frame(auth)
    assert wire[0] == 1 and wire[33] == 0x40 and len(wire) == 1 + 32 + 1 + 64
    assert fr.decode_frame(wire) == auth
    assert verify_client_auth(challenge, auth)
    assert not verify_client_auth(fr.ServerChallenge(bytes(16)), auth)
    assert not verify_client_auth(challenge, fr.ClientAuth(bytes(32), auth.signature))
    assert len(challenge_message(challenge.challenge)) == 32
    assert challenge_message(challenge.challenge) != challenge.challenge + bytes(16)


def test_forward_swaps_destination_for_source_and_keeps_the_rest() -> None:
    src = bytes([1] * 32)
    single = fr.encode_frame(fr.ClientToRelayDatagram(KEY42, 2, HELLO))
    dst, out = fr.forward_datagram(single, src)
    assert dst == KEY42
    assert fr.decode_frame(out) == fr.RelayToClientDatagram(src, 2, HELLO)
    batch = fr.encode_frame(fr.ClientToRelayDatagramBatch(KEY42, 3, 5, HELLO))
    dst, out = fr.forward_datagram(batch, src)
    assert fr.decode_frame(out) == fr.RelayToClientDatagramBatch(src, 3, 5, HELLO)


@pytest.mark.parametrize("data", [
    b"", b"\x0e", b"\x3f", b"\x40", b"\x04" + bytes(32), b"\x05" + bytes(34), b"\x09" + bytes(7),
    b"\x0a" + bytes(9), b"\x08" + bytes(31), b"\x00" + bytes(15), b"\x01" + bytes(32) + b"\x3f" + bytes(63),
    b"\x0d", b"\x0d\x00\x00", b"\x0c" + bytes(7), b"\x0b\xff", b"\x02\x00", b"\x03\x05ab",
    b"\x04" + bytes(32 + 1 + fr.MAX_PACKET_SIZE),
])
def test_malformed_frames_raise_frame_error(data: bytes) -> None:
    with pytest.raises(fr.FrameError):
        fr.decode_frame(data)


def test_oversize_datagram_refused_by_fast_path() -> None:
    with pytest.raises(fr.FrameError, match="too large"):
        fr.forward_datagram(b"\x04" + bytes(fr.MAX_PACKET_SIZE + 1), bytes(32))
    with pytest.raises(fr.FrameError):
        fr.forward_datagram(b"\x09" + bytes(8), bytes(32))


def test_multibyte_varint_type_decodes() -> None:
    assert fr.decode_frame(b"\x40\x0d\x01") == fr.Status(1)


ids = st.binary(min_size=32, max_size=32)
byte = st.integers(0, 255)
payload = st.binary(max_size=300)
eight = st.binary(min_size=8, max_size=8)
frames_strategy = st.one_of(
    st.builds(fr.ServerChallenge, st.binary(min_size=16, max_size=16)),
    st.builds(fr.ClientAuth, ids, st.binary(min_size=64, max_size=64)),
    st.just(fr.ServerConfirmsAuth()),
    st.builds(fr.ServerDeniesAuth, st.text(max_size=200)),
    st.builds(fr.ClientToRelayDatagram, ids, byte, payload),
    st.builds(fr.ClientToRelayDatagramBatch, ids, byte, st.integers(0, 0xFFFF), payload),
    st.builds(fr.RelayToClientDatagram, ids, byte, payload),
    st.builds(fr.RelayToClientDatagramBatch, ids, byte, st.integers(0, 0xFFFF), payload),
    st.builds(fr.EndpointGone, ids),
    st.builds(fr.Ping, eight),
    st.builds(fr.Pong, eight),
    st.builds(fr.Health, st.text(max_size=200)),
    st.builds(fr.Restarting, st.integers(0, 0xFFFF_FFFF), st.integers(0, 0xFFFF_FFFF)),
    st.builds(fr.Status, byte),
)


@given(frames_strategy)
def test_round_trip(frame: fr.Frame) -> None:
    assert fr.decode_frame(fr.encode_frame(frame)) == frame


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_frame_error(data: bytes) -> None:
    try:
        frame = fr.decode_frame(data)
    except fr.FrameError:
        return
    assert fr.decode_frame(fr.encode_frame(frame)) == frame


@given(st.binary(max_size=120), ids)
def test_forward_agrees_with_decoder(data: bytes, src: bytes) -> None:
    try:
        dst, out = fr.forward_datagram(data, src)
    except fr.FrameError:
        if data[:1] in (b"\x04", b"\x05"):
            with pytest.raises(fr.FrameError):
                fr.decode_frame(data)
        return
    original = fr.decode_frame(data)
    forwarded = fr.decode_frame(out)
    assert dst == original.dst  # type: ignore[union-attr]
    assert forwarded.src == src  # type: ignore[union-attr]
    assert forwarded.contents == original.contents and forwarded.ecn == original.ecn  # type: ignore[union-attr]
