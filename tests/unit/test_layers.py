"""The package layers (docs/layers.md): every import inside megatron_tulu points down or sideways
within its own package, never up, and no two packages import each other, however indirectly.

Every module is read with ``ast``, so the check sees all imports: module-level ones, lazy ones inside
functions, ``if TYPE_CHECKING:`` ones, ``import x`` and ``from x import y``, relative ones resolved.
Nothing is imported, so the test is cheap and needs neither torch nor megatron-core.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

PACKAGE = "megatron_tulu"

# Bottom to top. A unit may import itself and any unit of a lower layer; units sharing a layer may
# not import each other (they are independent helpers). A unit is a subpackage of megatron_tulu or
# one of its top-level modules; the top-level kernels/ directory is installed as megatron_tulu.kernels.
LAYERS: list[set[str]] = [
    {"__init__", "errors", "dtypes", "jsonl"},  # stdlib-level helpers every layer may use
    {"kernels"},  # torch (and Triton) kernels: imported by losses, models and rollout
    {"losses"},
    {"config"},
    {"engine"},
    {"rewards"},
    {"data"},
    {"models"},
    {"rollout"},
    {"evaluation"},
    {"algorithms"},
    {"commands"},
    {"cli"},
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}

# source roots: (directory, dotted name it is importable as)
ROOTS = [(REPO / PACKAGE, PACKAGE), (REPO / "kernels", f"{PACKAGE}.kernels")]


def _module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (packages by their __init__)."""
    modules: dict[str, Path] = {}
    for root, dotted in ROOTS:
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([dotted, *parts])] = path
    return modules


def _unit(module: str) -> str:
    """The layer unit a dotted name inside the package belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, imported module) for every import of the package's own modules in one file."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                # `from pkg import mod` imports the submodule pkg.mod when there is one
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if sub in modules else target))
    ours = [(line, mod) for line, mod in found if mod == PACKAGE or mod.startswith(PACKAGE + ".")]
    return list(dict.fromkeys(ours))  # `from m import a, b` is one edge


def _edges() -> list[tuple[str, int, str, str]]:
    """(file, line, importer module, imported module) for every import between two units."""
    modules = _module_files()
    edges = []
    for name, path in modules.items():
        for line, target in _imports(name, path, modules):
            if _unit(name) != _unit(target):
                edges.append((str(path.relative_to(REPO)), line, name, target))
    return edges


def _fmt(edge: tuple[str, int, str, str]) -> str:
    file, line, src, dst = edge
    return f"{file}:{line} {src} -> {dst}"


def test_every_unit_has_a_layer():
    units = {_unit(name) for name in _module_files()}
    assert units <= RANK.keys(), (
        f"place these in LAYERS (tests/unit/test_layers.py): {sorted(units - RANK.keys())}"
    )


def test_no_import_points_up_or_sideways():
    bad = [e for e in _edges() if RANK.get(_unit(e[3]), -1) >= RANK.get(_unit(e[2]), -1)]
    assert not bad, "imports against the layer order (docs/layers.md):\n" + "\n".join(map(_fmt, bad))


def test_no_cycle_between_packages():
    edges = _edges()
    graph: dict[str, set[str]] = {}
    for _, _, src, dst in edges:
        graph.setdefault(_unit(src), set()).add(_unit(dst))
    # Tarjan's strongly connected components; any component of two or more units is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    report = []
    for component in cycles:
        report.append(f"cycle between {sorted(component)}:")
        report += ["  " + _fmt(e) for e in edges if _unit(e[2]) in component and _unit(e[3]) in component]
    assert not cycles, "\n".join(report)
