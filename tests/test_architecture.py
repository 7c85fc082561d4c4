"""The package's dependencies run one way: cli -> loop -> strategies -> distillation ->
{evaluate, checkpoint, runtime, layout, data, ops}. Checked on the source (every import,
deferred ones inside functions included), so a new cycle fails here, not at a user's import."""
from __future__ import annotations

import ast
import os
from typing import Dict, List, Set

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "l2kd")


def _modules() -> Dict[str, str]:
    out = {}
    for d, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(d, f)
    return out


def _resolve(name: str, modules: Dict[str, str]) -> str:
    while name not in modules:
        name = name.rsplit(".", 1)[0]
    return name


def import_graph() -> Dict[str, Set[str]]:
    """module -> the l2kd modules it imports (and the packages those live in, whose
    ``__init__`` runs first), for every import statement anywhere in the file."""
    modules = _modules()
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.endswith("__init__.py") else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(open(path).read(), path)):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                if t == "l2kd" or not t.startswith("l2kd."):
                    continue
                t = _resolve(t, modules)
                while t != "l2kd":  # importing l2kd.a.b runs l2kd.a's __init__ too (the root facade aside)
                    if t != mod and not mod.startswith(t + "."):
                        graph[mod].add(t)
                    t = t.rsplit(".", 1)[0]
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as a list of modules (first repeated at the end), or []."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(m: str) -> List[str]:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return []

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return []


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


ENTRY_POINTS = {"l2kd", "l2kd.train", "l2kd.test", "l2kd.report", "l2kd.demo", "l2kd.pretrain"}


def _in(mod: str, layer: str) -> bool:
    return mod == layer or mod.startswith(layer + ".")


@pytest.mark.parametrize("lower, higher", [
    ("l2kd.strategies", "l2kd.loop"), ("l2kd.distillation", "l2kd.strategies"), ("l2kd.distillation", "l2kd.loop"),
    ("l2kd.evaluate", "l2kd.distillation"), ("l2kd.evaluate", "l2kd.strategies"), ("l2kd.evaluate", "l2kd.loop"),
    ("l2kd.checkpoint", "l2kd.loop"), ("l2kd.runtime", "l2kd.loop"), ("l2kd.layout", "l2kd.loop"),
    ("l2kd.data", "l2kd.loop"), ("l2kd.ops", "l2kd.strategies"), ("l2kd.loop", "l2kd.cli"),
    ("l2kd.strategies", "l2kd.cli"), ("l2kd.evaluate", "l2kd.cli"),
    ("l2kd.diagnostics", "l2kd.strategies"), ("l2kd.diagnostics", "l2kd.loop"), ("l2kd.diagnostics", "l2kd.cli"),
    ("l2kd.pretraining", "l2kd.loop"), ("l2kd.pretraining", "l2kd.strategies"), ("l2kd.pretraining", "l2kd.cli"),
])
def test_layers_do_not_import_upwards(lower, higher):
    graph = import_graph()
    bad = sorted(f"{m} -> {n}" for m, deps in graph.items() if _in(m, lower) for n in deps if _in(n, higher))
    assert not bad, f"{lower} must not import {higher}: " + ", ".join(bad)


def test_only_the_command_lines_import_the_loop():
    graph = import_graph()
    users = sorted(m for m, deps in graph.items() if "l2kd.loop" in deps and not _in(m, "l2kd.loop"))
    assert [m for m in users if not _in(m, "l2kd.cli") and m not in ENTRY_POINTS] == []
    assert "l2kd.cli.train" in users  # the graph does see the imports
