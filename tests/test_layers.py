"""The layering rule: the core is reachable without the TUI, and the sampler without the engine."""

from __future__ import annotations

import subprocess
import sys

import pytest


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
