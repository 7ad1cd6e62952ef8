"""The core must stay sans-IO: no I/O modules, no clocks, no global randomness (issue 2, "Must show")."""

from __future__ import annotations

import ast
import pathlib

CORE = pathlib.Path(__file__).resolve().parents[1] / "src" / "tunnel_core"
FORBIDDEN_MODULES = {
    "socket", "asyncio", "trio", "gevent", "threading", "selectors", "select", "subprocess", "ssl",
    "anyio", "iroh", "random", "secrets", "signal", "multiprocessing", "concurrent",
}
FORBIDDEN_CALLS = {
    ("time", "time"), ("time", "monotonic"), ("time", "perf_counter"), ("time", "sleep"),
    ("time", "time_ns"), ("time", "monotonic_ns"), ("os", "urandom"), ("os", "getrandom"),
    ("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"),
}


def _offences(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FORBIDDEN_MODULES:
                    found.append(f"{path.name}:{node.lineno} imports {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in FORBIDDEN_MODULES:
                found.append(f"{path.name}:{node.lineno} imports from {node.module}")
            if node.module == "time" or node.module == "os":
                for alias in node.names:
                    if (node.module, alias.name) in FORBIDDEN_CALLS:
                        found.append(f"{path.name}:{node.lineno} imports {node.module}.{alias.name}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in FORBIDDEN_CALLS:
                found.append(f"{path.name}:{node.lineno} uses {node.value.id}.{node.attr}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            if (node.value.attr, node.attr) in FORBIDDEN_CALLS:
                found.append(f"{path.name}:{node.lineno} uses {node.value.attr}.{node.attr}")
    return found


def test_core_has_modules_to_check() -> None:
    assert len(list(CORE.rglob("*.py"))) >= 3


def test_core_never_does_io_or_reads_clocks_or_randomness() -> None:
    offences = [o for p in sorted(CORE.rglob("*.py")) for o in _offences(p)]
    assert offences == []


def test_checker_catches_offences(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import socket\nimport time\nfrom os import urandom\nt = time.monotonic()\n"
                   "import datetime\nd = datetime.datetime.now()\n")
    found = _offences(bad)
    assert len(found) == 4, found
