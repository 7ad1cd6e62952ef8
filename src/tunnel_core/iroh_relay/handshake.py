"""The relay handshake: a random challenge, the client's Ed25519 signature over its BLAKE3-derived key, confirm or deny.

iroh signs ``blake3.derive_key("iroh-relay handshake v1 challenge signature", challenge)`` rather than the raw
challenge so that a malicious relay cannot harvest signatures over chosen 16-byte messages; the server must
derive the same 32 bytes to verify. The TLS keying-material shortcut (header ``x-iroh-relay-client-auth-v1``)
is deliberately not supported: CPython's ``ssl`` cannot export keying material, and the iroh client falls back
to the challenge when the server sends one, at the cost of one round trip.
"""

from __future__ import annotations

from collections.abc import Callable

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tunnel_core.iroh_relay.frames import CHALLENGE_LEN, ClientAuth, ServerChallenge

__all__ = ["CHALLENGE_CONTEXT", "challenge_message", "new_challenge", "sign_challenge", "verify_client_auth"]

CHALLENGE_CONTEXT = "iroh-relay handshake v1 challenge signature"


def new_challenge(rng: Callable[[int], bytes]) -> ServerChallenge:
    return ServerChallenge(challenge=rng(CHALLENGE_LEN))


def challenge_message(challenge: bytes) -> bytes:
    """The 32 bytes a client signs for ``challenge``."""
    return blake3.blake3(challenge, derive_key_context=CHALLENGE_CONTEXT).digest()


def sign_challenge(secret_key: bytes, challenge: ServerChallenge) -> ClientAuth:
    """The client's answer (used by our tests and tools; real iroh clients compute the same)."""
    key = Ed25519PrivateKey.from_private_bytes(secret_key)
    public = key.public_key().public_bytes_raw()
    return ClientAuth(public_key=public, signature=key.sign(challenge_message(challenge.challenge)))


def verify_client_auth(challenge: ServerChallenge, auth: ClientAuth) -> bool:
    """True when ``auth`` proves possession of the secret key behind ``auth.public_key``.

    An invalid point (not a public key at all) is simply a failed proof, not a codec error: the frame itself
    was well formed.
    """
    try:
        public = Ed25519PublicKey.from_public_bytes(auth.public_key)
        public.verify(auth.signature, challenge_message(challenge.challenge))
    except (InvalidSignature, ValueError):
        return False
    return True
