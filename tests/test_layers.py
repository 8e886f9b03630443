"""The house has honest layers: low modules (features/, rerank/ and retrieval's fileio, datasets,
config ...) never import the orchestration (retrieval.bench, cli, steps, training, serve, ladder),
not even inside a function, and no modules import each other in a circle. Read from the source
(every ``import`` statement, module level or not), so the test is fast and sees lazy imports too."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Set

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: folders installed as retrieval.<name> through symbolic links
LINKED = {"features": ROOT / "features", "rerank": ROOT / "rerank"}
LOW = ("retrieval.features", "retrieval.rerank")
ORCHESTRATION = ("retrieval.bench", "retrieval.cli", "retrieval.steps", "retrieval.training", "retrieval.serve",
                 "retrieval.ladder", "retrieval.protocols")


def _modules() -> Dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "retrieval").rglob("*.py")):
        rel = path.relative_to(ROOT / "retrieval")
        if rel.parts[0] in LINKED:          # the links: read them once, from the real folders
            continue
        out[_name("retrieval", rel)] = path
    for short, folder in LINKED.items():
        for path in sorted(folder.rglob("*.py")):
            out[_name(f"retrieval.{short}", path.relative_to(folder))] = path
    return out


def _name(prefix: str, rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([prefix, *parts])


def _imports(name: str, path: Path, known: Set[str], top_level_only: bool) -> Set[str]:
    """The project modules ``name`` imports (a ``from package import submodule`` counts as that
    submodule)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:   # module level, including under if / try at module level
        nodes = [n for stmt in tree.body for n in ast.walk(stmt)
                 if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                       for alias in node.names]
        else:
            continue
        for t in targets:
            for short in LINKED:       # features.x written without the prefix
                if t == short or t.startswith(short + "."):
                    t = "retrieval." + t
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


MODULES = _modules()


def test_every_module_is_found():
    assert "retrieval.features.efficientnet" in MODULES and "retrieval.rerank.fusion" in MODULES
    assert "retrieval.ladder.run" in MODULES


@pytest.mark.parametrize("name", [m for m in MODULES if m.startswith(LOW)])
def test_low_modules_never_import_the_orchestration(name):
    bad = sorted(t for t in _imports(name, MODULES[name], set(MODULES), top_level_only=False)
                 if t.startswith(ORCHESTRATION))
    assert not bad, f"{name} imports {bad}"


def _package(module: str) -> str:
    path = MODULES[module]
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _cycle_graph() -> Dict[str, Set[str]]:
    """Module-level imports, plus function-level ones that cross packages: a lazy import between two
    modules of one package (a sibling helper read on demand) is an idiom, a lazy import that closes a
    circle between packages ties the layers together (features.efficientnet <-> retrieval.training
    was one)."""
    graph = {}
    for m, p in MODULES.items():
        eager = _imports(m, p, set(MODULES), top_level_only=True)
        lazy = _imports(m, p, set(MODULES), top_level_only=False) - eager
        graph[m] = eager | {t for t in lazy if _package(t) != _package(m)}
    return graph


def test_no_import_cycle():
    graph = _cycle_graph()
    state: Dict[str, int] = {}
    stack = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_detector_sees_a_cycle_and_a_lazy_upward_import(tmp_path):
    a = tmp_path / "a.py"
    a.write_text("def f():\n    from retrieval.training import loop\n")
    known = set(MODULES) | {"retrieval.features.a"}
    assert "retrieval.training.loop" in _imports("retrieval.features.a", a, known, top_level_only=False)
    assert "retrieval.training.loop" not in _imports("retrieval.features.a", a, known, top_level_only=True)
