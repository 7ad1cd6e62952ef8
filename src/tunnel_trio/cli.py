"""`python -m tunnel_trio.cli`: the same command line as ``tunnel`` (tunnel_asyncio.cli), run on trio.

The parser, config loading and validation are runtime-neutral and shared; only the dispatch differs. They are
borrowed from tunnel_asyncio.cli until the lead moves them into the neutral ``tunnel_cli`` package (adapters must not
depend on each other; importing that module loads no asyncio machinery, only argparse/tomllib/attrs).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tunnel_asyncio.cli import TUNNEL, Options, Program, _error, _warn, build_options, configure_logging
from tunnel_core.options import ExitCode, ManualServerOptions, TunnelError


def _dispatch(options: Options) -> None:
    """Import the runner only now: aioquic and trio cost a few hundred milliseconds to load."""
    if isinstance(options, ManualServerOptions):
        from tunnel_trio.manual import run_manual_server

        run_manual_server(options)
    else:
        from tunnel_trio.manual import run_manual_client

        run_manual_client(options)


def run(argv: Sequence[str] | None = None, *, program: Program = TUNNEL) -> int:
    """Run one command and return its exit code; never raises, never prints a traceback."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        _command, options = build_options(args, program=program, warn=_warn)
        configure_logging()
        _dispatch(options)
    except SystemExit as exc:  # --help / --version (argparse)
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        _error(str(exc.code))
        return int(ExitCode.GENERAL)
    except TunnelError as exc:
        _error(exc.message)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("Interrupted; tunnel stopped.", file=sys.stderr, flush=True)
        return int(ExitCode.OK)
    except Exception as exc:
        _error(f"internal error: {type(exc).__name__}: {exc}")
        return int(ExitCode.GENERAL)
    return int(ExitCode.OK)


def main(argv: Sequence[str] | None = None) -> int:
    return run(argv, program=TUNNEL)


if __name__ == "__main__":
    sys.exit(main())
