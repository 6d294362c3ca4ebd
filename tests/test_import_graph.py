"""Issue 20: no import circle among the report's modules or the model-loading modules.

The graph is read from the source (``ast``), module-level and function-level imports alike, so a
circle hidden behind a lazy import inside a function is caught too. ``from A import b`` depends
on the module ``A.b`` where there is one, else on ``A``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import gradguide

SRC = Path(gradguide.__file__).resolve().parent.parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "gradguide").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.append(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def _cycle(graph: dict[str, set[str]], members: set[str]) -> list[str] | None:
    """One import circle through ``members`` only (None when there is none)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node] & members):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(members):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_no_import_circle_in_report_or_models() -> None:
    modules = _modules()
    graph = _graph(modules)
    report = {m for m in modules if m == "gradguide.report" or m.startswith("gradguide.report.")}
    assert len(report) > 20
    assert _cycle(graph, report) is None
    models = {m for m in modules if m in ("gradguide.models", "gradguide.model_registry")}
    models |= {m for m in modules if m.startswith("gradguide.model_")}
    assert len(models) >= 7
    assert _cycle(graph, models) is None


def test_report_sections_do_not_import_the_assembler() -> None:
    graph = _graph(_modules())
    importers = {m for m, deps in graph.items() if "gradguide.report.build" in deps}
    assert importers <= {"gradguide.report", "gradguide.report.cli"}


def test_the_cycle_finder_finds_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph, set(graph)) == ["a", "b", "c", "a"]
    assert _cycle(graph, {"a", "b", "d"}) is None
