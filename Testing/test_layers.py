"""The backend's imports follow its layers, have no cycles, and sit at the top of each file.

Layer order (a module may import its own layer's lower modules and any lower layer, never a
higher one; ``cnn`` and ``vlm`` are siblings and do not import each other)::

    fileio, resources, argtypes, distributed -> data -> geometry -> metrics -> cnn | vlm
      -> runlayout, slicer_files -> report -> pipeline -> cli

The subcommand modules (``<package>/commands.py``, ``vlm/finetune_commands.py``) are the command
line's own: they sit in the ``cli`` layer, wherever their file is.

Imports of the project's own modules inside functions hide cycles, so they are refused too
(heavy third-party packages such as torch, monai and transformers stay lazy).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "GliomaCompareLib"

#: first path component below the package -> layer number.
LAYERS = {
    "__init__": 0,
    "fileio": 0,
    "resources": 0,
    "argtypes": 0,
    "distributed": 0,
    "versions": 0,
    "history": 0,
    "data": 1,
    "geometry": 2,
    "masks": 2,
    "metrics": 3,
    "cnn": 4,
    "vlm": 4,
    "runlayout": 5,
    "slicer_files": 5,
    "report": 6,
    "pipeline": 7,
    "cli": 8,
    "__main__": 8,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest module name of the package that ``name`` starts with."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported module, line, at top level) for each import of the package's own modules."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    top_level = {id(node) for node in tree.body}
    for node in tree.body:  # imports under `if TYPE_CHECKING:` / try at module level count as top
        if isinstance(node, ast.If | ast.Try):
            top_level.update(id(n) for n in ast.walk(node))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" for a in node.names]
        for name in names:
            if not name.startswith(PACKAGE):
                continue
            target = _resolve(name, modules)
            if target and target != me:
                out.append((target, node.lineno, id(node) in top_level))
    return out


def _layer(module: str) -> int:
    parts = module.split(".")
    if parts[-1].endswith("commands"):
        return LAYERS["cli"]
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_graph() -> dict[str, list[tuple[str, int, bool]]]:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, list[tuple[str, int, bool]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w, _, _ in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def upward_imports(graph) -> list[str]:
    out = []
    for module, imports in sorted(graph.items()):
        for target, line, _ in imports:
            if _top(module) == "__init__" and module == PACKAGE:
                continue  # the package root may re-export anything
            siblings = _layer(target) == _layer(module) == LAYERS["cnn"]
            if _layer(target) > _layer(module) or (siblings and _top(target) != _top(module)):
                out.append(f"{module}:{line} imports {target}")
    return out


def inner_imports(graph) -> list[str]:
    return [
        f"{module}:{line} imports {target} inside a function"
        for module, imports in sorted(graph.items())
        for target, line, top in imports
        if not top
    ]


def test_every_module_has_a_layer():
    unknown = sorted({_top(m) for m in _modules()} - set(LAYERS))
    assert not unknown, f"modules outside the layer table: {unknown}"


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_upward_imports():
    bad = upward_imports(import_graph())
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_own_imports_at_the_top():
    bad = inner_imports(import_graph())
    assert not bad, f"{len(bad)} imports of the package inside functions:\n" + "\n".join(bad)


def test_no_function_over_100_lines():
    long = []
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > 100:
                    long.append(
                        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)"
                    )
    assert not long, "functions over 100 lines:\n" + "\n".join(long)


def test_cycle_finder_finds_a_cycle():
    graph = {"a": [("b", 1, True)], "b": [("c", 1, False)], "c": [("a", 1, True)], "d": []}
    assert find_cycles(graph) == [["a", "b", "c"]]


if __name__ == "__main__":  # python Testing/test_layers.py: print every finding
    g = import_graph()
    for c in find_cycles(g):
        print("cycle:", " <-> ".join(c))
    for line in upward_imports(g):
        print("upward:", line)
    for line in inner_imports(g):
        print("inner:", line)
    pytest.main([__file__, "-q"])
