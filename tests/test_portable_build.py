"""The installed llama.cpp runs on every CPU: no AMX code, a self-check that reports crashes, `tokenlab doctor`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import llama_cpp
import pytest

from tokenlab.engine import Engine, EngineOptions
from tokenlab.engine.selfcheck import SIMULATE_ENV, run_decode_check
from tokenlab.engine.system import build_info

ROOT = Path(__file__).resolve().parents[1]
# AMX tile instructions: configuring, loading, zeroing, storing tiles and the tile dot products
AMX_MNEMONICS = ("ldtilecfg", "sttilecfg", "tileloadd", "tilestored", "tilezero", "tilerelease",
                 "tdpbssd", "tdpbsud", "tdpbusd", "tdpbuud", "tdpbf16ps", "tdpfp16ps")


def _cpu_libraries() -> list[Path]:
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    return sorted(lib_dir.glob("libggml-cpu*")) or sorted(lib_dir.glob("libggml*"))


def test_the_build_reports_no_amx() -> None:
    info = build_info()
    assert "CPU" in info.backends
    assert not info.has_amx, f"llama.cpp was built with AMX: {info.text}"


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "amd64"), reason="AMX exists on x86-64 only")
def test_the_cpu_library_holds_no_amx_tile_instructions() -> None:
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils) is needed to inspect the build; it comes with the C++ toolchain"
    libraries = _cpu_libraries()
    assert libraries, "no libggml library found next to llama_cpp"
    for library in libraries:
        listing = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(library)],
                                 capture_output=True, text=True, check=True).stdout
        assert "vfmadd" in listing or "fma" in listing or "mulps" in listing  # a real disassembly
        found = sorted({m for m in AMX_MNEMONICS if f"\t{m} " in listing or f"\t{m}\n" in listing})
        assert not found, f"{library.name} holds AMX tile instructions: {found}"


def test_extra_buffer_types_off_still_decodes_a_batch(model_path: Path) -> None:
    engine = Engine(model_path, EngineOptions(n_ctx=128, extra_buffer_types=False))
    try:
        assert engine.extra_buffer_types is False
        assert engine.llama.model_params.use_extra_bufts is False
        prompt = engine.tokenize("The capital of France is Paris. The capital of Italy is")
        logits = engine.evaluate(prompt)
        assert len(prompt) > 8 and logits.shape == (engine.n_vocab,)
        assert engine.token_text(int(logits.argmax())).strip() == "Rome"
    finally:
        engine.close()
    # the wrapper is gone after the load: the next model gets llama.cpp's defaults again
    assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts is True


def test_engines_keep_extra_buffer_types_on_a_build_without_amx(engine: Engine) -> None:
    assert engine.extra_buffer_types is True
    assert engine.llama.model_params.use_extra_bufts is True


def test_the_decode_check_passes_on_this_build(model_path: Path) -> None:
    result = run_decode_check(model_path)
    assert result.ok, result.detail
    assert "batch" in result.detail and "single tokens" in result.detail and result.signal is None


def test_the_decode_check_reports_a_crash_with_its_signal(model_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SIMULATE_ENV, "SIGILL")
    result = run_decode_check(model_path)
    assert not result.ok and result.signal == "SIGILL"
    assert "SIGILL" in result.detail and "decoding a batch of" in result.detail
    assert "\n" not in result.detail


def _fake_venv(tmp_path: Path) -> Path:
    """A venv directory whose python is this interpreter, with an install record to lose."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    (venv / ".tokenlab-installed").write_text("recorded\n")
    return venv


def test_setup_stops_with_one_line_when_the_build_crashes(tmp_path: Path, model_path: Path) -> None:
    venv = _fake_venv(tmp_path)
    env = {**os.environ, "TOKENLAB_VENV": str(venv), "TOKENLAB_CACHE": str(tmp_path / "cache"),
           SIMULATE_ENV: "SIGILL", "TOKENLAB_MODELS": str(model_path.parent)}
    done = subprocess.run([str(ROOT / "scripts" / "setup"), "--self-check"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors[0].startswith("error: self-check failed: llama.cpp crashed with SIGILL")
    assert "set-up stopped" in errors[1] and "TOKENLAB_CPU" in errors[1]
    assert "Traceback" not in done.stderr
    assert not (venv / ".tokenlab-installed").exists(), "a crashing build must not stay recorded as installed"


def test_setup_self_check_passes_on_this_build(tmp_path: Path, model_path: Path) -> None:
    venv = _fake_venv(tmp_path)
    env = {**os.environ, "TOKENLAB_VENV": str(venv), "TOKENLAB_CACHE": str(tmp_path / "cache"),
           "TOKENLAB_MODELS": str(model_path.parent)}
    env.pop(SIMULATE_ENV, None)
    done = subprocess.run([str(ROOT / "scripts" / "setup"), "--self-check"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "self-check passed" in done.stderr
    assert (venv / ".tokenlab-installed").exists()


def test_doctor_json_has_every_field(model_path: Path) -> None:
    env = {**os.environ, "TOKENLAB_MODELS": str(model_path.parent)}
    done = subprocess.run([sys.executable, "-m", "tokenlab", "doctor", "--format", "json"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) >= {"tokenlab", "python", "platform", "packages", "cpu", "threads", "llama_cpp",
                           "models", "environment", "decode_check", "verdict", "ok"}
    assert set(report["packages"]) >= {"llama-cpp-python", "numpy", "textual"}
    assert report["packages"]["llama-cpp-python"] == "0.3.36"
    assert report["cpu"]["usable_cores"] >= 1 and report["threads"]["default"] >= 1
    llama = report["llama_cpp"]
    assert set(llama) >= {"system_info", "backends", "features", "gpu_offload", "amx_in_build", "ggml_exp_kernel"}
    assert llama["ggml_exp_kernel"] is True  # llama.cpp's vectorised exp serves the raw statistics
    assert "CPU" in llama["backends"] and llama["amx_in_build"] is False
    default = next(row for row in report["models"]["catalogue"] if row["name"] == "smollm2-135m")
    assert default["pulled"] and default["sha256_ok"] is True
    assert report["decode_check"]["ok"] is True
    assert report["ok"] is True and report["verdict"].startswith("ok:")


def test_doctor_names_a_damaged_model_and_exits_non_zero(tmp_path: Path, model_path: Path) -> None:
    damaged = tmp_path / model_path.name
    with open(model_path, "rb") as source, open(damaged, "wb") as target:
        target.write(source.read())
    with open(damaged, "r+b") as target:  # same size, one byte flipped in the middle
        target.seek(damaged.stat().st_size // 2)
        byte = target.read(1)
        target.seek(-1, 1)
        target.write(bytes([byte[0] ^ 0xFF]))
    env = {**os.environ, "TOKENLAB_MODELS": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "tokenlab", "doctor", "--no-check"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("problem:") and "smollm2-135m is damaged" in last


@pytest.mark.skipif(shutil.which("tmux") is None, reason="scripts/test installs tmux; a bare pytest may lack it")
def test_the_smoke_test_says_why_the_lab_died(tmp_path: Path) -> None:
    crashing = tmp_path / "tokenlab"
    crashing.write_text("#!/bin/sh\necho 'decoding a batch of 12 tokens'\nkill -ILL $$\n")
    crashing.chmod(0o755)
    env = {**os.environ, "TOKENLAB_SKIP_SETUP": "1", "TOKENLAB_SMOKE_BIN": str(crashing)}
    done = subprocess.run([str(ROOT / "scripts" / "tui-smoke")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert "the lab died from signal 4 (SIGILL), exit status 132" in done.stderr
    report = done.stderr.split("---- the last lines it printed ----", 1)[1]
    assert "decoding a batch of 12 tokens" in report.split("---- screen ----")[0]
