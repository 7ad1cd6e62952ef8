"""Ed25519 auth key files of E4, in the flexaccess-keys format (docs/key-format.md of flexaccess-keys v0.0.2).

Tokens are ``ed25519-pub:`` / ``ed25519-sec:`` followed by the 32 key bytes as unpadded URL-safe base64 (43
characters). An authorized-keys document holds one public token per line, the rest of the line (trimmed) being
its comment; the same key on several lines means the last line wins. A private-key file holds exactly one
``ed25519-sec:`` line, optionally below three ``#`` header lines that name the key type, its creation time and its
public entry, so a lost public entry can be recovered from the file. Public keys must be points on the curve: a
token that decodes to 32 bytes but no point would only fail later, at the first signature check.

Pure functions: the creation time comes in as a number (this package reads no clock).
"""

from __future__ import annotations

import base64
import binascii
import re
import time

from tunnel_core.iroh_session.auth import public_key_from_seed
from tunnel_core.keys import KeyFormatError

PUBLIC_PREFIX = "ed25519-pub:"
SECRET_PREFIX = "ed25519-sec:"
HEADER_KEY_TYPE = "# Ed25519 authentication key"
HEADER_CREATED = "# Created: "
HEADER_PUBLIC = "# Public key: "
_B64URL_32 = re.compile(r"[A-Za-z0-9_-]{43}")

# Edwards25519 (RFC 8032 5.1): field prime and curve constant, for the on-curve check of public keys.
_P = 2**255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


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


def is_curve_point(public_key: bytes) -> bool:
    """True when the 32 bytes decompress to a point of Edwards25519 (RFC 8032 5.1.3 decoding)."""
    if len(public_key) != 32:
        return False
    value = int.from_bytes(public_key, "little")
    sign = value >> 255
    y = value & ((1 << 255) - 1)
    if y >= _P:
        return False
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    x = (u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P)) % _P
    if (v * x * x - u) % _P != 0:
        x = (x * _SQRT_M1) % _P
        if (v * x * x - u) % _P != 0:
            return False
    return not (x == 0 and sign == 1)


def check_comment(comment: str) -> str:
    """Comments are trimmed and single-line (an entry is one line of an authorized-keys document)."""
    text = comment.strip()
    if "\n" in text or "\r" in text:
        raise KeyFormatError("Comment must not contain CR or LF")
    return text


def format_public_key(public_key: bytes, comment: str | None = None) -> str:
    line = PUBLIC_PREFIX + _encode(public_key)
    text = check_comment(comment or "")
    return f"{line} {text}" if text else line


def parse_public_token(token: str) -> bytes:
    """One bare ``ed25519-pub:`` token (no comment)."""
    if not token.startswith(PUBLIC_PREFIX):
        raise KeyFormatError(f"Public key must start with '{PUBLIC_PREFIX}'")
    raw = _decode(token[len(PUBLIC_PREFIX):])
    if raw is None:
        raise KeyFormatError("Public key is not valid base64url of 32 bytes (43 characters)")
    if not is_curve_point(raw):
        raise KeyFormatError("Invalid Ed25519 public key: not a point on the curve")
    return raw


def split_entry(line: str) -> tuple[str, str]:
    """An authorized-keys line as (token, comment): the first whitespace-delimited field, then the trimmed rest."""
    text = line.strip()
    parts = text.split(None, 1)
    token = parts[0] if parts else ""
    return token, (parts[1].strip() if len(parts) > 1 else "")


def parse_public_key(line: str) -> bytes:
    """The key of one authorized-keys entry (token plus optional comment)."""
    return parse_public_token(split_entry(line)[0])


def parse_authorized_entries(text: str, origin: str) -> dict[bytes, str]:
    """Public key -> comment; blank and ``#`` lines skipped, a bad line is fatal naming ``origin:line``, and a key
    listed twice keeps the comment of its last line."""
    entries: dict[bytes, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        token, comment = split_entry(stripped)
        try:
            entries[parse_public_token(token)] = check_comment(comment)
        except KeyFormatError as exc:
            raise KeyFormatError(f"Invalid authorized key at {origin}:{number}: {exc}") from None
    return entries


def parse_authorized_keys(text: str, origin: str) -> tuple[bytes, ...]:
    """The keys of an authorized-keys document; a document without any is an error (upstream's wording)."""
    keys = tuple(parse_authorized_entries(text, origin))
    if not keys:
        raise KeyFormatError(f"No Ed25519 public keys found in {origin}")
    return keys


def rfc3339_utc(seconds: float) -> str:
    """``2026-08-17T19:00:00Z`` for a Unix time: the ``# Created:`` header's form."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(seconds)))


def format_private_key(seed: bytes, comment: str | None = None, *, created: float = 0.0) -> str:
    """The canonical private-key file: three ``#`` headers, then the ``ed25519-sec:`` line."""
    public = format_public_key(public_key_from_seed(seed), comment)
    return (f"{HEADER_KEY_TYPE}\n{HEADER_CREATED}{rfc3339_utc(created)}\n{HEADER_PUBLIC}{public}\n"
            f"{SECRET_PREFIX}{_encode(seed)}\n")


def _key_line(text: str, origin: str) -> str:
    found: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if found is not None:
            raise KeyFormatError(f"Invalid authentication private key in {origin}: multiple key lines")
        found = stripped
    if found is None:
        raise KeyFormatError(f"No authentication private key found in {origin}")
    return found


def parse_private_key(text: str, origin: str) -> bytes:
    """The 32-byte seed of a private-key file (or a bare token): exactly one key line must remain."""
    line = _key_line(text, origin)
    if not line.startswith(SECRET_PREFIX):
        raise KeyFormatError(
            f"Invalid authentication private key in {origin}: Private key must start with '{SECRET_PREFIX}'"
        )
    seed = _decode(line[len(SECRET_PREFIX):])
    if seed is None:
        raise KeyFormatError(
            f"Invalid authentication private key in {origin}: not valid base64url of 32 bytes (43 characters)"
        )
    return seed


def authorized_entry_from_private_file(text: str, origin: str, comment: str | None = None) -> str:
    """The authorized-keys line for a private-key file: an explicit comment wins, else the comment of a
    ``# Public key:`` header naming this very key (a header left over from a replaced key is ignored)."""
    seed = parse_private_key(text, origin)
    public = public_key_from_seed(seed)
    if comment is not None:
        return format_public_key(public, comment)
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith(HEADER_PUBLIC):
            continue
        token, header_comment = split_entry(stripped[len(HEADER_PUBLIC):])
        try:
            if parse_public_token(token) == public:
                return format_public_key(public, header_comment)
        except KeyFormatError:
            continue
    return format_public_key(public)
