"""The E4 auth stream (reference 3.2 step 2, v4 Ed25519 challenge-response) as two sans-IO machines.

Why a challenge: E4 clients use a fresh iroh identity on every run, so the TLS-authenticated EndpointId proves
nothing; the client proves possession of an authorised Ed25519 key by signing a server-chosen nonce under a
fixed domain string (so the signature cannot be replayed as anything else). The server's randomness comes in as
``rng`` and its clock as ``now``, keeping the machines deterministic for golden transcripts.

Transcript (each message: u32 big-endian length + compact serde_json):
client ``{"version":4}`` -> server ``{"version":4,"challenge":[32 ints]}`` -> client
``{"version":4,"public_key":[32 ints],"signature":[64 ints]}`` + FIN -> server ``{"version":4,"accepted":true}``
(or ``accepted:false`` with ``reason``) + FIN. Failure closes the connection with 1 ``auth_failed``; no complete
exchange within 10 s closes it with 2 ``auth_timeout``.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tunnel_core.errors import LocalProtocolError
from tunnel_core.iroh_session.constants import CloseCode
from tunnel_core.iroh_session.server import SendBytes
from tunnel_core.wire import (
    MAX_MESSAGE_SIZE,
    MessageReader,
    WireError,
    dumps_compact,
    field_bool,
    field_opt_str,
    field_uint,
    loads_json_object,
    truncate_reason,
)

#: Message version of the Ed25519 generation (also the SourceRequest version on later streams).
AUTH_VERSION = 4
#: Signed before the challenge so a signature made here means nothing in any other protocol (39 bytes, NUL included).
AUTH_DOMAIN = b"tunnel-rs public-key authentication v1\0"
CHALLENGE_BYTES = 32
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
#: Upstream's AUTH_TIMEOUT: the whole exchange, counted from the moment the connection was accepted.
AUTH_TIMEOUT = 10.0
INVALID_PROOF_REASON = "Invalid authentication proof"

CLOSE_AUTH_FAILED = CloseCode(1, b"auth_failed")
CLOSE_AUTH_TIMEOUT = CloseCode(2, b"auth_timeout")

_U16_MAX = 0xFFFF


# ---------------------------------------------------------------------------------------------- codec


def _frame(body: bytes, type_name: str) -> bytes:
    if len(body) > MAX_MESSAGE_SIZE:
        raise LocalProtocolError(f"{type_name} too large: {len(body)} bytes")
    return len(body).to_bytes(4, "big") + body


def _byte_array(obj: dict[str, Any], name: str, size: int, fail: Callable[[], Exception]) -> bytes:
    """serde ``Vec<u8>``/``[u8; N]``: a JSON array of integers 0..255 (never base64), here of exactly ``size``."""
    value = obj.get(name)
    if not isinstance(value, list) or len(value) != size:
        raise fail()
    if not all(type(item) is int and 0 <= item <= 0xFF for item in value):
        raise fail()
    return bytes(value)


def _object(body: bytes, type_name: str) -> dict[str, Any]:
    def fail() -> WireError:
        return WireError(f"Invalid {type_name} JSON")

    obj = loads_json_object(body, fail)
    version = field_uint(obj, "version", _U16_MAX, fail)
    if version != AUTH_VERSION:
        raise WireError(f"{type_name} version mismatch: expected {AUTH_VERSION}, got {version}")
    return obj


def encode_auth_init() -> bytes:
    return _frame(dumps_compact({"version": AUTH_VERSION}), "AuthInit")


def decode_auth_init(body: bytes) -> None:
    _object(body, "AuthInit")


def encode_auth_challenge(challenge: bytes) -> bytes:
    if len(challenge) != CHALLENGE_BYTES:
        raise LocalProtocolError(f"a challenge is {CHALLENGE_BYTES} bytes, got {len(challenge)}")
    return _frame(dumps_compact({"version": AUTH_VERSION, "challenge": list(challenge)}), "AuthChallenge")


def decode_auth_challenge(body: bytes) -> bytes:
    obj = _object(body, "AuthChallenge")
    return _byte_array(obj, "challenge", CHALLENGE_BYTES, lambda: WireError("Invalid AuthChallenge JSON"))


@attrs.frozen
class AuthProof:
    public_key: bytes
    signature: bytes


def encode_auth_request(proof: AuthProof) -> bytes:
    if len(proof.public_key) != PUBLIC_KEY_BYTES or len(proof.signature) != SIGNATURE_BYTES:
        raise LocalProtocolError("an AuthRequest carries a 32-byte public key and a 64-byte signature")
    obj = {"version": AUTH_VERSION, "public_key": list(proof.public_key), "signature": list(proof.signature)}
    return _frame(dumps_compact(obj), "AuthRequest")


def decode_auth_request(body: bytes) -> AuthProof:
    obj = _object(body, "AuthRequest")

    def fail() -> WireError:
        return WireError("Invalid AuthRequest JSON")

    return AuthProof(_byte_array(obj, "public_key", PUBLIC_KEY_BYTES, fail),
                     _byte_array(obj, "signature", SIGNATURE_BYTES, fail))


@attrs.frozen
class AuthResponse:
    accepted: bool
    reason: str | None = None


def encode_auth_response(response: AuthResponse) -> bytes:
    obj: dict[str, Any] = {"version": AUTH_VERSION, "accepted": response.accepted}
    if response.reason:
        obj["reason"] = truncate_reason(response.reason)
    return _frame(dumps_compact(obj), "AuthResponse")


def decode_auth_response(body: bytes) -> AuthResponse:
    obj = _object(body, "AuthResponse")

    def fail() -> WireError:
        return WireError("Invalid AuthResponse JSON")

    return AuthResponse(field_bool(obj, "accepted", fail), field_opt_str(obj, "reason", fail))


# ---------------------------------------------------------------------------------------------- crypto


def signed_message(challenge: bytes) -> bytes:
    """The 71 bytes a client signs: domain string (with its NUL) then the challenge."""
    return AUTH_DOMAIN + challenge


def public_key_from_seed(seed: bytes) -> bytes:
    if len(seed) != 32:
        raise LocalProtocolError(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


def sign_challenge(seed: bytes, challenge: bytes) -> AuthProof:
    """Ed25519 is deterministic (RFC 8032), so a fixed seed and challenge give a fixed proof."""
    key = Ed25519PrivateKey.from_private_bytes(seed)
    return AuthProof(key.public_key().public_bytes_raw(), key.sign(signed_message(challenge)))


def verify_proof(proof: AuthProof, challenge: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(proof.public_key).verify(proof.signature, signed_message(challenge))
    except (InvalidSignature, ValueError):
        return False
    return True


# ---------------------------------------------------------------------------------------------- server machine


class AuthServerState(enum.Enum):
    AWAIT_INIT = "await-init"
    AWAIT_PROOF = "await-proof"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


@attrs.frozen
class AuthAccepted:
    """The client proved ``public_key``; forwarding streams may now be served."""

    public_key: bytes


@attrs.frozen
class AuthDenied:
    """Close the connection with ``close`` (after any queued SendBytes was delivered); ``error`` is for the log."""

    close: CloseCode
    error: str


AuthServerEvent = SendBytes | AuthAccepted | AuthDenied


class AuthServer:
    """The server side of the auth stream. Inputs: ``feed``, ``feed_eof``, ``on_timer(now)``; outputs via
    ``next_event``. ``deadline`` is when the adapter must call ``on_timer`` if nothing else happened."""

    def __init__(self, authorized_keys: Iterable[bytes], *, rng: Callable[[int], bytes], now: float) -> None:
        self._keys = frozenset(bytes(k) for k in authorized_keys)
        self._rng = rng
        self.deadline = now + AUTH_TIMEOUT
        self._reader = MessageReader("AuthInit")
        self._challenge = b""
        self._events: deque[AuthServerEvent] = deque()
        self.state = AuthServerState.AWAIT_INIT

    @property
    def finished(self) -> bool:
        return self.state in (AuthServerState.ACCEPTED, AuthServerState.REJECTED)

    def next_event(self) -> AuthServerEvent | None:
        return self._events.popleft() if self._events else None

    def feed(self, data: bytes) -> None:
        if self.finished:
            return
        try:
            self._consume(data)
        except WireError as exc:
            self._deny(CLOSE_AUTH_FAILED, str(exc))

    def _consume(self, data: bytes) -> None:
        while not self.finished:
            body = self._reader.feed(data)
            if body is None:
                return
            data = self._reader.remainder
            if self.state is AuthServerState.AWAIT_INIT:
                decode_auth_init(body)
                self._challenge = self._rng(CHALLENGE_BYTES)
                if len(self._challenge) != CHALLENGE_BYTES:
                    raise LocalProtocolError("rng returned the wrong number of bytes")
                self.state = AuthServerState.AWAIT_PROOF
                self._reader = MessageReader("AuthRequest")
                self._events.append(SendBytes(encode_auth_challenge(self._challenge)))
            else:
                self._judge(decode_auth_request(body))
            if not data:
                return

    def _judge(self, proof: AuthProof) -> None:
        if proof.public_key in self._keys and verify_proof(proof, self._challenge):
            self.state = AuthServerState.ACCEPTED
            self._events.append(SendBytes(encode_auth_response(AuthResponse(True)), finish=True))
            self._events.append(AuthAccepted(proof.public_key))
            return
        known = "unknown public key" if proof.public_key not in self._keys else "bad signature"
        self._events.append(SendBytes(encode_auth_response(AuthResponse(False, INVALID_PROOF_REASON)), finish=True))
        self._deny(CLOSE_AUTH_FAILED, f"{INVALID_PROOF_REASON} ({known})")

    def feed_eof(self) -> None:
        if self.finished:
            return
        self._deny(CLOSE_AUTH_FAILED, f"auth stream ended in state {self.state.value}")

    def on_timer(self, now: float) -> None:
        if not self.finished and now >= self.deadline:
            self._deny(CLOSE_AUTH_TIMEOUT, "Authentication timed out")

    def _deny(self, close: CloseCode, error: str) -> None:
        self.state = AuthServerState.REJECTED
        self._events.append(AuthDenied(close, error))


# ---------------------------------------------------------------------------------------------- client machine


class AuthClientState(enum.Enum):
    AWAIT_CHALLENGE = "await-challenge"
    AWAIT_RESPONSE = "await-response"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FAILED = "failed"


@attrs.frozen
class AuthOk:
    pass


@attrs.frozen
class AuthRefused:
    """The server's answer was no, or no answer came in time; ``message`` is what the user sees (exit code 3)."""

    message: str


AuthClientEvent = SendBytes | AuthOk | AuthRefused


class AuthClient:
    """The client side: write ``init_bytes()`` on a fresh stream, then feed what the server sends."""

    def __init__(self, seed: bytes, *, now: float) -> None:
        self._seed = bytes(seed)
        public_key_from_seed(self._seed)  # validates the length early
        self.deadline = now + AUTH_TIMEOUT
        self._reader = MessageReader("AuthChallenge")
        self._events: deque[AuthClientEvent] = deque()
        self.state = AuthClientState.AWAIT_CHALLENGE

    @property
    def finished(self) -> bool:
        return self.state not in (AuthClientState.AWAIT_CHALLENGE, AuthClientState.AWAIT_RESPONSE)

    def init_bytes(self) -> bytes:
        return encode_auth_init()

    def next_event(self) -> AuthClientEvent | None:
        return self._events.popleft() if self._events else None

    def feed(self, data: bytes) -> None:
        """Raises WireError (state FAILED) when the server breaks the protocol."""
        if self.finished:
            raise LocalProtocolError(f"AuthClient.feed in state {self.state.value}")
        try:
            while not self.finished:
                body = self._reader.feed(data)
                if body is None:
                    return
                data = self._reader.remainder
                if self.state is AuthClientState.AWAIT_CHALLENGE:
                    challenge = decode_auth_challenge(body)
                    self.state = AuthClientState.AWAIT_RESPONSE
                    self._reader = MessageReader("AuthResponse")
                    self._events.append(SendBytes(encode_auth_request(sign_challenge(self._seed, challenge)),
                                                  finish=True))
                else:
                    response = decode_auth_response(body)
                    if response.accepted:
                        self.state = AuthClientState.ACCEPTED
                        self._events.append(AuthOk())
                    else:
                        self.state = AuthClientState.REJECTED
                        reason = response.reason or "no reason given"
                        self._events.append(AuthRefused(f"Authentication rejected: {reason}"))
                if not data:
                    return
        except WireError:
            self.state = AuthClientState.FAILED
            raise

    def feed_eof(self) -> None:
        if self.finished:
            return
        awaited = self._awaited()
        self.state = AuthClientState.FAILED
        raise WireError(f"auth stream ended before the server's {awaited}")

    def on_timer(self, now: float) -> None:
        if self.finished or now < self.deadline:
            return
        message = "Auth challenge timed out" if self.state is AuthClientState.AWAIT_CHALLENGE \
            else "Auth response timed out"
        self.state = AuthClientState.REJECTED
        self._events.append(AuthRefused(message))

    def _awaited(self) -> str:
        return "challenge" if self.state is AuthClientState.AWAIT_CHALLENGE else "response"
