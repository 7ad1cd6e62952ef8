"""Nostr keys: secp256k1 secret keys and x-only public keys in hex and NIP-19 bech32 (``nsec1...``, ``npub1...``).

Why our own bech32: it is ~40 lines of the BIP-173 reference algorithm, and the alternatives are an unmaintained
2020-era package or a 4 MB binding. Accepting both spellings with the reference's messages lets key files and
config values move between tunnel-rs and this tool unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import coincurve

from tunnel_core.nostr.errors import NostrError

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
#: Secp256k1 group order: a secret key must lie in [1, N).
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

PARSE_SECRET_FAILED = "Failed to parse private key (expected nsec or hex format)"
PARSE_PUBLIC_FAILED = "Failed to parse peer public key (expected npub or hex format)"


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = ((chk & 0x1FFFFFF) << 5) ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GEN[i]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convertbits(data: bytes | list[int], frombits: int, tobits: int, pad: bool) -> list[int] | None:
    acc = 0
    bits = 0
    out: list[int] = []
    maxv = (1 << tobits) - 1
    for value in data:
        if value < 0 or value >> frombits:
            return None
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or ((acc << (tobits - bits)) & maxv):
        return None
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    five = _convertbits(data, 8, 5, True)
    assert five is not None
    values = _hrp_expand(hrp) + five
    polymod = _polymod([*values, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[d] for d in five + checksum)


def bech32_decode(text: str) -> tuple[str, bytes]:
    """Decode a bech32 (not bech32m) string; any defect raises NostrError (no partial results)."""
    if any(ord(c) < 33 or ord(c) > 126 for c in text) or (text.lower() != text and text.upper() != text):
        raise NostrError("invalid bech32 string")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text) or len(text) > 1000:
        raise NostrError("invalid bech32 string")
    hrp = text[:pos]
    try:
        data = [_CHARSET.index(c) for c in text[pos + 1 :]]
    except ValueError:
        raise NostrError("invalid bech32 character") from None
    if _polymod(_hrp_expand(hrp) + data) != 1:
        raise NostrError("invalid bech32 checksum")
    decoded = _convertbits(data[:-6], 5, 8, False)
    if decoded is None:
        raise NostrError("invalid bech32 padding")
    return hrp, bytes(decoded)


def _hex32(text: str) -> bytes | None:
    if len(text) != 64:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def _valid_secret(raw: bytes) -> bool:
    return len(raw) == 32 and 0 < int.from_bytes(raw, "big") < _N


def _valid_xonly(raw: bytes) -> bool:
    if len(raw) != 32:
        return False
    try:
        coincurve.PublicKeyXOnly(raw)
    except ValueError:
        return False
    return True


@attrs.frozen
class PublicKey:
    """An x-only secp256k1 public key (32 bytes), the author/recipient identity in Nostr."""

    raw: bytes = attrs.field(repr=False)

    def __attrs_post_init__(self) -> None:
        if not _valid_xonly(self.raw):
            raise NostrError("not a valid x-only secp256k1 public key")

    @property
    def hex(self) -> str:
        return self.raw.hex()

    @property
    def npub(self) -> str:
        return bech32_encode("npub", self.raw)

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        """``npub1...`` or 64 hex digits (reference 5.1: anything starting with ``npub`` is bech32)."""
        text = text.strip()
        if text.startswith("npub"):
            try:
                hrp, raw = bech32_decode(text)
            except NostrError as exc:
                raise NostrError(f"{PARSE_PUBLIC_FAILED}: Failed to parse npub: {exc}") from None
            if hrp != "npub" or not _valid_xonly(raw):
                raise NostrError(f"{PARSE_PUBLIC_FAILED}: Failed to parse npub: invalid public key")
            return cls(raw)
        raw_hex = _hex32(text)
        if raw_hex is None or not _valid_xonly(raw_hex):
            raise NostrError(f"{PARSE_PUBLIC_FAILED}: Failed to parse hex pubkey: invalid public key")
        return cls(raw_hex)

    def __str__(self) -> str:
        return self.npub


@attrs.frozen
class SecretKey:
    """A secp256k1 secret key; never printed by repr (it would land in logs and bug reports)."""

    raw: bytes = attrs.field(repr=False)

    def __attrs_post_init__(self) -> None:
        if not _valid_secret(self.raw):
            raise NostrError("secret key out of range")

    @property
    def hex(self) -> str:
        return self.raw.hex()

    @property
    def nsec(self) -> str:
        return bech32_encode("nsec", self.raw)

    @property
    def public_key(self) -> PublicKey:
        return PublicKey(coincurve.PublicKeyXOnly.from_secret(self.raw).format())

    @classmethod
    def parse(cls, text: str) -> SecretKey:
        """``nsec1...`` or 64 hex digits (nostr-sdk ``Keys::parse``)."""
        text = text.strip()
        raw: bytes | None
        if text.startswith("nsec1"):
            try:
                hrp, raw = bech32_decode(text)
            except NostrError:
                raise NostrError(PARSE_SECRET_FAILED) from None
            if hrp != "nsec":
                raise NostrError(PARSE_SECRET_FAILED)
        else:
            raw = _hex32(text)
        if raw is None or not _valid_secret(raw):
            raise NostrError(PARSE_SECRET_FAILED)
        return cls(raw)

    @classmethod
    def generate(cls, rng: Callable[[int], bytes]) -> SecretKey:
        """A fresh key from ``rng(32)``; retried in the astronomically rare out-of-range case (bounded)."""
        for _ in range(64):
            raw = rng(32)
            if _valid_secret(raw):
                return cls(raw)
        raise NostrError("random source produced no valid secret key")
