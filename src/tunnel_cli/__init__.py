"""The runtime-neutral command line: argparse, config files and validation, producing tunnel_core.options values.

Not an adapter: each runtime's ``cli`` module calls :func:`tunnel_cli.cli.run` with its own name, so asyncio, trio
and gevent programs share one set of flags, messages and exit codes.
"""
