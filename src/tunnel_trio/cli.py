"""`python -m tunnel_trio.cli`: the same command line as ``tunnel``, run on trio.

The parser, config files and validation are runtime-neutral (tunnel_cli); only the runtime differs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tunnel_cli.entry import console_main


def main(argv: Sequence[str] | None = None) -> int:
    return console_main(argv, "TUNNEL", "trio")


def main_ice(argv: Sequence[str] | None = None) -> int:
    return console_main(argv, "TUNNEL_RS_ICE", "trio")


if __name__ == "__main__":
    sys.exit(main())
