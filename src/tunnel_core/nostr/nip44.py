"""NIP-44 version 2 encryption: what makes the signaling content unreadable to relays and observers.

Recipe (NIP-44 spec): conversation key = HKDF-extract(salt "nip44-v2", ECDH shared x); per message a 32-byte nonce
expands (HKDF-expand, 76 bytes) into a ChaCha20 key, ChaCha20 nonce and HMAC-SHA256 key; the plaintext is length-
prefixed and padded to hide its size; the MAC covers nonce and ciphertext. Checked against the official vectors
(tests/nostr/nip44.vectors.json) and against nostr-sdk.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable

import coincurve
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from tunnel_core.nostr.errors import NostrError
from tunnel_core.nostr.keys import PublicKey, SecretKey

VERSION = 2
MIN_PLAINTEXT = 1
MAX_PLAINTEXT = 65535
_SALT = b"nip44-v2"


class Nip44Error(NostrError):
    """An encrypted payload is malformed, of an unknown version, or fails its MAC."""


def conversation_key(secret: SecretKey, peer: PublicKey) -> bytes:
    """Symmetric: conversation_key(a, B) == conversation_key(b, A). Uses the raw shared x (not a hashed ECDH)."""
    try:
        point = coincurve.PublicKey(b"\x02" + peer.raw)
    except ValueError:
        raise Nip44Error("invalid peer public key") from None
    shared_x = point.multiply(secret.raw).format(compressed=True)[1:]
    return hmac.new(_SALT, shared_x, hashlib.sha256).digest()


def message_keys(conv_key: bytes, nonce: bytes) -> tuple[bytes, bytes, bytes]:
    """(chacha_key, chacha_nonce, hmac_key) for one message."""
    if len(conv_key) != 32:
        raise Nip44Error("invalid conversation key length")
    if len(nonce) != 32:
        raise Nip44Error("invalid nonce length")
    okm = HKDFExpand(algorithm=hashes.SHA256(), length=76, info=nonce).derive(conv_key)
    return okm[:32], okm[32:44], okm[44:76]


def calc_padded_len(unpadded_len: int) -> int:
    if unpadded_len < MIN_PLAINTEXT:
        raise Nip44Error("invalid plaintext length")
    if unpadded_len <= 32:
        return 32
    next_power = 1 << ((unpadded_len - 1).bit_length())
    chunk = 32 if next_power <= 256 else next_power // 8
    return chunk * ((unpadded_len - 1) // chunk + 1)


def _pad(plaintext: bytes) -> bytes:
    n = len(plaintext)
    if n < MIN_PLAINTEXT or n > MAX_PLAINTEXT:
        raise Nip44Error("invalid plaintext length")
    return n.to_bytes(2, "big") + plaintext + b"\x00" * (calc_padded_len(n) - n)


def _unpad(padded: bytes) -> bytes:
    if len(padded) < 2:
        raise Nip44Error("invalid padding")
    n = int.from_bytes(padded[:2], "big")
    if n == 0 or len(padded) != 2 + calc_padded_len(n) or 2 + n > len(padded):
        raise Nip44Error("invalid padding")
    return padded[2 : 2 + n]


def _chacha(key: bytes, nonce12: bytes, data: bytes) -> bytes:
    # cryptography's ChaCha20 takes a 16-byte nonce: a 4-byte little-endian block counter (0) then the 12 bytes.
    cipher = Cipher(algorithms.ChaCha20(key, b"\x00" * 4 + nonce12), mode=None)
    return cipher.encryptor().update(data)


def encrypt_with_nonce(plaintext: str, conv_key: bytes, nonce: bytes) -> str:
    chacha_key, chacha_nonce, hmac_key = message_keys(conv_key, nonce)
    ciphertext = _chacha(chacha_key, chacha_nonce, _pad(plaintext.encode("utf-8")))
    mac = hmac.new(hmac_key, nonce + ciphertext, hashlib.sha256).digest()
    return base64.b64encode(bytes([VERSION]) + nonce + ciphertext + mac).decode("ascii")


def encrypt(plaintext: str, conv_key: bytes, rng: Callable[[int], bytes]) -> str:
    return encrypt_with_nonce(plaintext, conv_key, rng(32))


def decrypt(payload: str, conv_key: bytes) -> str:
    """Decrypt a base64 payload; every defect (version, length, MAC, padding, UTF-8) raises Nip44Error."""
    if not payload or payload[0] == "#":
        raise Nip44Error("unknown encryption version")
    if len(payload) < 132 or len(payload) > 87472:
        raise Nip44Error("invalid payload size")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise Nip44Error("invalid base64") from None
    if len(data) < 99 or len(data) > 65603:
        raise Nip44Error("invalid data size")
    if data[0] != VERSION:
        raise Nip44Error("unknown encryption version")
    nonce, ciphertext, mac = data[1:33], data[33:-32], data[-32:]
    chacha_key, chacha_nonce, hmac_key = message_keys(conv_key, nonce)
    expected = hmac.new(hmac_key, nonce + ciphertext, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, mac):
        raise Nip44Error("invalid MAC")
    plain = _unpad(_chacha(chacha_key, chacha_nonce, ciphertext))
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:
        raise Nip44Error("plaintext is not UTF-8") from None
