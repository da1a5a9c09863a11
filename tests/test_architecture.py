"""The package's layout rules, checked on its source (no import is executed).

- Layers: each top-level part of the package has a rank; a module imports only from parts of
  lower rank (or from its own part). Imports inside functions and under ``TYPE_CHECKING``
  count like any other.
- No import cycles between modules, all imports counted.
- No source file over 500 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "napari_latentseg"
NAME = "napari_latentseg"

#: Rank of each top-level part: arrows point down only (to a lower rank).
RANKS = {
    "__init__": 0,  # version only
    "runtime": 0,  # progress protocol, stop, device, threads, errors, atomic writes
    "io": 1,  # medical formats and geometry
    "models": 1,  # network configurations, model files, the head's file format
    "data": 2,  # the synthetic phantom (written with io)
    "engine": 2,  # training, inference, features, segmentation
    "pipeline": 3,  # volume-level jobs shared by the CLI, batch, demo and dock
    "recovery": 3,  # autosaved annotations per scan (files only, no Qt)
    "demo": 4,
    "batch": 4,
    "cli": 5,
    "_napari": 5,
}
MAX_LINES = 500


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Package-internal modules ``name`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # "from pkg import sub" imports the submodule when there is one.
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t.startswith(NAME) and t != name:
                out.add(t)
    return out


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def test_every_part_has_a_rank(graph):
    parts = {_part(m) for m in graph}
    assert parts <= set(RANKS), f"parts without a rank in RANKS: {sorted(parts - set(RANKS))}"


def test_imports_point_down_only(graph):
    bad = []
    for mod, deps in graph.items():
        for dep in deps:
            a, b = _part(mod), _part(dep)
            if a != b and RANKS[b] >= RANKS[a]:
                bad.append(f"{mod} -> {dep}")
    assert not bad, "imports that do not point down:\n" + "\n".join(sorted(bad))


def test_no_import_cycles(graph):
    # Tarjan's strongly connected components: any component of two or more is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_core_never_imports_napari_or_qt():
    core = [p for p in PKG.rglob("*.py") if _part(_module_name(p)) != "_napari"]
    bad = []
    for p in core:
        for node in ast.walk(ast.parse(p.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            bad += [f"{p.relative_to(PKG)}: {n}" for n in names
                    if n.split(".")[0] in ("napari", "qtpy", "PyQt6", "PyQt5", "superqt",
                                           "magicgui")]
    assert not bad, bad


def test_no_source_file_over_500_lines():
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_rules_catch_a_violation(tmp_path):
    # The checker itself: an upward import and a cycle in a made-up package are found.
    known = {f"{NAME}.io.a", f"{NAME}.engine.b"}
    f = tmp_path / "a.py"
    f.write_text("def f():\n    from ..engine.b import x\n")
    assert _imports(f"{NAME}.io.a", f, known) == {f"{NAME}.engine.b"}
    f.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                 "    from ..engine import b\n")
    assert _imports(f"{NAME}.io.a", f, known) == {f"{NAME}.engine.b"}
