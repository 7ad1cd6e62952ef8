"""A `tunnel` CLI process for the nostr tests, with its stderr collected line by line as it arrives (the nostr
commands print progress there; the tests wait for those lines instead of sleeping)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence


class Proc:
    """One `tunnel` process; stderr collected line by line (stdout unused by the nostr commands)."""

    def __init__(self, argv: list[str], *, wrapper: Sequence[str] = (), env: Mapping[str, str] | None = None) -> None:
        """``wrapper``: an argv prefix (e.g. a private /etc/hosts); ``env``: extra environment variables."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        main = "import sys; from tunnel_asyncio.cli import main; sys.exit(main())"
        self.proc = subprocess.Popen([*wrapper, sys.executable, "-c", main, *argv], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, needle: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if needle in line:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"{needle!r} not seen:\n{self.text}")

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)
