"""The house has honest layers: CLI -> experiments -> pipeline -> library -> core. A module imports only
modules of its own layer or of a lower one, never a higher one, not even inside a function; and no
modules import each other in a circle. Read from the source (every ``import`` statement, module level
or not, parsed with ``ast``), so the test is fast and sees lazy imports too.

:data:`LAYERS` maps module prefixes to layers (the longest matching prefix wins); regrouping the
folders is an edit of that table."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: root folders installed as retrieval.<name> (setup.cfg's package_dir)
LINKED = {"features": ROOT / "features", "rerank": ROOT / "rerank"}

CORE, LIBRARY, PIPELINE, EXPERIMENTS, CLI = 1, 2, 3, 4, 5
LAYER_NAMES = {CORE: "core", LIBRARY: "library", PIPELINE: "pipeline", EXPERIMENTS: "experiments", CLI: "cli"}
#: (module prefix, layer); the longest prefix that matches a module decides its layer
LAYERS: List[Tuple[str, int]] = [
    # the command line: the one place that parses arguments
    ("retrieval.cli", CLI),
    # experiments: the kinds `retrieval run` knows, composed of the steps; the measurements behind
    # `retrieval bench`
    ("retrieval.experiments", EXPERIMENTS),
    ("retrieval.bench", EXPERIMENTS),
    # the pipeline: one step a module (main(conf, ...) -> Path), and the server over its files
    ("retrieval.steps", PIPELINE),
    ("retrieval.serve", PIPELINE),
    # core: configuration, files, images, paths, reports, vectors, checks, extras; imports nothing above it
    ("retrieval.core", CORE),
    # the library: everything else (features, rerank, datasets, indexing, evaluation, training, scale ...)
    ("retrieval", LIBRARY),
]


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
    assert "retrieval.experiments.ladder.run" in MODULES


def layer_of(module: str) -> int:
    matches = [(len(prefix), layer) for prefix, layer in LAYERS if module == prefix or module.startswith(prefix + ".")]
    if not matches:
        raise KeyError(f"{module}: no layer in LAYERS")
    return max(matches)[1]


def upward_imports(modules: Dict[str, Path]) -> List[str]:
    """``"a (layer) imports b (higher layer)"`` for every import of a higher layer, lazy ones included."""
    known = set(modules) | set(MODULES)
    bad = []
    for name, path in sorted(modules.items()):
        for target in sorted(_imports(name, path, known, top_level_only=False)):
            if layer_of(target) > layer_of(name):
                bad.append(f"{name} ({LAYER_NAMES[layer_of(name)]}) imports {target} "
                           f"({LAYER_NAMES[layer_of(target)]})")
    return bad


def test_every_module_has_a_layer():
    assert {layer_of(m) for m in MODULES} == set(LAYER_NAMES)
    assert layer_of("retrieval.cli.run_command") == CLI and layer_of("retrieval.experiments.chain") == EXPERIMENTS
    assert layer_of("retrieval.steps.search") == PIPELINE and layer_of("retrieval.features.sift") == LIBRARY
    assert layer_of("retrieval.core.checks") == CORE


def test_no_module_imports_a_higher_layer():
    bad = upward_imports(MODULES)
    assert not bad, "imports of a higher layer:\n" + "\n".join(bad)


def test_no_import_hides_in_a_string():
    # a "module:function" registry (the command groups, the protocols, a child process' target) is an
    # import that static analysis cannot see: every edge is an import statement instead
    hidden = []
    for name, path in sorted(MODULES.items()):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                    "import_module", "__import__"):
                hidden.append(f"{name}:{node.lineno}")
    assert not hidden, f"imports by name: {hidden}"


def test_the_layer_rule_sees_an_upward_import_inside_a_function(tmp_path):
    # the step modules used to import the command line for their own command: a violation
    step = tmp_path / "step.py"
    step.write_text("def handle(args):\n    from ..cli import emit_json\n")
    core = tmp_path / "core.py"
    core.write_text("from ..datasets import open\n")
    found = upward_imports({"retrieval.steps.toy": step, "retrieval.config_toy": core})
    assert found == ["retrieval.steps.toy (pipeline) imports retrieval.cli (cli)"]
    found = upward_imports({"retrieval.core.paths": core})
    assert found == ["retrieval.core.paths (core) imports retrieval.datasets.open (library)"]


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


def test_setup_cfg_lists_every_package():
    """setup.cfg lists the packages (package_dir maps features/ and rerank/ into retrieval): a package
    missing from the list would be missing from every install."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = {p.strip() for p in cfg["options"]["packages"].split() if p.strip()}
    found = {name for name, path in _modules().items() if path.name == "__init__.py"}
    assert listed == found, f"setup.cfg lacks {sorted(found - listed)}, lists absent {sorted(listed - found)}"
    assert "retrieval.features = features" in cfg["options"]["package_dir"]
    links = [p for folder in ("retrieval", "features", "rerank") for p in (ROOT / folder).rglob("*") if p.is_symlink()]
    assert not links, f"symbolic links in the package: {links}"

