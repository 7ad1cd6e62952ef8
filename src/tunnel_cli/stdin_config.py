"""``--config-stdin``: one JSON config object read from stdin (upstream's automation path).

Upstream deserializes exactly one JSON value from stdin with a 30 s limit and leaves the rest of the stream alone
(tunnel-rs-ice 0.2.4 then reads the pasted OFFER/ANSWER from the same stdin); so do we: the reader takes stdin one
line at a time, straight from the file descriptor (nothing buffered behind the block reader's back), and stops at
the end of the line that completes the first value. The value may carry what config files may not
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


def _error(detail: str) -> Exception:
    return cfg.usage_error(f"Failed to parse JSON config from stdin: {detail}")


def _read_line(fd: int, deadline: float, timeout: float) -> bytes:
    """Bytes up to and including the next newline (or EOF), never past it; the deadline covers a stalled line too."""
    out = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise cfg.usage_error(f"Timed out waiting for JSON config from stdin ({timeout:.0f}s)")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        byte = os.read(fd, 1)
        if not byte:
            return bytes(out)
        out += byte
        if byte == b"\n" or len(out) > cfg.MAX_FILE_BYTES:
            return bytes(out)


def read_json_value(fd: int | None = None, *, timeout: float = TIMEOUT) -> Any:
    """The first JSON value on ``fd`` (stdin by default); usage errors for bad JSON, a timeout or too much input."""
    source = sys.stdin.fileno() if fd is None else fd
    decoder = json.JSONDecoder()
    buffer = b""
    deadline = time.monotonic() + timeout
    while True:
        chunk = _read_line(source, deadline, timeout)
        buffer += chunk
        if len(buffer) > cfg.MAX_FILE_BYTES:
            raise _error(f"more than {cfg.MAX_FILE_BYTES // 1024} KiB")
        try:
            text = buffer.decode("utf-8")
        except UnicodeDecodeError:
            raise _error("not UTF-8") from None
        stripped = text.strip()
        if not stripped:
            if not chunk:
                raise _error("EOF while parsing a value")
            continue
        try:
            value, _end = decoder.raw_decode(stripped)
        except json.JSONDecodeError as exc:
            if not chunk:
                raise _error(str(exc)) from None
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
