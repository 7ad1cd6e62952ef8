"""What differs between the entry points (``tunnel``, ``tunnel-rs-ice``, ``tunnel-rs``): name, modes, default files.

Its own module so every command module can name the program it serves without importing the CLI core.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Program:
    """What differs between the two entry points: the name users see, the modes offered, the default files."""

    name: str
    ice: bool
    #: Canonical modes this binary knows (implemented or not), in the order error messages list them.
    modes: tuple[str, ...]
    #: Subcommand words per canonical mode (E3 name first, then the E2 ``ice-`` spelling).
    words: tuple[tuple[str, tuple[str, ...]], ...]


TUNNEL = Program(
    name="tunnel",
    ice=False,
    modes=("iroh", "manual", "nostr"),
    words=(("manual", ("ice-manual",)), ("nostr", ("ice-nostr",)), ("iroh", ())),
)
TUNNEL_RS_ICE = Program(
    name="tunnel-rs-ice",
    ice=True,
    modes=("manual", "nostr"),
    words=(("manual", ("ice-manual",)), ("nostr", ("ice-nostr",))),
)
TUNNEL_RS = Program(name="tunnel-rs", ice=False, modes=("iroh",), words=(("iroh", ()),))
