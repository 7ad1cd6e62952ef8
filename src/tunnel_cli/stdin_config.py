"""``--config-stdin``: one JSON config object read from stdin (upstream's automation path).

Upstream deserializes exactly one JSON value from stdin with a 30 s limit and leaves the rest of the stream alone;
so do we: the reader stops at the end of the first complete value. The value may carry what config files may not
(inline ``secret``, ``authorized_keys``, ``private_key``), because it never touches the disk. Reads are bounded by
the same 1 MiB cap as config files.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from pathlib import Path
from typing import Any

from tunnel_cli import config as cfg

TIMEOUT = 30.0
ORIGIN = Path("<stdin>")
_CHUNK = 65536


def _error(detail: str) -> Exception:
    return cfg.usage_error(f"Failed to parse JSON config from stdin: {detail}")


def read_json_value(fd: int | None = None, *, timeout: float = TIMEOUT) -> Any:
    """The first JSON value on ``fd`` (stdin by default); usage errors for bad JSON, a timeout or too much input."""
    source = sys.stdin.fileno() if fd is None else fd
    decoder = json.JSONDecoder()
    buffer = b""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise cfg.usage_error(f"Timed out waiting for JSON config from stdin ({timeout:.0f}s)")
        ready, _, _ = select.select([source], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(source, _CHUNK)
        buffer += chunk
        if len(buffer) > cfg.MAX_FILE_BYTES:
            raise _error(f"more than {cfg.MAX_FILE_BYTES // 1024} KiB")
        try:
            text = buffer.decode("utf-8")
        except UnicodeDecodeError as exc:
            if chunk and exc.end >= len(buffer) - 3:
                continue  # a multi-byte character split across reads
            raise _error("not UTF-8") from None
        stripped = text.lstrip()
        try:
            value, _end = decoder.raw_decode(stripped)
        except json.JSONDecodeError as exc:
            if not chunk:
                raise _error(str(exc) if stripped else "EOF while parsing a value") from None
            continue
        except RecursionError:
            raise _error("nested too deeply") from None
        return value


def read_stdin_config() -> cfg.ConfigFile:
    """The JSON object as a ConfigFile (path ``<stdin>``), checked like a TOML file's top level."""
    value = read_json_value()
    if not isinstance(value, dict):
        raise _error("expected a JSON object")
    return cfg.parse_config(value, ORIGIN)
