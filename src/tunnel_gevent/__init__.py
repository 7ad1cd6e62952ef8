"""tunnel_gevent: the gevent runtime adapter for tunnel_core (wait readable, drain, feed, flush once, one timer).

Public: ``run_manual_client(opts)`` / ``run_manual_server(opts)`` (block the calling greenlet) and
``GeventRunner(console).run(flow)`` for programs that already run greenlets. No monkey-patching happens here.
Imports are lazy so ``import tunnel_gevent`` stays cheap.
"""

from __future__ import annotations

__all__ = ["Console", "GeventRunner", "run_manual_client", "run_manual_server"]


def __getattr__(name: str) -> object:  # lazy: ``python -m tunnel_<runtime>.cli`` must start fast
    if name in ("Console", "GeventRunner"):
        from tunnel_gevent import runner

        return getattr(runner, name)
    if name in ("run_manual_client", "run_manual_server"):
        from tunnel_gevent import manual

        return getattr(manual, name)
    raise AttributeError(name)
