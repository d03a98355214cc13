"""Hostile and broken inputs, run through the real CLI: each gets one line on stderr and a non-zero exit.

The table is a contract a future change must keep: a bad flag, file, session, preset, template or
output is one clear line (no traceback) with exit code 2 (1 when the disk or the output fails).
Cases that need no model come first and must fail before one is loaded.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gguf_helpers import with_metadata_string

PROMPT = "The capital of France is"


@dataclass(frozen=True)
class Case:
    """One probe: the arguments (with {tmp} for a prepared folder), standard input, and what must come back."""

    id: str
    args: tuple[str, ...]
    message: str
    code: int = 2
    stdin: bytes = b""
    stdout_path: str | None = None
    """Send standard output to this file (a full disk: /dev/full)."""
    absent: tuple[str, ...] = field(default=())
    """Text the line must not contain (e.g. an underscore flag name, a misleading cause)."""


def tokenlab(args: list[str], *, stdin: bytes = b"", stdout_path: str | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """The real CLI in a subprocess, detached from any terminal (as under a pipe or a service)."""
    stdout = open(stdout_path, "wb") if stdout_path else subprocess.PIPE  # noqa: SIM115
    try:
        return subprocess.run(
            [sys.executable, "-m", "tokenlab", *args], input=stdin, stdout=stdout, stderr=subprocess.PIPE,
            timeout=120, start_new_session=True,
            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})},
        )
    finally:
        if stdout_path:
            stdout.close()


def check(result: subprocess.CompletedProcess[bytes], case: Case) -> None:
    stderr = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert result.returncode == case.code, (result.returncode, stderr)
    assert case.message in lines[0], lines[0]
    for text in case.absent:
        assert text not in lines[0], lines[0]


# -- a session file and broken copies of it ---------------------------------------------------------


def good_session() -> dict:
    """A small valid session (one run of two steps), as the lab saves it."""
    from tokenlab.lab.session import Session, dumps
    from tokenlab.lab.step import Candidate, Step

    session = Session(prompt="Hi", seed=3)
    steps = [
        Step(index, token, f"t{token}", f"t{token}", 1.0, 0.5, 0.6, 1, 2.0, 1.5,
             (Candidate(token, f"t{token}", 1.0, 0.5, 0.6, None), Candidate(9, "x", 0.5, 0.2, 0.0, "top_k")))
        for index, token in enumerate((5, 7))
    ]
    session.tree.add(steps)
    session.current = (5, 7)
    return json.loads(dumps(session))


def broken(change: Callable[[dict], None]) -> str:
    data = copy.deepcopy(good_session())
    change(data)
    return json.dumps(data)


SESSIONS = {
    "seed-1e400": broken(lambda d: d.__setitem__("seed", "SEED")).replace('"SEED"', "1e400"),
    "row-of-one": broken(lambda d: d["tree"][0]["step"]["top"].__setitem__(0, [1])),
    "prob-text": broken(lambda d: d["tree"][1]["step"]["top"][1].__setitem__(3, "x")),
    "text-number": broken(lambda d: d["tree"][0]["step"].__setitem__("text", 123)),
    "chosen-prob": broken(lambda d: d["tree"][0]["step"].__setitem__("prob", "x")),
    "negative-runs": broken(lambda d: d.__setitem__("runs", -1)),
}


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    """A folder with the files the probes name: sessions, a directory, an empty file, presets."""
    for name, text in SESSIONS.items():
        (tmp_path / f"{name}.json").write_text(text, encoding="utf-8")
    (tmp_path / "good.json").write_text(json.dumps(good_session()), encoding="utf-8")
    (tmp_path / "dir").mkdir()
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "presets.toml").write_text("x = " + "[" * 5000 + "]" * 5000, encoding="utf-8")
    (tmp_path / "file").write_text("not a directory", encoding="utf-8")
    return tmp_path


NO_MODEL = [
    Case("top-n-huge", ("inspect", PROMPT, "--top-n", str(10**22)), "--top-n must be in 1..1,000"),
    Case("threads-2^31", ("generate", "Hi", "--threads", str(2**31)), "--threads must be in 1..1,024"),
    Case("ctx-size-2^31", ("generate", "Hi", "--ctx-size", str(2**31)), "--ctx-size must be in 16..1,048,576",
         absent=("ctx_size",)),
    Case("ctx-size-small", ("generate", "Hi", "-c", "8"), "--ctx-size must be in 16", absent=("ctx_size",)),
    Case("gpu-layers", ("generate", "Hi", "--gpu-layers", "-5"), "--gpu-layers must be -1", absent=("gpu_layers",)),
    Case("rollouts-n-huge", ("rollouts", "Hi", "-n", "99999999999", "-L", "1"), "-n/--count must be in 1..100,000"),
    Case("rollouts-length", ("rollouts", "Hi", "-L", "5000", "-c", "512"), "--length must be in 1..512"),
    Case("model-empty", ("generate", "Hi", "-m", ""), "--model is empty", absent=("GGUF",)),
    Case("score-model-empty", ("score", "{tmp}/good.json", "-m", ""), "--model is empty"),
    Case("samplers-empty", ("generate", "Hi", "--samplers", ""), "--samplers is empty"),
    Case("mirostat-not-listed", ("generate", "Hi", "--samplers", "top_k,temperature", "--mirostat", "2"),
         "lacks mirostat_v2"),
    Case("ban-phrase-empty", ("generate", "Hi", "--ban-phrase", ""), "--ban-phrase is empty"),
    Case("guidance-inf", ("generate", "Hi", "--guidance-scale", "inf"), "guidance_scale must be in (-inf, inf) (a finite"),
    Case("guidance-nan", ("inspect", "Hi", "--guidance-scale", "nan"), "guidance_scale must be"),
    Case("guidance-remote", ("generate", "Hi", "--guidance-scale", "2", "--engine", "http://127.0.0.1:9"),
         "--guidance-scale needs a local model"),
    Case("rollouts-guidance", ("rollouts", "Hi", "--guidance-scale", "2"), "rollouts sample without guidance"),
    Case("rollouts-ban-phrase", ("rollouts", "Hi", "--ban-phrase", "x"), "rollouts sample without guidance"),
    Case("stdin-not-utf8", ("generate", "-"), "standard input is not UTF-8", stdin=b"caf\xe9 \xff"),
    Case("score-stdin-not-utf8", ("score", "-"), "standard input is not UTF-8", stdin=b"\xe9"),
    Case("score-dir", ("score", "{tmp}/dir"), "is a directory", absent=("not found",)),
    Case("score-dev-null", ("score", "/dev/null"), "/dev/null is empty", absent=("not found",)),
    Case("score-unreadable", ("score", "/proc/self/mem"), "cannot read /proc/self/mem"),
    Case("lab-stdin-no-terminal", ("lab", "-"), "the lab needs a keyboard", stdin=b"Once upon a time"),
    Case("preset-deep-nesting", ("generate", "Hi", "--preset", "mine"), "nests too deeply"),
    Case("models-path-empty", ("models", "path", ""), "empty"),
    Case("models-list-full-disk", ("models", "list"), "No space left on device", code=1, stdout_path="/dev/full"),
    Case("export-full-disk", ("export", "{tmp}/good.json"), "No space left on device", code=1,
         stdout_path="/dev/full"),
    Case("export-to-dir", ("export", "{tmp}/good.json", "-o", "{tmp}/dir"), "is a directory"),
    Case("export-unwritable", ("export", "{tmp}/good.json", "-o", "{tmp}/file/page.html"), "cannot write"),
    *[Case(f"export-{name}", ("export", f"{{tmp}}/{name}.json"), "is damaged") for name in SESSIONS],
    *[Case(f"lab-load-{name}", ("lab", "--load", f"{{tmp}}/{name}.json"), "is damaged") for name in SESSIONS],
]


@pytest.mark.parametrize("case", NO_MODEL, ids=[case.id for case in NO_MODEL])
def test_bad_input_fails_in_one_line_before_loading_a_model(case: Case, tmp: Path, tmp_path: Path) -> None:
    args = [arg.replace("{tmp}", str(tmp)) for arg in case.args]
    # no model directory at all: a case that tried to load (or pull) one would fail differently
    env = {"TOKENLAB_MODELS": str(tmp_path / "no-models"), "TOKENLAB_CONFIG": str(tmp / "config"),
           "TOKENLAB_DATA": str(tmp_path / "data")}
    check(tokenlab(args, stdin=case.stdin, stdout_path=case.stdout_path, env=env), case)
    assert not (tmp_path / "no-models").exists()


def test_damaged_sessions_name_the_field(tmp: Path) -> None:
    lines = {name: tokenlab(["export", str(tmp / f"{name}.json")]).stderr.decode() for name in ("seed-1e400", "prob-text")}
    assert '"seed": expected an integer' in lines["seed-1e400"]
    assert '"tree[1].step.top[1].prob": expected a number, got "x"' in lines["prob-text"]


# -- cases that need the model --------------------------------------------------------------------


TEMPLATES = {
    "syntax": ("{% if %}", "syntax error"),
    "undefined": ("{{ foo.bar }}", "UndefinedError"),
    "security": ("{{ ().__class__.__bases__ }}", "SecurityError"),
    "memory": ("{{ 'x' * 2000000000 }}", "too large"),
    "nested-loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                     "ran longer than"),
}


@pytest.fixture(scope="module")
def hostile_models(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Copies of the default model whose chat template is hostile."""
    folder = tmp_path_factory.mktemp("hostile-models")
    return {
        name: with_metadata_string(model_path, folder / f"{name}.gguf", "tokenizer.chat_template", template)
        for name, (template, _) in TEMPLATES.items()
    }


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_a_hostile_chat_template_is_one_line_naming_it_and_raw(name: str, hostile_models: dict[str, Path]) -> None:
    case = Case(name, (), TEMPLATES[name][1])
    result = tokenlab(["generate", "Hi", "-n", "2", "-m", str(hostile_models[name])])
    check(result, case)
    line = result.stderr.decode()
    assert "chat template" in line and "--raw" in line
    # the way out works
    raw = tokenlab(["generate", "Hi", "-n", "2", "--seed", "1", "--raw", "-m", str(hostile_models[name])])
    assert raw.returncode == 0, raw.stderr.decode()


WITH_MODEL = [
    Case("generate-full-disk", ("generate", "Hi", "-n", "2", "--seed", "1"), "No space left on device", code=1,
         stdout_path="/dev/full"),
    Case("inspect-full-disk", ("inspect", PROMPT), "No space left on device", code=1, stdout_path="/dev/full"),
    Case("logit-bias-negative-id", ("generate", "Hi", "--logit-bias", "#-1=1"), "outside the vocabulary",
         absent=("tokens",)),
    Case("ban-negative-id", ("generate", "Hi", "--ban", "#-7"), "outside the vocabulary"),
]


@pytest.mark.parametrize("case", WITH_MODEL, ids=[case.id for case in WITH_MODEL])
def test_bad_input_with_the_model(case: Case, model_path: Path) -> None:
    check(tokenlab(list(case.args), stdin=case.stdin, stdout_path=case.stdout_path), case)


def test_truncated_model_file_is_refused(model_path: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.gguf"
    with open(model_path, "rb") as source:
        truncated.write_bytes(source.read(model_path.stat().st_size - 1_000_000))
    check(tokenlab(["models", "path", str(truncated)]), Case("truncated", (), "damaged GGUF file"))


def test_the_lab_blames_a_broken_template_not_the_model(hostile_models: dict[str, Path]) -> None:
    from tokenlab.engine import Engine, EngineOptions
    from tokenlab.lab.controller import EngineReady, LabController, LabFailed, LabSettings

    events: list[object] = []
    controller = LabController(lambda: Engine(hostile_models["syntax"], EngineOptions(n_ctx=256)),
                               LabSettings(prompt="Hi", max_tokens=2), emit=events.append)
    controller.serve(should_stop=lambda: any(isinstance(event, LabFailed) for event in events))
    failures = [event.message for event in events if isinstance(event, LabFailed)]
    assert any(isinstance(event, EngineReady) for event in events)
    assert len(failures) == 1 and "chat template" in failures[0] and "ctrl+t" in failures[0]
    assert "no model" not in failures[0]
    controller.engine.close()
