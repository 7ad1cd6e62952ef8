"""The embedding API is the same on the three runtimes (docs/embedding.md): the same names in each runtime
package, the same runner constructor and methods, the old names kept as aliases."""

from __future__ import annotations

import importlib
import inspect

import pytest

RUNTIMES = {"asyncio": "AsyncioRunner", "trio": "TrioRunner", "gevent": "GeventRunner"}
PUBLIC = ("Console", "NostrRunner", "run_dialogue", "run_nostr_dialogue", "run_manual_client", "run_manual_server",
          "run_nostr_client", "run_nostr_server")


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_every_runtime_offers_the_same_names(runtime: str) -> None:
    package = importlib.import_module(f"tunnel_{runtime}")
    runner = importlib.import_module(f"tunnel_{runtime}.runner")
    cls = getattr(package, RUNTIMES[runtime])
    assert cls is runner.NostrRunner  # one runner for manual and nostr flows; the old name is an alias
    for name in PUBLIC:
        assert getattr(package, name) is getattr(runner, name), name
    # The old module paths still work.
    assert importlib.import_module(f"tunnel_{runtime}.manual").run_manual_client is runner.run_manual_client
    assert importlib.import_module(f"tunnel_{runtime}.nostr").run_nostr_server is runner.run_nostr_server


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_the_runner_has_one_shape(runtime: str) -> None:
    cls = getattr(importlib.import_module(f"tunnel_{runtime}"), RUNTIMES[runtime])
    init = inspect.signature(cls.__init__)
    assert list(init.parameters) == ["self", "console", "handle_signals"]
    assert init.parameters["handle_signals"].kind is inspect.Parameter.KEYWORD_ONLY
    assert init.parameters["handle_signals"].default is True
    assert "dialogue" in inspect.signature(cls.run).parameters
    assert cls.run_nostr is cls.run
    assert callable(cls.stop)
    runner = cls(handle_signals=False)  # no running loop needed to build one (asyncio's old runner did)
    runner.stop()  # a stop before run() is kept: run() then ends at once, orderly
