"""Console script ``tunnel-rs``: the seed's iroh-only entry point (``tunnel-rs server|client`` with or without
the ``iroh`` word, plus the key tools), on the asyncio runtime."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tunnel_cli.entry import console_main


def main(argv: Sequence[str] | None = None) -> int:
    return console_main(argv, "TUNNEL_RS", "asyncio")


if __name__ == "__main__":
    sys.exit(main())
