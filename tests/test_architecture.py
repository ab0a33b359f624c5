"""Imports run one way. The module lists are derived from the package, so a new module is checked too.

- No import cycle among sdlab's modules, counting every import statement, module-level or inside a
  function (a lazy import is still a dependency).
- The core (every module outside sdlab.widgets and sdlab.plots) never imports the views' libraries.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sdlab"
VIEWS = ("sdlab.widgets", "sdlab.plots")


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the sdlab modules it imports, from every import statement in its source."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(max(node.level - 1, 0)):
                    base = base.rsplit(".", 1)[0]
                base = (base + "." + node.module if node.module else base) if node.level else (node.module or "")
                # "from . import x" names a module when x is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            graph[mod] |= {t for t in targets if t in mods and t != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    assert {"sdlab.generation", "sdlab.sampler_catalog", "sdlab.toy.model"} <= set(graph)
    assert "sdlab.generation" in graph["sdlab.models"]  # Lab.generate imports it inside the method
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_core_imports_no_views():
    core = sorted(m for m in _modules() if not m.startswith(VIEWS))
    assert len(core) > 15 and "sdlab.accuracy" in core
    code = ("import sys\n" + "".join(f"import {m}\n" for m in core) +
            "bad = sorted(m for m in ('ipywidgets', 'matplotlib', 'IPython.display') if m in sys.modules)\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    graph = import_graph()
    assert not any(t.startswith(VIEWS) for m in core for t in graph[m])


def test_noise_schedules_need_no_diffusers():
    code = "import sys, sdlab.noise_schedules as S; S.sigmas('karras', 5); print('diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
