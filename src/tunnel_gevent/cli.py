"""`python -m tunnel_gevent.cli`: the same command line as ``tunnel``, run on gevent.

The parser, config files and validation are runtime-neutral (tunnel_cli); only the runtime differs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tunnel_cli.entry import console_main


def main(argv: Sequence[str] | None = None) -> int:
    return console_main(argv, "TUNNEL", "gevent")


def main_ice(argv: Sequence[str] | None = None) -> int:
    return console_main(argv, "TUNNEL_RS_ICE", "gevent")


if __name__ == "__main__":
    sys.exit(main())
