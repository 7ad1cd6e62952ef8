"""Old home of the blocking manual-mode entry points (kept for embedders): they live in tunnel_trio.runner."""

from tunnel_trio.runner import Console, run_manual_client, run_manual_server  # noqa: F401
