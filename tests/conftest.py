"""Shared fixtures: the real default model (pulled once into the models directory) and engines on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import os
import tempfile

import pytest
from hypothesis import settings

# CI replays the same examples every run (a submission must not pass or fail by luck); local runs
# keep exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# the lab autosaves on exit: keep the tests' sessions out of the user's data directory
os.environ.setdefault("TOKENLAB_DATA", tempfile.mkdtemp(prefix="tokenlab-test-data-"))

from tokenlab.engine import Engine, EngineOptions
from tokenlab.engine.models import DEFAULT_MODEL, resolve_model


@pytest.fixture(scope="session")
def model_path() -> Path:
    """Path of the default GGUF (SmolLM2-135M-Instruct Q4_1), pulled on first use."""
    return resolve_model(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def engine(model_path: Path) -> Iterator[Engine]:
    """One real llama.cpp engine shared by the tests that only read from it."""
    loaded = Engine(model_path, EngineOptions(n_ctx=1024))
    yield loaded
    loaded.close()


@pytest.fixture
def fresh_engine(model_path: Path) -> Iterator[Engine]:
    """A real engine of its own, for tests that count decoded tokens from zero."""
    loaded = Engine(model_path, EngineOptions(n_ctx=512))
    yield loaded
    loaded.close()
