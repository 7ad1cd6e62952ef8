"""Text forms of identities: the Ed25519 server secret file, EndpointId/NodeId strings and allowed-clients files
(reference 6.3, 7.1, 7.2).

Keys arrive from files, environment variables and command lines, so parsing is strict about content (canonical
base64, exact lengths) but forgiving about layout (surrounding whitespace, ``#`` comment lines), matching what
upstream's loaders accept so key files move freely between the two tools.
"""

from __future__ import annotations

import base64
import binascii
import re

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tunnel_core.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "KEY_BYTES",
    "KeyFormatError",
    "endpoint_id_from_secret",
    "format_endpoint_id",
    "format_secret_key",
    "parse_allowed_client",
    "parse_allowed_clients",
    "parse_endpoint_id",
    "parse_secret_key",
]


class KeyFormatError(RemoteProtocolError):
    """A key, an EndpointId or an allowed-clients entry is malformed."""


KEY_BYTES = 32

_STD_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_HEX_ID = re.compile(r"[0-9a-fA-F]{64}")
_BASE32_ID = re.compile(r"[a-zA-Z2-7]{52}")


def _content_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def parse_secret_key(text: str) -> bytes:
    """The 32-byte Ed25519 secret from a key file's text: standard padded base64, optionally surrounded by blank
    and ``#`` comment lines (the commented file layout of newer upstream versions)."""
    lines = _content_lines(text)
    if len(lines) > 1:
        raise KeyFormatError("Invalid base64 in secret key")
    encoded = lines[0] if lines else ""
    if not _STD_B64.fullmatch(encoded) or len(encoded) % 4:
        raise KeyFormatError("Invalid base64 in secret key")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFormatError("Invalid base64 in secret key") from exc
    # Reject non-canonical text (stray bits in the last symbol) so one key has exactly one spelling.
    if base64.b64encode(raw).decode("ascii") != encoded:
        raise KeyFormatError("Invalid base64 in secret key")
    if len(raw) != KEY_BYTES:
        raise KeyFormatError("Invalid secret key (must be 32 bytes)")
    return raw


def format_secret_key(raw: bytes) -> str:
    """The key file content: 44 characters of padded standard base64, no newline (upstream E1-E3 layout)."""
    if len(raw) != KEY_BYTES:
        raise LocalProtocolError(f"an Ed25519 secret key is 32 bytes, got {len(raw)}")
    return base64.b64encode(raw).decode("ascii")


def endpoint_id_from_secret(raw: bytes) -> bytes:
    """The 32-byte Ed25519 public key (the EndpointId) belonging to a 32-byte secret seed."""
    if len(raw) != KEY_BYTES:
        raise LocalProtocolError(f"an Ed25519 secret key is 32 bytes, got {len(raw)}")
    return Ed25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()


def format_endpoint_id(public_key: bytes) -> str:
    """64 lowercase hex characters: what current iroh prints, and what logs grep for."""
    if len(public_key) != KEY_BYTES:
        raise LocalProtocolError(f"an EndpointId is 32 bytes, got {len(public_key)}")
    return public_key.hex()


def parse_endpoint_id(text: str) -> bytes:
    """An EndpointId/NodeId as 64 hex characters or the legacy 52-character RFC 4648 base32 (unpadded)."""
    value = text.strip()
    error = KeyFormatError("Invalid EndpointId format. Should be a 52-character base32 string.")
    if _HEX_ID.fullmatch(value):
        return bytes.fromhex(value)
    if not _BASE32_ID.fullmatch(value):
        raise error
    upper = value.upper()
    try:
        raw = base64.b32decode(upper + "====")
    except (binascii.Error, ValueError) as exc:
        raise error from exc
    # 52 symbols carry 260 bits; the 4 spare bits must be zero or two spellings would name one key.
    if base64.b32encode(raw).decode("ascii").rstrip("=") != upper:
        raise error
    return raw


def parse_allowed_client(value: str) -> bytes:
    """One ``--allowed-clients`` command-line value."""
    try:
        return parse_endpoint_id(value)
    except KeyFormatError as exc:
        raise KeyFormatError(f"Invalid --allowed-clients value: {value}") from exc


def parse_allowed_clients(text: str, origin: str) -> tuple[bytes, ...]:
    """An allowed-clients file: one id per line, ``#`` comment lines and inline ``# comments``, blank lines.

    ``origin`` names the file in error messages. Duplicates collapse; the order of first appearance is kept.
    An empty result is legal here: it means nobody is allowed, which the server must enforce.
    """
    ids: list[bytes] = []
    for number, line in enumerate(text.splitlines(), start=1):
        value = line.split("#", 1)[0].strip()
        if not value:
            continue
        try:
            endpoint_id = parse_endpoint_id(value)
        except KeyFormatError as exc:
            raise KeyFormatError(f"Invalid NodeId at {origin}:{number}: {value}") from exc
        if endpoint_id not in ids:
            ids.append(endpoint_id)
    return tuple(ids)
