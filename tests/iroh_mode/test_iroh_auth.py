"""E4 auth stream (reference 3.2 step 2): golden transcripts with upstream's fixed seed, the machines' error
paths, the message codec and the ed25519-pub/-sec key formats."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel_core.errors import LocalProtocolError
from tunnel_core.iroh_session.auth import (
    AUTH_DOMAIN,
    AUTH_TIMEOUT,
    CLOSE_AUTH_FAILED,
    CLOSE_AUTH_TIMEOUT,
    AuthAccepted,
    AuthClient,
    AuthClientState,
    AuthDenied,
    AuthOk,
    AuthProof,
    AuthRefused,
    AuthResponse,
    AuthServer,
    AuthServerState,
    decode_auth_challenge,
    decode_auth_request,
    decode_auth_response,
    encode_auth_challenge,
    encode_auth_request,
    encode_auth_response,
    public_key_from_seed,
    sign_challenge,
    signed_message,
    verify_proof,
)
from tunnel_core.iroh_session.authkeys import (
    format_private_key,
    format_public_key,
    parse_authorized_keys,
    parse_private_key,
    parse_public_key,
)
from tunnel_core.iroh_session.server import SendBytes
from tunnel_core.keys import KeyFormatError
from tunnel_core.wire import WireError

SEED = bytes([0x2A] * 32)  # upstream's test seed
#: Ed25519 public key of SEED (RFC 8032 derivation; the value upstream's tests use for [42; 32]).
PUBLIC = bytes.fromhex("197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d61")
CHALLENGE = bytes(range(200, 232))
#: Ed25519 signatures are deterministic: this is SEED's signature over AUTH_DOMAIN + CHALLENGE.
SIGNATURE = bytes.fromhex(
    "d8bd446c04f7de7d9905d5ef84592b41ca1340c0f7789570b53ff7fc08ebf6f9"
    "6cfd7e552dffad0342048f51a2d455a84323f3302213d935f00ff3e8f8a45308"
)


def framed(json_text: str) -> bytes:
    body = json_text.encode()
    return len(body).to_bytes(4, "big") + body


def ints(raw: bytes) -> str:
    return "[" + ",".join(str(b) for b in raw) + "]"


INIT = framed('{"version":4}')
CHALLENGE_MSG = framed('{"version":4,"challenge":' + ints(CHALLENGE) + "}")
REQUEST_MSG = framed('{"version":4,"public_key":' + ints(PUBLIC) + ',"signature":' + ints(SIGNATURE) + "}")
ACCEPT_MSG = framed('{"version":4,"accepted":true}')
REJECT_MSG = framed('{"version":4,"accepted":false,"reason":"Invalid authentication proof"}')


def drain(machine: AuthServer | AuthClient) -> list[object]:
    events = []
    while (event := machine.next_event()) is not None:
        events.append(event)
    return events


def server(keys: tuple[bytes, ...] = (PUBLIC,)) -> AuthServer:
    return AuthServer(keys, rng=lambda n: CHALLENGE[:n], now=100.0)


# ---------------------------------------------------------------------------------------------- golden


def test_signed_message_is_71_bytes_with_nul_domain() -> None:
    assert len(AUTH_DOMAIN) == 39 and AUTH_DOMAIN.endswith(b"\0")
    assert signed_message(CHALLENGE) == b"tunnel-rs public-key authentication v1\x00" + CHALLENGE
    assert len(signed_message(CHALLENGE)) == 71


def test_fixed_seed_gives_the_known_public_key_and_signature() -> None:
    assert public_key_from_seed(SEED) == PUBLIC
    assert sign_challenge(SEED, CHALLENGE) == AuthProof(PUBLIC, SIGNATURE)
    assert verify_proof(AuthProof(PUBLIC, SIGNATURE), CHALLENGE)


def test_golden_transcript_accepted() -> None:
    srv, cli = server(), AuthClient(SEED, now=100.0)
    assert cli.init_bytes() == INIT == b'\x00\x00\x00\x0d{"version":4}'
    srv.feed(INIT)
    assert drain(srv) == [SendBytes(CHALLENGE_MSG)]
    assert CHALLENGE_MSG[:4] == (0x9B).to_bytes(4, "big")
    cli.feed(CHALLENGE_MSG)
    assert drain(cli) == [SendBytes(REQUEST_MSG, finish=True)]
    assert REQUEST_MSG[:4] == (0x17C).to_bytes(4, "big")
    srv.feed(REQUEST_MSG)
    assert drain(srv) == [SendBytes(ACCEPT_MSG, finish=True), AuthAccepted(PUBLIC)]
    assert srv.state is AuthServerState.ACCEPTED
    cli.feed(ACCEPT_MSG)
    assert drain(cli) == [AuthOk()]
    assert cli.state is AuthClientState.ACCEPTED


def test_golden_transcript_unknown_key_rejected() -> None:
    srv, cli = server(keys=(bytes(32),)), AuthClient(SEED, now=0.0)
    srv.feed(INIT)
    drain(srv)
    srv.feed(REQUEST_MSG)
    events = drain(srv)
    assert events[0] == SendBytes(REJECT_MSG, finish=True)
    assert isinstance(events[1], AuthDenied) and events[1].close == CLOSE_AUTH_FAILED
    assert CLOSE_AUTH_FAILED.code == 1 and CLOSE_AUTH_FAILED.reason == b"auth_failed"
    cli.feed(CHALLENGE_MSG)
    drain(cli)
    cli.feed(REJECT_MSG)
    assert drain(cli) == [AuthRefused("Authentication rejected: Invalid authentication proof")]


def test_byte_by_byte_and_coalesced_input() -> None:
    srv = server()
    for i in range(len(INIT)):
        srv.feed(INIT[i : i + 1])
    assert drain(srv) == [SendBytes(CHALLENGE_MSG)]
    srv2 = server()
    srv2.feed(INIT + REQUEST_MSG)  # a pipelining client: both messages in one read
    assert [type(e) for e in drain(srv2)] == [SendBytes, SendBytes, AuthAccepted]


# ---------------------------------------------------------------------------------------------- error paths


def test_bad_signature_is_rejected() -> None:
    srv = server()
    srv.feed(INIT)
    drain(srv)
    bad = bytearray(SIGNATURE)
    bad[0] ^= 1
    srv.feed(encode_auth_request(AuthProof(PUBLIC, bytes(bad))))
    events = drain(srv)
    assert events[0] == SendBytes(REJECT_MSG, finish=True)
    assert isinstance(events[1], AuthDenied) and "bad signature" in events[1].error


def test_proof_for_another_challenge_is_rejected() -> None:
    srv = server()
    srv.feed(INIT)
    drain(srv)
    srv.feed(encode_auth_request(sign_challenge(SEED, bytes(32))))
    assert srv.state is AuthServerState.REJECTED


@pytest.mark.parametrize("message", [
    framed('{"version":3}'),
    framed('{"version":4,"challenge":[1]}'),
    framed("not json"),
    framed("[4]"),
])
def test_server_fails_on_bad_init_or_request(message: bytes) -> None:
    srv = server()
    if b"challenge" in message:
        srv.feed(INIT)
        drain(srv)
    srv.feed(message)
    events = drain(srv)
    assert len(events) == 1 and isinstance(events[0], AuthDenied) and events[0].close == CLOSE_AUTH_FAILED
    srv.feed(INIT)  # ignored once decided
    assert drain(srv) == []


def test_server_oversized_length_and_early_eof() -> None:
    srv = server()
    srv.feed((1 << 20).to_bytes(4, "big"))
    assert isinstance(drain(srv)[0], AuthDenied)
    srv2 = server()
    srv2.feed(INIT[:3])
    srv2.feed_eof()
    [event] = drain(srv2)
    assert isinstance(event, AuthDenied) and "await-init" in event.error


def test_server_timeout_closes_with_code_2() -> None:
    srv = server()
    assert srv.deadline == 100.0 + AUTH_TIMEOUT == 110.0
    srv.on_timer(109.9)
    assert drain(srv) == []
    srv.on_timer(110.0)
    [event] = drain(srv)
    assert isinstance(event, AuthDenied) and event.close == CLOSE_AUTH_TIMEOUT
    assert (CLOSE_AUTH_TIMEOUT.code, CLOSE_AUTH_TIMEOUT.reason) == (2, b"auth_timeout")


def test_client_timeouts_name_the_awaited_message() -> None:
    cli = AuthClient(SEED, now=0.0)
    cli.on_timer(10.0)
    assert drain(cli) == [AuthRefused("Auth challenge timed out")]
    cli2 = AuthClient(SEED, now=0.0)
    cli2.feed(CHALLENGE_MSG)
    drain(cli2)
    cli2.on_timer(5.0)
    assert drain(cli2) == []
    cli2.on_timer(10.0)
    assert drain(cli2) == [AuthRefused("Auth response timed out")]


def test_client_protocol_errors() -> None:
    cli = AuthClient(SEED, now=0.0)
    with pytest.raises(WireError, match="version mismatch: expected 4, got 1"):
        cli.feed(framed('{"version":1,"challenge":' + ints(CHALLENGE) + "}"))
    assert cli.state is AuthClientState.FAILED
    with pytest.raises(LocalProtocolError):
        cli.feed(b"x")
    cli2 = AuthClient(SEED, now=0.0)
    with pytest.raises(WireError, match="before the server's challenge"):
        cli2.feed_eof()
    cli3 = AuthClient(SEED, now=0.0)
    cli3.feed(CHALLENGE_MSG)
    drain(cli3)
    with pytest.raises(WireError, match="Invalid AuthResponse JSON"):
        cli3.feed(framed('{"version":4,"accepted":"yes"}'))
    with pytest.raises(LocalProtocolError):
        AuthClient(b"short", now=0.0)


def test_rejection_without_reason_still_tells_the_user() -> None:
    cli = AuthClient(SEED, now=0.0)
    cli.feed(CHALLENGE_MSG + framed('{"version":4,"accepted":false}'))
    events = drain(cli)
    assert events[-1] == AuthRefused("Authentication rejected: no reason given")


# ---------------------------------------------------------------------------------------------- codec


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=64, max_size=64))
def test_request_roundtrip(public: bytes, signature: bytes) -> None:
    encoded = encode_auth_request(AuthProof(public, signature))
    assert decode_auth_request(encoded[4:]) == AuthProof(public, signature)


@given(st.binary(min_size=32, max_size=32))
def test_challenge_roundtrip(challenge: bytes) -> None:
    assert decode_auth_challenge(encode_auth_challenge(challenge)[4:]) == challenge


@given(st.booleans(), st.one_of(st.none(), st.text(min_size=1, max_size=40)))
def test_response_roundtrip(accepted: bool, reason: str | None) -> None:
    decoded = decode_auth_response(encode_auth_response(AuthResponse(accepted, reason))[4:])
    assert decoded == AuthResponse(accepted, reason)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_wire_error(body: bytes) -> None:
    for decode in (decode_auth_challenge, decode_auth_request, decode_auth_response):
        try:
            decode(body)
        except WireError:
            pass


def test_byte_arrays_reject_out_of_range_and_bools() -> None:
    for bad in ("[256" + ",0" * 31 + "]", "[true" + ",0" * 31 + "]", "[-1" + ",0" * 31 + "]", '"AAAA"'):
        with pytest.raises(WireError):
            decode_auth_challenge(('{"version":4,"challenge":' + bad + "}").encode())


# ---------------------------------------------------------------------------------------------- key files


def test_public_key_format() -> None:
    line = format_public_key(PUBLIC, "e2e client")
    assert line == "ed25519-pub:" + base64.urlsafe_b64encode(PUBLIC).decode().rstrip("=") + " e2e client"
    assert parse_public_key(line) == PUBLIC


def test_authorized_keys_file_with_comments() -> None:
    other = public_key_from_seed(bytes(32))
    text = f"# team\n\n{format_public_key(PUBLIC, 'alice laptop')}\n  {format_public_key(other)}  \n"
    assert parse_authorized_keys(text, "keys.txt") == (PUBLIC, other)


@pytest.mark.parametrize(("text", "needle"), [
    ("# only comments\n", "No Ed25519 public keys found in keys.txt"),
    ("ssh-ed25519 AAAA\n", "keys.txt:1"),
    ("# c\ned25519-pub:short\n", "keys.txt:2"),
    ("ed25519-pub:" + "A" * 42 + "B\n", "keys.txt:1"),  # non-zero spare bits: not canonical
])
def test_authorized_keys_errors(text: str, needle: str) -> None:
    with pytest.raises(KeyFormatError, match=needle):
        parse_authorized_keys(text, "keys.txt")


def test_private_key_file_roundtrip_and_errors() -> None:
    text = format_private_key(SEED, "me")
    assert "\n# Public key: " + format_public_key(PUBLIC, "me") + "\n" in text
    assert parse_private_key(text, "k") == SEED
    with pytest.raises(KeyFormatError, match="No authentication private key found in k"):
        parse_private_key("# nothing\n", "k")
    with pytest.raises(KeyFormatError, match="must start with 'ed25519-sec:"):
        parse_private_key(format_public_key(PUBLIC), "k")
    with pytest.raises(KeyFormatError, match="43 characters"):
        parse_private_key("ed25519-sec:abc\n", "k")
