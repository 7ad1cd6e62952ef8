"""Peer text in messages is escaped and capped (issue 18 item 6)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tunnel_core.peertext import PEER_TEXT_LIMIT, printable, quote_peer


def test_ordinary_text_is_unchanged() -> None:
    assert quote_peer("tcp://db.example:5432") == "tcp://db.example:5432"
    assert quote_peer("Grüße, 東京") == "Grüße, 東京"


def test_terminal_controls_become_visible_escapes() -> None:
    assert printable("a\x1b[2Jb\x07c\x9bd\u202ee\u2028f\x7f") == "a\\x1b[2Jb\\x07c\\x9bd\\u202ee\\u2028f\\x7f"


def test_long_text_is_capped_and_says_how_long_it_was() -> None:
    shown = quote_peer("A" * 100_000)
    assert shown == "A" * PEER_TEXT_LIMIT + "... (100000 characters)"


@given(st.text())
def test_never_lets_a_control_character_through_and_stays_bounded(text: str) -> None:
    shown = quote_peer(text)
    assert all(ch.isprintable() for ch in shown)
    assert len(shown) <= PEER_TEXT_LIMIT + len("... (characters)") + 20
