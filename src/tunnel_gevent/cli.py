"""`python -m tunnel_gevent.cli`: the same command line as ``tunnel``, run on gevent.

The parser, config files and validation are runtime-neutral (tunnel_cli); only the runtime differs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tunnel_cli.cli import TUNNEL, TUNNEL_RS_ICE, run


def main(argv: Sequence[str] | None = None) -> int:
    return run(argv, program=TUNNEL, runtime="gevent")


def main_ice(argv: Sequence[str] | None = None) -> int:
    return run(argv, program=TUNNEL_RS_ICE, runtime="gevent")


if __name__ == "__main__":
    sys.exit(main())
