"""tunnel_cli's modules import each other in one direction only (no cycle, lazy imports included) and none reaches
for another module's private names: the shape issue 12 asked for, kept by a test."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tunnel_cli"


def imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        name = path.stem
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "tunnel_cli":
                    targets |= {alias.name for alias in node.names}
                elif node.module.startswith("tunnel_cli."):
                    targets.add(node.module.split(".")[1])
                    private = [a.name for a in node.names if a.name.startswith("_")]
                    assert not private, f"{name} imports private {private} from {node.module}"
        graph[name] = targets - {name}
    return graph


def test_no_import_cycles_in_tunnel_cli() -> None:
    graph = imports()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == 2:
            return
        assert state.get(node) != 1, f"import cycle: {' -> '.join([*trail, node])}"
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            visit(target, [*trail, node])
        state[node] = 2

    for module in sorted(graph):
        visit(module, [])
    entry_points = {"cli", "entry"}  # entry: the console scripts' signal-safe front door (tunnel_cli.entry)
    assert "cli" not in set().union(*(graph[m] for m in graph if m not in entry_points)), "only entry points import cli"


def test_modules_stay_small() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert max(sizes.values()) <= 600, sizes
