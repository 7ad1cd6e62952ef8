"""ICE credentials and tie-breakers drawn from the injected rng (the core owns no random source)."""

from __future__ import annotations

import re
from collections.abc import Callable

from tunnel_core.errors import LocalProtocolError

__all__ = ["ICE_CHARS", "check_credentials", "random_ice_string", "random_tie_breaker", "remote_credentials_ok"]

#: RFC 8839 ice-char: ALPHA / DIGIT / "+" / "/"; exactly 64 symbols, so ``byte & 63`` maps bytes without bias.
ICE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
UFRAG_LENGTH = 8
PWD_LENGTH = 24
_UFRAG = re.compile(r"[A-Za-z0-9+/]{4,256}")
_PWD = re.compile(r"[A-Za-z0-9+/]{22,256}")


def random_ice_string(rng: Callable[[int], bytes], length: int) -> str:
    raw = rng(length)
    if len(raw) != length:
        raise LocalProtocolError(f"rng({length}) returned {len(raw)} bytes")
    return "".join(ICE_CHARS[b & 63] for b in raw)


def random_tie_breaker(rng: Callable[[int], bytes]) -> int:
    raw = rng(8)
    if len(raw) != 8:
        raise LocalProtocolError("rng(8) must return 8 bytes")
    return int.from_bytes(raw, "big")


def remote_credentials_ok(ufrag: object, pwd: object) -> bool:
    """Whether the peer's credentials follow the same grammar (they go into every STUN USERNAME we send)."""
    return isinstance(ufrag, str) and isinstance(pwd, str) and bool(_UFRAG.fullmatch(ufrag) and _PWD.fullmatch(pwd))


def check_credentials(ufrag: str, pwd: str) -> None:
    """Refuse credentials a peer would reject (RFC 8445 5.3: ufrag >= 4, password >= 22 ice-chars)."""
    if not _UFRAG.fullmatch(ufrag):
        raise LocalProtocolError(f"ICE ufrag must be 4..256 ice-chars, got {ufrag!r}")
    if not _PWD.fullmatch(pwd):
        raise LocalProtocolError("ICE password must be 22..256 ice-chars")
