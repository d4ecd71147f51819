"""The package's shape (docs/architecture.md): imports flow downwards, no cycles,
no hidden imports between modules, small modules.

The import graph is read from the source (every ``import`` and ``from ... import``
statement, at module level or inside functions), so an import hidden in a function
counts like any other.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

PACKAGE = Path(__file__).resolve().parents[1] / "ntkscale"

#: Imports allowed inside functions: optional dependencies (absent from a plain install),
#: and the heavy required ones (about 0.5-1 s each) that ``import ntkscale`` and
#: ``ntkscale --help`` must not pay for. Never an ntkscale module.
OPTIONAL = ("cupy", "cupyx", "dask_jobqueue", "dask_kubernetes", "dask_cuda", "numba.cuda",
            "bokeh", "kubernetes", "kubernetes_validate", "array_api_strict", "mlxtend", "fsspec", "s3fs")
HEAVY = ("dask", "distributed", "zarr", "matplotlib")

#: Which top-level areas each area may import (besides itself). Mirrors the map in
#: docs/architecture.md: cli -> stages -> {gram, store, cluster, solvers, predict, costs}
#: -> stax -> {backend, errors, choices}; config is read by stages and cli.
BASE = {"errors", "choices", "backend"}
ALLOWED: Dict[str, Set[str]] = {
    "errors": set(),
    "choices": set(),
    "backend": {"errors"},
    "stax": BASE,
    "data": BASE,
    "targets": BASE,
    "config": BASE | {"stax"},
    "solvers": BASE,
    "store": BASE | {"stax", "data"},
    "gram": BASE | {"stax", "data", "store"},
    "cluster": BASE | {"config"},
    "predict": BASE | {"stax", "solvers", "targets", "store"},
    "costs": BASE | {"stax", "gram", "store"},
    "report": BASE | {"solvers"},
    "estimator": BASE | {"stax", "solvers", "targets", "predict"},
    "stages": BASE | {"__init__", "stax", "data", "targets", "config", "gram", "store", "cluster", "solvers",
                      "predict", "costs", "report"},
    "cli": BASE | {"__init__", "stax", "data", "targets", "config", "gram", "store", "cluster", "solvers",
                   "predict", "costs", "report", "stages"},
    "__init__": BASE | {"stax"},
}
MAX_LINES = 450


def _modules() -> Dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    parts = module.split(".")
    if not is_package:
        parts = parts[:-1]
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts + (name.split(".") if name else []))


def _imports(module: str, path: Path) -> List[Tuple[str, bool, int]]:
    """``(imported module, inside a function, line)`` for every import statement."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: List[Tuple[str, bool, int]] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, local, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = (_resolve(module, is_package, child.level, child.module) if child.level
                        else child.module or "")
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    found.append((sub if sub in MODULES else base, local, child.lineno))
            visit(child, inner)

    visit(tree, False)
    return found


def _graph() -> Dict[str, Set[str]]:
    graph: Dict[str, Set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, _, _ in _imports(module, path):
            if target.split(".")[0] == "ntkscale" and target in MODULES and target != module:
                graph[module].add(target)
    return graph


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_cycle() -> None:
    graph = _graph()
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    cycles: List[List[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            strongconnect(v)
    assert not cycles, f"import cycles: {cycles}"


def test_imports_flow_downwards() -> None:
    wrong = []
    for module, targets in _graph().items():
        area = _area(module)
        allowed = ALLOWED.get(area)
        assert allowed is not None, f"{module}: area {area!r} is not in the map; add it to ALLOWED and docs"
        for target in targets:
            t_area = _area(target)
            if t_area != area and t_area not in allowed:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layer map:\n" + "\n".join(sorted(wrong))


def test_local_imports_only_for_optional_dependencies() -> None:
    hidden = []
    for module, path in MODULES.items():
        for target, local, line in _imports(module, path):
            root = target.split(".")[0]
            if local and (root == "ntkscale" or not target.startswith(OPTIONAL + HEAVY)):
                hidden.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not hidden, "imports inside functions (only optional dependencies may be):\n" + "\n".join(hidden)


def test_modules_are_small() -> None:
    big = {str(p.relative_to(PACKAGE.parent)): n for p in MODULES.values()
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_error_classes_live_in_errors_module() -> None:
    stray = []
    for module, path in MODULES.items():
        if module == "ntkscale.errors":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and (node.name.endswith(("Error", "Warning"))):
                stray.append(f"{module}.{node.name}")
    assert not stray, f"error/warning classes outside ntkscale/errors.py: {stray}"


def test_every_module_imports() -> None:
    """Every module imports in a fresh interpreter, in sorted order (the cycle test above
    checks the order does not matter)."""
    names = [m for m in sorted(MODULES) if not m.endswith("__main__")]
    script = ("import importlib, sys\n"
              f"for name in {names!r}:\n"
              "    try:\n"
              "        importlib.import_module(name)\n"
              "    except ModuleNotFoundError as exc:\n"
              "        if exc.name.split('.')[0] not in ('cupy', 'cupyx'):\n"
              "            raise\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr[-3000:]
