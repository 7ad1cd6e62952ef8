"""Text that came from the other side, made safe for the operator's terminal (issue 18, item 6).

Why: a pasted block, a Nostr message, a QUIC close reason or a source request are written by the peer (or by
whoever forged them). Printed raw, ESC/BEL/CSI sequences drive the operator's terminal (change the title, hide
text, fake lines) and a 100,000-character field makes a 100,000-character "one-line" error. Every place where peer
text enters a message passes it through ``quote_peer``: every character Python deems unprintable (ESC, BEL,
DEL, the C1 controls, the bidi overrides, separators other than the ASCII space) becomes a visible escape, and the
whole is capped. Ordinary text, including non-ASCII letters, is unchanged.
"""

from __future__ import annotations

__all__ = ["PEER_TEXT_LIMIT", "printable", "quote_peer"]

#: Characters of peer text kept in one message; enough for any real source, candidate or reason.
PEER_TEXT_LIMIT = 200


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with every character Python deems unprintable (controls, format characters, separators other
    than the ASCII space, unassigned code points) shown as an escape."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def quote_peer(text: str, limit: int = PEER_TEXT_LIMIT) -> str:
    """Peer text for a message: escaped (``printable``) and cut to ``limit`` characters, saying how long it was."""
    shown = printable(text[:limit])
    if len(text) <= limit and len(shown) <= limit:
        return shown
    return f"{shown[:limit]}... ({len(text)} characters)"
