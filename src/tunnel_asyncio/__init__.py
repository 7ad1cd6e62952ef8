"""tunnel_asyncio: tunnel_io on asyncio. Public: ``AsyncioRunner(console).run(dialogue)``,
``run_manual_client/server(opts)``, ``run_nostr_client/server(opts)`` (docs/embedding.md); everything loads lazily
so ``import tunnel_asyncio`` is cheap."""


def __getattr__(name: str) -> object:
    if name.startswith("_") or name in ("cli", "manual", "nostr", "reactor", "runner"):
        raise AttributeError(name)  # submodules are found by the import system, never through the runner
    import importlib

    return getattr(importlib.import_module("tunnel_asyncio.runner"), name)
