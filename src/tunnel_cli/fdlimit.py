"""Raise the open-files soft limit to what the hard limit allows, for the tunnel program only.

Why: every forwarded TCP connection costs a socket on each side and every UDP peer one on the server; a tunnel may
carry 1024 streams at once (``tunnel_core.quic.connection.MAX_CONCURRENT_STREAMS``), more than the common soft
limit of 1024 descriptors. Raising the soft limit needs no privilege. Done by the command line and not by the
library: a program that embeds a runtime owns its own process limits.
"""

from __future__ import annotations

#: Never ask for more than this, even when the hard limit is unlimited.
CEILING = 65536


def raise_open_files_limit() -> int | None:
    """Soft limit after the attempt (None where the platform has no such limit); failures change nothing."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = CEILING if hard == resource.RLIM_INFINITY else min(hard, CEILING)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        return None
