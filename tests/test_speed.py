"""The lab's slow-speed hint and the OpenMP wait defaults set before llama.cpp loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tokenlab.engine import llama as engine_llama
from tokenlab.lab.speed import SLOW_RATIO, SpeedWatch, slow_hint


def test_a_steady_speed_raises_no_hint() -> None:
    watch = SpeedWatch(threads=2, cores=2)
    for _ in range(10):
        assert watch.update(10, 0.1) is None


def test_a_collapse_is_named_with_a_fix_and_clears_when_the_speed_returns() -> None:
    watch = SpeedWatch(threads=2, cores=2)
    for _ in range(4):
        watch.update(10, 0.1)  # 100 tok/s
    hints = [watch.update(1, 0.1) for _ in range(4)]  # 10 tok/s: well below a third
    assert hints[-1] is not None and hints[-1].startswith("slow: ") and "--threads 1" in hints[-1]
    for _ in range(6):
        watch.update(10, 0.1)
    assert watch.hint is None


def test_a_dip_above_the_threshold_is_not_a_collapse() -> None:
    watch = SpeedWatch(threads=2, cores=2)
    for _ in range(4):
        watch.update(10, 0.1)
    for _ in range(6):
        assert watch.update(6, 0.1) is None  # 60 % of the best
    assert SLOW_RATIO < 0.6


def test_a_nearly_free_step_after_a_pause_does_not_set_the_best_speed() -> None:
    # with the decode overlapped, the first step after a pause finds its token decoded already: a batch
    # of that one step alone would look like 500 tok/s and make every later batch look collapsed
    watch = SpeedWatch(threads=1, cores=2)
    for _ in range(4):
        watch.update(10, 0.25)  # 40 tok/s
    watch.update(1, 0.002)
    for _ in range(6):
        assert watch.update(10, 0.25) is None
    assert watch.best < 60


def test_empty_batches_change_nothing() -> None:
    watch = SpeedWatch(threads=1, cores=2)
    assert watch.update(0, 0.1) is None and watch.update(5, 0.0) is None and watch.batches == 0


def test_one_thread_hint_does_not_suggest_threads() -> None:
    hint = slow_hint(threads=1, cores=2, crowded=True)
    assert "another process" in hint and "--threads" not in hint
    assert "another process" not in slow_hint(threads=4, cores=4, crowded=False)


def test_openmp_defaults_only_where_the_user_set_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(name, raising=False)
    engine_llama.use_openmp_defaults()
    for name, value in engine_llama.OPENMP_DEFAULTS.items():
        assert os.environ[name] == value
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    engine_llama.use_openmp_defaults()
    assert "GOMP_SPINCOUNT" not in os.environ and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_defaults_are_in_place_before_llama_cpp_loads() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = ("import os, tokenlab.engine, llama_cpp; "
            "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    expected = engine_llama.OPENMP_DEFAULTS
    assert out.stdout.split() == [expected.get("GOMP_SPINCOUNT", "None"), expected.get("OMP_WAIT_POLICY", "None")]
