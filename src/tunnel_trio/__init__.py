"""tunnel_trio: the trio runtime adapter for tunnel_core (wait readable, drain, feed, flush once, one timer).

Public: ``run_manual_client(opts)`` / ``run_manual_server(opts)`` (blocking, call ``trio.run``) and
``TrioRunner(console).run(flow)`` for programs already running trio. Imports are lazy so ``import tunnel_trio``
stays cheap.
"""

from __future__ import annotations

__all__ = ["Console", "TrioRunner", "run_manual_client", "run_manual_server"]


def __getattr__(name: str) -> object:  # lazy: ``python -m tunnel_<runtime>.cli`` must start fast
    if name in ("Console", "TrioRunner"):
        from tunnel_trio import runner

        return getattr(runner, name)
    if name in ("run_manual_client", "run_manual_server"):
        from tunnel_trio import manual

        return getattr(manual, name)
    raise AttributeError(name)
