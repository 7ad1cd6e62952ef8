"""What the CLI prints besides the pasted blocks: one-line ``Error:`` / ``Warning:`` messages and the log setup.

Every command (peer modes, key tools, the relay) reports through these, so the one-line contract holds everywhere.
"""

from __future__ import annotations

import os
import sys


def one_line(message: str) -> str:
    """Some reference messages span lines; ours must not, so grep and log scrapers see the whole error. Control
    characters are escaped as the last line of defence for the terminal (tunnel_core.peertext)."""
    from tunnel_core.peertext import printable

    return printable(" ".join(part.strip() for part in message.splitlines() if part.strip()))


def error(message: str) -> None:
    print(f"Error: {one_line(message)}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"Warning: {one_line(message)}", file=sys.stderr, flush=True)


def configure_logging() -> None:
    """Status goes to stderr through logging (stdout carries only the OFFER/ANSWER blocks people paste).

    ``TUNNEL_LOG`` (debug, info, warning, error) sets our loggers' level, like upstream's RUST_LOG; other
    libraries stay at warning so aioquic/asyncio chatter does not bury the tunnel's own messages.
    """
    import logging

    level_name = os.environ.get("TUNNEL_LOG", "info").strip().upper()
    level = logging.getLevelName(level_name)
    if not isinstance(level, int):
        level = logging.INFO
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    loggers = ("tunnel_core", "tunnel_io", "tunnel_asyncio", "tunnel_trio", "tunnel_gevent", "tunnel_iroh",
               "tunnel_iroh_relay", "tunnel_cli")
    for name in loggers:
        logging.getLogger(name).setLevel(level)


