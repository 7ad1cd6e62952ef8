"""``python -m tunnel_gevent.cli``: the ``tunnel`` command line on gevent."""

import sys

from tunnel_cli.entry import console_mains

main, main_ice = console_mains("gevent")

if __name__ == "__main__":
    sys.exit(main())
