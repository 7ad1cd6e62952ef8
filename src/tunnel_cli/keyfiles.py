"""Writing secret key files, once for every key tool (iroh secret keys, E4 auth keys, Nostr nsec files).

Secrets must never sit on disk readable by others, even for a moment: the file is created with mode 0600 by
os.open (not chmod'ed afterwards), and an existing file overwritten with --force is set back to 0600 too, because
O_CREAT keeps an existing file's mode.
"""

from __future__ import annotations

import os

from tunnel_cli import config as cfg
from tunnel_core.options import ExitCode, TunnelError


def write_secret_file(output: str, text: str, *, force: bool) -> None:
    """Write ``text`` to ``output`` (``~/`` expanded, parent directories created) with mode 0600.

    Refusing to overwrite without --force is a usage error (exit 2) with upstream's wording; an OS failure is a
    general error (exit 1) naming the path.
    """
    path = cfg.expand_path(output)
    if path.exists() and not force:
        raise TunnelError(f"File already exists: {output}. Use --force to overwrite.", ExitCode.USAGE)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(path, 0o600)
    except OSError as exc:
        raise TunnelError(f"Failed to write {output}: {exc.strerror or exc}", ExitCode.GENERAL) from None


def check_secret_file_mode(path: str) -> None:
    """Warn when a secret file (key, nsec, password, token) can be read or written by other users.

    OpenSSH refuses such private keys; upstream tunnel-rs reads them silently. We warn instead of refusing, so a
    drop-in replacement starts wherever upstream starts, but the operator hears about it once per start.
    """
    import stat

    from tunnel_cli import output

    try:
        info = cfg.expand_path(path).stat()
    except OSError:
        return  # the reader reports a missing or unreadable file in its own words
    if not stat.S_ISREG(info.st_mode):
        return
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        output.warn(f"{path} is accessible by other users (mode {mode:04o}); protect it with: chmod 600 {path}")
