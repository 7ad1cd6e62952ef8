"""``python -m tunnel_asyncio.cli``: the ``tunnel`` command line on asyncio, the installed default (console scripts
``tunnel`` and ``tunnel-rs-ice``)."""

import sys

from tunnel_cli.entry import console_mains

main, main_ice = console_mains("asyncio")

if __name__ == "__main__":
    sys.exit(main())
