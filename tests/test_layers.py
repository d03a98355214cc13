"""The layering rules, read from the source: every import at any depth (inside functions too) counts.

sampling → engine → lab → presentation (render, export) → tui and the CLI: each layer imports only the
layers below it. The walk reads every module under src/tokenlab, follows project imports transitively
(a lab module that imports a helper that imports textual breaks the rule as much as a direct import),
and resolves relative imports. The tests at the end also check what a fresh interpreter really loads.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

UI = ("textual", "textual_serve", "tokenlab.tui", "tokenlab.cli", "tokenlab.commands", "tokenlab.serve")
"""The user interfaces: the lab's Textual app, the command line and the lab server."""
PRESENTATION = ("rich", "tokenlab.render", "tokenlab.export")
"""Where tables, heat colours and export formats live; only the interfaces use it."""

RULES: dict[str, tuple[str, ...]] = {
    "tokenlab.sampling": ("llama_cpp", "tokenlab.engine", "tokenlab.lab", *PRESENTATION, *UI),
    "tokenlab.engine": ("tokenlab.lab", *PRESENTATION, *UI),
    "tokenlab.lab": (*PRESENTATION, *UI),
    "tokenlab.render": UI,
    "tokenlab.export": UI,
    "tokenlab.tui": ("tokenlab.cli", "tokenlab.commands"),
}
"""Layer (a module or package) -> what none of its modules may reach, directly or through other modules."""


def module_names(root: Path) -> dict[str, Path]:
    """Every module under root/tokenlab by dotted name (a package by its own name, for its __init__)."""
    modules = {}
    for path in sorted((root / "tokenlab").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_in(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every module name `source` imports anywhere (top level, functions, classes, try and if blocks).

    `from a import b` yields both `a` and `a.b`, since b may be a submodule; relative imports are
    resolved against `module` (a package resolves `.` to itself).
    """
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the names it imports, for every module of the project under root."""
    modules = module_names(root)
    return {
        name: imports_in(path.read_text(encoding="utf-8"), name, is_package=path.name == "__init__.py")
        for name, path in modules.items()
    }


def _loaded_by(name: str, graph: Mapping[str, set[str]]) -> list[str]:
    """The project modules that importing `name` runs: it (if it is one) and every package above it."""
    parts = name.split(".")
    return [prefix for prefix in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if prefix in graph]


def reached(start: str, graph: Mapping[str, set[str]]) -> dict[str, list[str]]:
    """Every name that importing `start` may import, each with one chain of modules that leads to it."""
    chains: dict[str, list[str]] = {start: [start]}
    queue = deque([start])
    while queue:
        module = queue.popleft()
        for name in graph.get(module, ()):
            for loaded in [name, *_loaded_by(name, graph)]:
                if loaded not in chains:
                    chains[loaded] = [*chains[module], loaded]
                    if loaded in graph:
                        queue.append(loaded)
    return chains


def _within(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def violations(graph: Mapping[str, set[str]], rules: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Each broken rule as 'chain of modules' lines; empty when every layer keeps to its rules."""
    found = []
    for layer, forbidden in rules.items():
        for module in sorted(name for name in graph if _within(name, [layer])):
            chains = reached(module, graph)
            for prefix in forbidden:
                # the shortest name first: `textual` rather than `textual.app` as well
                hits = sorted(name for name in chains if _within(name, [prefix]) and not _within(name, [layer]))
                if hits:
                    found.append(f"{layer} must not import {hits[0]}: {' -> '.join(chains[hits[0]])}")
    return found


# -- the walker itself, on made-up modules ---------------------------------------------------------


def test_imports_in_sees_imports_at_any_depth_and_relative_forms() -> None:
    source = '''
import os, json as j
from a.b import c
from . import sibling
from .deep import thing
from .. import uncle
from ..other.mod import name
try:
    import optional_dep
except ImportError:
    pass
def f():
    import textual
class C:
    def m(self):
        if True:
            from textual.app import App
        return lambda: __import__("not_an_import_statement")
'''
    names = imports_in(source, "tokenlab.lab.controller")
    assert {"os", "json", "a.b", "a.b.c", "optional_dep", "textual", "textual.app"} <= names
    assert {"tokenlab.lab.sibling", "tokenlab.lab.deep", "tokenlab.lab.deep.thing", "tokenlab.uncle",
            "tokenlab.other.mod", "tokenlab.other.mod.name"} <= names
    assert "not_an_import_statement" not in names
    # in a package's __init__, "." is the package itself
    assert imports_in("from . import stages", "tokenlab.sampling", is_package=True) == {
        "tokenlab.sampling", "tokenlab.sampling.stages"}


def test_violations_follow_lazy_imports_through_other_modules() -> None:
    lazy_textual = imports_in("def save():\n    from textual.app import App\n", "tokenlab.util")
    graph = {
        "tokenlab": set(),
        "tokenlab.lab": set(),
        "tokenlab.lab.controller": imports_in("def run():\n    from ..util import helper\n", "tokenlab.lab.controller"),
        "tokenlab.util": lazy_textual,
        "tokenlab.tui": {"tokenlab.lab.controller"},
    }
    rules = {"tokenlab.lab": ("textual",), "tokenlab.tui": ("tokenlab.cli",)}
    found = violations(graph, rules)
    assert found == ["tokenlab.lab must not import textual.app: tokenlab.lab.controller -> tokenlab.util -> textual.app"]
    graph["tokenlab.util"] = set()
    assert violations(graph, rules) == []


# -- the project -----------------------------------------------------------------------------------


def test_the_walk_covers_the_project() -> None:
    graph = import_graph(SRC)
    assert {"tokenlab.cli", "tokenlab.render", "tokenlab.export", "tokenlab.lab.controller"} <= set(graph)
    for layer in RULES:  # a renamed layer must not leave its rule checking nothing
        assert any(_within(name, [layer]) for name in graph), layer


def test_every_layer_keeps_to_its_rules() -> None:
    assert violations(import_graph(SRC), RULES) == []


def test_sampling_imports_only_numpy_and_the_standard_library() -> None:
    graph = import_graph(SRC)
    outside = set()
    for module in (name for name in graph if _within(name, ["tokenlab.sampling"])):
        for name in reached(module, graph):
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top != "numpy" and name != "tokenlab" \
                    and not _within(name, ["tokenlab.sampling", "__future__"]):
                outside.add(name)
    assert outside == set()


# -- what a fresh interpreter loads (third-party packages included) ---------------------------------


def imported_after(module: str) -> set[str]:
    """Top-level packages in sys.modules after importing `module` in a fresh interpreter."""
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("module", ["tokenlab.sampling", "tokenlab.engine", "tokenlab.lab", "tokenlab.lab.controller"])
def test_core_layers_do_not_import_textual(module: str) -> None:
    modules = imported_after(module)
    assert not {name for name in modules if name == "textual" or name.startswith("textual.")}
    assert "tokenlab.tui" not in modules


def test_sampling_imports_only_numpy() -> None:
    modules = imported_after("tokenlab.sampling")
    assert "llama_cpp" not in modules
    project = {name for name in modules if name.startswith("tokenlab.")}
    assert project and all(name.startswith("tokenlab.sampling") for name in project)


def test_engine_does_not_import_lab_or_tui() -> None:
    modules = imported_after("tokenlab.engine")
    assert not {name for name in modules if name.startswith(("tokenlab.lab", "tokenlab.tui"))}
