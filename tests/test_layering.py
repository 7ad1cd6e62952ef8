"""The layers of docs/architecture.md, checked mechanically (the guard httpcore gets from ``unasync --check``):

- tunnel_io, the runtime-neutral I/O layer, imports no runtime;
- each runtime adapter (tunnel_asyncio, tunnel_trio, tunnel_gevent) imports only its runtime, the standard library,
  tunnel_io and tunnel_core - never another runtime, iroh or the relay server - and stays at most 400 lines. The one
  exception is ``tunnel_<runtime>.cli``, the runtime's command line entry (``python -m tunnel_trio.cli``), whose only
  job is to call tunnel_cli with its runtime's name.
"""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"
RUNTIME_MODULES = {"asyncio", "trio", "gevent", "greenlet", "uvloop", "anyio", "sniffio"}
ADAPTERS = {"tunnel_asyncio": {"asyncio"}, "tunnel_trio": {"trio"}, "tunnel_gevent": {"gevent"}}
MAX_ADAPTER_LINES = 400


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def test_the_neutral_layer_imports_no_runtime() -> None:
    offences = [f"{path.name}:{line} imports {name}" for path in sorted((SRC / "tunnel_io").rglob("*.py"))
                for line, name in _imports(path) if name in RUNTIME_MODULES]
    assert not offences, offences


@pytest.mark.parametrize("package", sorted(ADAPTERS))
def test_an_adapter_imports_only_its_runtime_the_neutral_layer_and_the_core(package: str) -> None:
    allowed = ADAPTERS[package] | {package, "tunnel_io", "tunnel_core"} | set(sys.stdlib_module_names)
    allowed -= RUNTIME_MODULES - ADAPTERS[package]
    offences = []
    for path in sorted((SRC / package).rglob("*.py")):
        extra = {"tunnel_cli"} if path.name == "cli.py" else set()
        offences += [f"{path.name}:{line} imports {name}" for line, name in _imports(path)
                     if name not in allowed | extra]
    assert not offences, offences


@pytest.mark.parametrize("package", sorted(ADAPTERS))
def test_an_adapter_is_small(package: str) -> None:
    lines = sum(len(path.read_text().splitlines()) for path in (SRC / package).rglob("*.py"))
    assert lines <= MAX_ADAPTER_LINES, f"{package} has {lines} lines"
