"""The import graph of embedtune's modules has no cycles, and its edges point down the layers of
docs/architecture.md (foundations, data, models, evaluation/export/serving, training, experiments,
entry points).

Edges are read from the source with ``ast``: every ``import`` and ``from ... import`` naming an embedtune
module, at any depth (inside functions and ``TYPE_CHECKING`` blocks too), so a cycle hidden behind a
deferred import counts as well. Importing ``a.b`` also runs ``a/__init__.py``; that implicit edge is not
counted, only what the code names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import embedtune

ROOT = Path(embedtune.__file__).resolve().parent


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The embedtune modules that module ``name`` (at ``path``) imports by name."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            submodules = {f"{module}.{a.name}" for a in node.names} & known
            found.update(submodules)
            if module in known and (not submodules or len(submodules) < len(node.names)):
                found.add(module)  # names taken from the module itself, not only its submodules
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imported_modules(name, path, set(files)) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read():
    graph = import_graph()
    assert "embedtune.models.embedder" in graph["embedtune.batching"]
    assert "embedtune.data.examples" in graph["embedtune.data.triplets"]


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_no_module_imports_the_package_root():
    """``embedtune/__init__.py`` imports the layers; a layer importing it back would close a loop."""
    assert [name for name, deps in import_graph().items() if "embedtune" in deps] == []


# docs/architecture.md, "Layers": imports point down this list, never up.
LAYERS = [
    ("foundations", ("embedtune.config", "embedtune.io", "embedtune.provenance", "embedtune.search",
                     "embedtune._version")),
    ("data", ("embedtune.data",)),
    ("models", ("embedtune.models",)),
    ("evaluation, export, serving", ("embedtune.evaluation", "embedtune.export", "embedtune.soup", "embedtune.batching",
                                     "embedtune.serving")),
    ("training", ("embedtune.training",)),
    ("experiments", ("embedtune.experiment", "embedtune.experiment_report")),
    ("entry points", ("embedtune.cli", "embedtune.__main__", "embedtune")),
]


def layer_of(module: str) -> int:
    """Index in LAYERS of the most specific prefix naming ``module`` (the root package only matches itself)."""
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != "embedtune" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), rank)
    if best is None:
        raise AssertionError(f"{module} is in no layer of docs/architecture.md: add it to LAYERS")
    return best[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{name} ({LAYERS[layer_of(name)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})"
        for name, deps in graph.items()
        for dep in deps
        if layer_of(dep) > layer_of(name)
    )


def test_layer_check_finds_an_upward_import():
    graph = {"embedtune.data.sts": {"embedtune.models.embedder"}, "embedtune.models.embedder": {"embedtune.io"}}
    assert upward_imports(graph) == ["embedtune.data.sts (data) imports embedtune.models.embedder (models)"]


def test_every_module_has_a_layer():
    for name in import_graph():
        layer_of(name)


def test_imports_point_down_the_layers():
    assert upward_imports(import_graph()) == []
