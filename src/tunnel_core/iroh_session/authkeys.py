"""Ed25519 auth key files of E4 (reference 6.3, flexaccess-keys format).

Public keys are single lines ``ed25519-pub:<unpadded base64url of 32 bytes>[ comment]`` so an authorized-keys
file can be edited by hand like ssh's; private files hold ``ed25519-sec:<unpadded base64url of the 32-byte
seed>`` and may carry ``#`` comment lines (we write the public line there as a comment, so a lost public key can
be recovered by reading the file).
"""

from __future__ import annotations

import base64
import binascii
import re

from tunnel_core.iroh_session.auth import public_key_from_seed
from tunnel_core.keys import KeyFormatError

PUBLIC_PREFIX = "ed25519-pub:"
SECRET_PREFIX = "ed25519-sec:"
_B64URL_32 = re.compile(r"[A-Za-z0-9_-]{43}")


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode(text: str) -> bytes | None:
    if not _B64URL_32.fullmatch(text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=")
    except (binascii.Error, ValueError):
        return None
    # 43 chars carry 258 bits: the two spare bits must be zero or two spellings would name one key.
    return raw if _encode(raw) == text else None


def format_public_key(public_key: bytes, comment: str | None = None) -> str:
    line = PUBLIC_PREFIX + _encode(public_key)
    return f"{line} {comment}" if comment else line


def parse_public_key(line: str) -> bytes:
    """One ``ed25519-pub:`` entry; everything after the first space is a comment."""
    text = line.strip()
    token = text.split(" ", 1)[0]
    if not token.startswith(PUBLIC_PREFIX):
        raise KeyFormatError(f"not an Ed25519 public key (expected '{PUBLIC_PREFIX}...'): {token[:40]}")
    raw = _decode(token[len(PUBLIC_PREFIX):])
    if raw is None:
        raise KeyFormatError(f"invalid Ed25519 public key (expected 43 base64url characters): {token[:60]}")
    return raw


def parse_authorized_keys(text: str, origin: str) -> tuple[bytes, ...]:
    """Blank and ``#`` lines are skipped; any other bad line is fatal, naming ``origin:line``."""
    keys: list[bytes] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            keys.append(parse_public_key(stripped))
        except KeyFormatError as exc:
            raise KeyFormatError(f"Invalid Ed25519 public key at {origin}:{number}: {exc}") from None
    if not keys:
        raise KeyFormatError(f"No Ed25519 public keys found in {origin}")
    return tuple(dict.fromkeys(keys))


def format_private_key(seed: bytes, comment: str | None = None) -> str:
    public = format_public_key(public_key_from_seed(seed), comment)
    return f"# public key: {public}\n{SECRET_PREFIX}{_encode(seed)}\n"


def parse_private_key(text: str, origin: str) -> bytes:
    """The seed of the first ``ed25519-sec:`` line; ``#`` lines and blank lines are ignored."""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        token = stripped.split(" ", 1)[0]
        if not token.startswith(SECRET_PREFIX):
            raise KeyFormatError(f"Invalid Ed25519 private key in {origin}: expected '{SECRET_PREFIX}...'")
        seed = _decode(token[len(SECRET_PREFIX):])
        if seed is None:
            raise KeyFormatError(f"Invalid Ed25519 private key in {origin}: expected 43 base64url characters")
        return seed
    raise KeyFormatError(f"No Ed25519 private key found in {origin}")
