"""The `tunnel` and `tunnel-rs-ice` commands on the asyncio runtime (the default runtime of the CLI)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tunnel_cli.entry import console_main


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``tunnel``."""
    return console_main(argv, "TUNNEL", "asyncio")


def main_ice(argv: Sequence[str] | None = None) -> int:
    """Console script ``tunnel-rs-ice``: the reference's ICE binary name; same flags, own default files."""
    return console_main(argv, "TUNNEL_RS_ICE", "asyncio")


if __name__ == "__main__":
    sys.exit(main())
