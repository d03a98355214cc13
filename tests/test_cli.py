"""The tokenlab command line, run as a user runs it (a subprocess) on the real default model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import llama_cpp
import pytest

PROMPT = "The capital of France is"


def tokenlab(*args: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokenlab", *args],
        capture_output=True, text=True, input=input_text, timeout=180,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "120"},
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_generate_jsonl_schema(model_path: Path) -> None:
    result = tokenlab("generate", PROMPT, "--raw", "-n", "6", "--seed", "4", "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    steps, done = lines[:-1], lines[-1]
    assert len(steps) == 6
    for index, step in enumerate(steps):
        assert step["step"] == index
        assert {"id", "text", "prob", "final_prob", "rank", "entropy", "top"} <= step.keys()
        assert 0 < step["prob"] <= 1 and 0 < step["final_prob"] <= 1 and step["rank"] >= 1
        assert len(step["top"]) >= 20
        assert {"id", "text", "prob", "final_prob"} <= step["top"][0].keys()
    assert done["done"] is True and done["stop_reason"] == "max_tokens" and done["tokens"] == 6
    assert done["text"] == "".join(step["text"] for step in steps)
    assert done["tokens_per_second"] > 0 and done["seed"] == 4


def test_generate_text_is_reproducible_with_a_seed(model_path: Path) -> None:
    first = tokenlab("generate", "Once upon a time", "-n", "6", "--seed", "9", "--temperature", "1.1")
    second = tokenlab("generate", "Once upon a time", "-n", "6", "--seed", "9", "--temperature", "1.1")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.strip()
    assert "seed 9" in first.stderr and "stop: max_tokens" in first.stderr


def test_greedy_generate_equals_llama_cpp_python(model_path: Path) -> None:
    result = tokenlab("generate", PROMPT, "--raw", "--temperature", "0", "-n", "32", "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    ours = json.loads(result.stdout.splitlines()[-1])["text"]
    reference = llama_cpp.Llama(model_path=str(model_path), n_ctx=512, verbose=False)
    try:
        theirs = reference.create_completion(PROMPT, max_tokens=32, temperature=0)["choices"][0]["text"]
    finally:
        reference.close()
    assert ours == theirs


def test_inspect_json(model_path: Path) -> None:
    result = tokenlab("inspect", PROMPT, "--raw", "--format", "json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    first = payload["candidates"][0]
    assert first["text"] == " Paris"
    assert {"id", "text", "logit", "prob", "final_prob"} <= first.keys()
    assert payload["entropy"] > 0
    names = [stage["name"] for stage in payload["stages"]]
    assert names[0] == "top_k" and payload["stages"][0]["kept"] == 40
    assert [stage["kept"] for stage in payload["stages"]] == sorted((s["kept"] for s in payload["stages"]), reverse=True)
    assert sum(c["final_prob"] for c in payload["candidates"]) == pytest.approx(1.0, abs=1e-6)


def test_inspect_table_and_logit_bias_and_ban(model_path: Path) -> None:
    table = tokenlab("inspect", PROMPT, "--raw")
    assert table.returncode == 0, table.stderr
    assert "' Paris'" in table.stdout and "removed by" in table.stdout and "bits" in table.stdout

    biased = tokenlab("inspect", PROMPT, "--raw", "--format", "json", "--logit-bias", " Paris=-100", "--ban", " the")
    payload = json.loads(biased.stdout)
    by_text = {c["text"]: c for c in payload["candidates"]}
    # candidates are listed by raw probability: Paris is still first, but the bias took it out
    assert payload["candidates"][0]["text"] == " Paris"
    assert by_text[" Paris"]["final_prob"] == 0.0 and by_text[" Paris"]["removed_by"] is not None
    assert by_text[" the"]["final_prob"] == 0.0 and by_text[" the"]["removed_by"] == "ban"
    assert max(payload["candidates"], key=lambda c: c["final_prob"])["text"] not in (" Paris", " the")

    by_id = tokenlab("inspect", PROMPT, "--raw", "--format", "json", "--logit-bias", "#7042=-100")
    assert json.loads(by_id.stdout)["candidates"][0]["final_prob"] == 0.0


def test_rollouts_command(model_path: Path) -> None:
    result = tokenlab("rollouts", PROMPT, "--raw", "-n", "8", "--length", "2", "--seed", "3", "-f", "jsonl")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    summary = lines[-1]
    assert summary["done"] is True and summary["rollouts"] == 8 and summary["seed"] == 3
    assert sum(line["count"] for line in lines[:-1]) == 8
    again = tokenlab("rollouts", PROMPT, "--raw", "-n", "8", "--length", "2", "--seed", "3", "-f", "jsonl")
    assert again.stdout.splitlines()[:-1] == result.stdout.splitlines()[:-1]  # same seed, same rollouts
    table = tokenlab("rollouts", PROMPT, "--raw", "-n", "8", "--length", "2", "--seed", "3")
    assert table.returncode == 0 and "empirical check" in table.stdout


def test_prompt_from_stdin(model_path: Path) -> None:
    result = tokenlab("inspect", "-", "--raw", "--format", "json", input_text=PROMPT)
    assert json.loads(result.stdout)["candidates"][0]["text"] == " Paris"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["generate", "hi", "--model", "/nonexistent/model.gguf"], ["not found", "/nonexistent/model.gguf"]),
        (["generate", "hi", "--model", "no-such-model"], ["no-such-model", "smollm2-135m"]),
        (["generate", "hi", "--top-p", "1.5"], ["top_p", "1.5"]),
        (["generate", "hi", "--temperature", "-1"], ["temperature", "-1"]),
        (["generate", "hi", "--samplers", "top_k,bogus"], ["bogus"]),
        (["generate", "hi", "--max-tokens", "0"], ["--max-tokens"]),
        (["generate", "   "], ["prompt is empty"]),
        (["generate", "word " * 200, "--ctx-size", "64"], ["context", "--ctx-size"]),
        (["inspect", "hi", "--logit-bias", "Paris"], ["TOKEN=BIAS"]),
        (["inspect", "hi", "--logit-bias", " Paris=lots"], ["not a number"]),
        (["inspect", "hi", "--ban", "#999999"], ["outside the vocabulary"]),
        (["inspect", "hi", "--ban", "a whole sentence of tokens"], ["tokens", "#ID"]),
        (["lab", "   "], ["prompt is empty"]),
        (["rollouts", "hi", "-n", "0"], ["--count"]),
        (["rollouts", "hi", "--length", "0"], ["--length"]),
        (["lab", "hi", "--min-p", "2"], ["min_p", "2"]),
    ],
)
def test_bad_input_is_one_clear_line(model_path: Path, args: list[str], fragments: list[str]) -> None:
    assert_one_line_error(tokenlab(*args), *fragments)


def test_a_file_that_is_not_gguf(tmp_path: Path, model_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_text("this is not a model")
    assert_one_line_error(tokenlab("generate", "hi", "--model", str(fake)), "not a GGUF")


def test_help_lists_the_commands() -> None:
    result = tokenlab("--help")
    assert result.returncode == 0
    for command in ("generate", "inspect", "models"):
        assert command in result.stdout
    generate_help = tokenlab("generate", "--help").stdout
    for flag in ("--temperature", "--top-k", "--logit-bias", "--samplers", "--gpu-layers", "--chat"):
        assert flag in generate_help


def test_inspect_stages_and_the_catalogue_flags(model_path: Path) -> None:
    result = tokenlab("inspect", PROMPT, "--raw", "--stages", "--format", "json", "--top-p", "0.9",
                      "--top-n-sigma", "2", "--xtc-probability", "1", "--xtc-threshold", "0.05")
    assert result.returncode == 0, result.stderr
    stages = json.loads(result.stdout)["stages"]
    names = [stage["name"] for stage in stages]
    assert names.index("top_n_sigma") < names.index("top_k") < names.index("xtc") < names.index("temperature")
    for before, after in zip(stages, stages[1:]):
        assert after["kept"] <= before["kept"]
    assert all(0 < stage["mass_kept"] <= 1 and stage["survivors"] for stage in stages)
    xtc = stages[names.index("xtc")]
    assert " Paris" not in [c["text"] for c in json.loads(result.stdout)["candidates"] if c["final_prob"] > 0]
    assert xtc["probs"]["7042"] == 0.0  # XTC took the top choice out

    table = tokenlab("inspect", PROMPT, "--raw", "--stages")
    assert "stage by stage" in table.stdout and "mass kept" in table.stdout

    preset = tokenlab("inspect", PROMPT, "--raw", "--preset", "greedy", "--format", "json")
    assert [c["final_prob"] for c in json.loads(preset.stdout)["candidates"]][:2] == [1.0, 0.0]
    mirostat = tokenlab("generate", PROMPT, "--raw", "--mirostat", "2", "-n", "4", "--seed", "1", "-f", "jsonl")
    steps = [json.loads(line) for line in mirostat.stdout.splitlines()[:-1]]
    assert all("mirostat_mu" in step["sampler_state"] for step in steps)
    assert_one_line_error(tokenlab("inspect", PROMPT, "--preset", "nope"), "nope", "greedy")
    assert_one_line_error(tokenlab("inspect", PROMPT, "--xtc-probability", "2"), "xtc_probability")


def test_flash_attention_is_a_flag_and_off_by_default(model_path: Path) -> None:
    runs = {}
    for flags in ((), ("--flash-attn",), ("--no-flash-attn",)):
        result = tokenlab("inspect", PROMPT, "--raw", "--format", "json", *flags)
        assert result.returncode == 0, result.stderr
        runs[flags] = json.loads(result.stdout)["candidates"][0]
    assert runs[()] == runs[("--no-flash-attn",)]
    assert runs[("--flash-attn",)]["text"] == runs[()]["text"] == " Paris"
    assert runs[("--flash-attn",)]["prob"] != runs[()]["prob"]  # the fused kernel's rounding, nothing more
    assert runs[("--flash-attn",)]["prob"] == pytest.approx(runs[()]["prob"], abs=0.02)
