"""``python -m tunnel_trio.cli``: the ``tunnel`` command line on trio."""

import sys

from tunnel_cli.entry import console_mains

main, main_ice = console_mains("trio")

if __name__ == "__main__":
    sys.exit(main())
