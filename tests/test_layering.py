"""The import graph: data flows one way (corpus/lang < tokenizer < model < train < eval/serve/export <
arms < run_report < pipeline < cli), eval, serve and export do not import each other, and no module imports itself back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "langadapt"
# Stage-free helpers any stage may use.
SHARED = {"errors", "options", "outputs", "sources", "commands", "__init__"}
LAYERS = {"lang": 1, "corpus": 2, "tokenizer": 3, "model": 4, "train": 5, "eval": 6, "serve": 6, "export": 6,
          "arms": 7, "run_report": 8, "run_memory": 8, "pipeline": 9, "demo": 10, "cli": 11}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """langadapt modules imported anywhere in the file (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("langadapt"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("langadapt"))
    modules = {_module(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in modules}


GRAPH = {_module(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _stage(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_upward_or_sideways_imports(module):
    stage = _stage(module)
    if stage in SHARED:  # the shared helpers use only each other
        assert {_stage(m) for m in GRAPH[module]} <= SHARED, f"{module} imports {GRAPH[module]}"
        return
    for imported in GRAPH[module]:
        other = _stage(imported)
        if other in SHARED or other == stage:
            continue
        assert LAYERS[other] < LAYERS[stage], f"{module} ({stage}) imports {imported} ({other}): upward or sideways"


def test_no_import_cycles():
    seen, stack = set(), []

    def visit(module):
        if module in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(module):] + [module]))
        if module in seen:
            return
        stack.append(module)
        for imported in GRAPH.get(module, ()):
            if imported != module and imported in GRAPH and not module.startswith(imported + "."):
                visit(imported)
        stack.pop()
        seen.add(module)

    for module in sorted(GRAPH):
        visit(module)
