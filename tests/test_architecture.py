"""The layer table of docs/architecture.md, enforced from the imports.

Every module of ``calib`` and ``mosaic`` is parsed (``ast``; imports inside functions count as
much as those at the top) and placed in a layer by the table below, which must say the same as
the table in docs/architecture.md. A module may import its own layer and the layers below it;
there is no import cycle between modules, and no function-local import of the project's own
modules (such an import hides the structure and usually dodges a cycle).

Run as a script (``python tests/test_architecture.py``) it prints the figures the tests hold at
zero: function-local project imports, modules in cycles, imports that climb a layer.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"

#: Lowest first: (layer, module names or packages). A module belongs to the longest name that
#: covers it (``mosaic.render`` covers ``mosaic.render.warp``).
LAYERS = [
    ("calib", ["calib"]),
    ("runtime", ["mosaic.runtime"]),
    ("formats", ["mosaic.formats"]),
    ("render", ["mosaic.render", "mosaic.synth"]),
    ("pipeline", ["mosaic.pipeline"]),
    ("terrain", ["mosaic.terrain"]),
    ("products", ["mosaic.products"]),
    ("commands", ["mosaic", "mosaic.__main__", "mosaic.cli", "mosaic.stitch", "mosaic.batch", "mosaic.info",
                  "mosaic.evaluate", "mosaic.view", "mosaic.plan", "mosaic.terrain.command", "mosaic.synth.cli"]),
]
RANK = {name: k for k, (name, _) in enumerate(LAYERS)}


def modules() -> dict[str, Path]:
    """Module name -> file, for every module of the project's packages."""
    out = {}
    for pkg in ("calib", "mosaic"):
        for p in sorted((ROOT / pkg).rglob("*.py")):
            parts = p.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = p
    return out


def layer_of(name: str) -> str:
    best, layer = -1, None
    for lname, prefixes in LAYERS:
        for pre in prefixes:
            if (name == pre or name.startswith(pre + ".")) and len(pre) > best:
                best, layer = len(pre), lname
    return layer


def imports(mods: dict[str, Path]) -> list[tuple[str, str, bool, int]]:
    """(importer, imported module, inside a function, line) for each project import."""
    found = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        local = set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                local.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
            else:
                continue
            for t in targets:
                # ``import a.b.c`` names a module; a name imported from a module is that module.
                while t and t not in mods and "." in t:
                    t = t.rpartition(".")[0]
                if t in mods and t != name:
                    found.append((name, t, id(node) in local, node.lineno))
    return found


def cycles(edges) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    graph = {}
    for a, b, *_ in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                comps.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def upward(edges) -> list[tuple[str, str]]:
    return [(a, b) for a, b, *_ in edges if RANK[layer_of(b)] > RANK[layer_of(a)]]


def test_every_module_has_a_layer():
    assert [m for m in modules() if layer_of(m) is None] == []


def test_no_import_climbs_a_layer():
    ups = upward(imports(modules()))
    assert ups == [], "imports from a lower layer to a higher one: " + ", ".join(f"{a} -> {b}" for a, b in ups)


def test_no_import_cycle():
    assert cycles(imports(modules())) == []


def test_no_function_local_import_of_the_project():
    local = [f"{a}:{line} -> {b}" for a, b, inside, line in imports(modules()) if inside]
    assert local == [], "function-local imports of the project's modules: " + ", ".join(local)


def test_each_folder_is_a_layer_and_the_top_holds_only_commands():
    """The tree shows the flow: every module directly in mosaic/ is a command, every other one
    lives in its layer's folder (mosaic/runtime, formats, pipeline, products, render, ...)."""
    top = [m for m, p in modules().items() if p.parent == ROOT / "mosaic" and p.name != "__init__.py"]
    assert [m for m in top if layer_of(m) != "commands"] == []
    for layer, prefixes in LAYERS:
        if layer not in ("calib", "commands"):
            assert all((ROOT / Path(*pre.split("."))).is_dir() for pre in prefixes), layer


def test_documented_old_paths_are_the_same_modules_and_the_project_does_not_use_them():
    import importlib

    import mosaic

    for old, new in mosaic._DOCUMENTED_PATHS.items():
        assert importlib.import_module(old) is importlib.import_module(new)
    assert mosaic.config.StitchConfig is importlib.import_module("mosaic.runtime.config").StitchConfig
    used = [f"{a}:{line} -> {b}" for a, b, _, line in imports(modules())
            if any(b == old or b.startswith(old + ".") for old in mosaic._DOCUMENTED_PATHS)]
    assert used == [], "the project imports a documented old path instead of its home: " + ", ".join(used)


def test_the_table_is_the_documented_one():
    """docs/architecture.md's table lists the same layers, in the same order, with the same names."""
    rows = re.findall(r"^\| *\*\*(\w+)\*\* *\|([^|]*)\|", DOC.read_text(), re.M)
    doc = [(layer, sorted(re.findall(r"`([\w.]+)`", cell))) for layer, cell in rows]
    assert doc == [(layer, sorted(names)) for layer, names in LAYERS]


def closure(edges, start: str) -> set[str]:
    """Every module ``start`` imports, directly or not."""
    graph = {}
    for a, b, *_ in edges:
        graph.setdefault(a, set()).add(b)
    seen, todo = set(), [start]
    while todo:
        for b in graph.get(todo.pop(), ()):
            if b not in seen:
                seen.add(b)
                todo.append(b)
    return seen


def test_the_render_key_hashes_every_module_the_render_runs():
    """A fix anywhere the render runs (blending, warping, photometry, the COG writer, the camera
    models) renders again: the render's cache key hashes all of it."""
    from mosaic.stitch import RENDER_CODE

    ran = closure(imports(modules()), "mosaic.render.panorama") | {"mosaic.render.panorama"}
    assert "mosaic.render.blend" in ran and "calib.models" in ran
    uncovered = sorted(m for m in ran if not any(m == c or m.startswith(c + ".") for c in RENDER_CODE))
    assert uncovered == []


def test_a_change_to_the_blending_changes_the_render_key(monkeypatch):
    from mosaic.pipeline.stages import code_key
    from mosaic.stitch import RENDER_CODE

    before = code_key(*RENDER_CODE)
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: real(self) + (b"\n" if self.name == "blend.py" else b""))
    assert code_key(*RENDER_CODE) != before


def test_the_docstring_examples_run():
    """``pytest --doctest-modules calib mosaic``, inside the suite: every module's examples."""
    import doctest
    import importlib

    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    examples = 0
    for name in modules():
        if name.endswith("__main__"):  # runs the CLI on import
            continue
        for t in finder.find(importlib.import_module(name)):
            examples += len(t.examples)
            runner.run(t)
    assert examples > 0
    assert runner.summarize(verbose=False).failed == 0


def test_the_checks_can_fail():
    """The cycle and layer checks see a cycle and a climbing import when there is one."""
    edges = [("mosaic.runtime.atomic", "mosaic.stitch", False, 1), ("mosaic.stitch", "mosaic.runtime.atomic", False, 1)]
    assert cycles(edges) == [["mosaic.runtime.atomic", "mosaic.stitch"]]
    assert upward(edges) == [("mosaic.runtime.atomic", "mosaic.stitch")]


if __name__ == "__main__":
    edges = imports(modules())
    local = [e for e in edges if e[2]]
    comps = cycles(edges)
    ups = upward(edges)
    print(f"modules: {len(modules())}; project imports: {len(edges)}; function-local: {len(local)} "
          f"(in {len({e[0] for e in local})} modules)")
    print(f"cycles: {len(comps)} ({sum(len(c) for c in comps)} modules): {comps}")
    print(f"upward imports: {len(ups)}: " + ", ".join(f"{a} -> {b}" for a, b in ups))
