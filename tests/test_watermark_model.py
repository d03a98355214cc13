"""The watermark and Fast-DetectGPT on the real default model: generate once, then test the texts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tokenlab.engine import Engine
from tokenlab.lab.generation import Generation
from tokenlab.lab.score import WatermarkTest, score_text
from tokenlab.sampling import SamplerParams
from tokenlab.sampling.watermark import detect_watermark

PROMPT = "Write a short story about a fox who learns to sail."
KEY = 4242
LENGTH = 200

# Darwin, On the Origin of Species (1859), the opening of chapter 1: human prose, public domain.
HUMAN_TEXT = (
    "When we look to the individuals of the same variety or sub-variety of our older cultivated "
    "plants and animals, one of the first points which strikes us, is, that they generally differ "
    "much more from each other, than do the individuals of any one species or variety in a state of "
    "nature. When we reflect on the vast diversity of the plants and animals which have been "
    "cultivated, and which have varied during all ages under the most different climates and "
    "treatment, I think we are driven to conclude that this greater variability is simply due to "
    "our domestic productions having been raised under conditions of life not so uniform as, and "
    "somewhat different from, those to which the parent-species have been exposed under nature."
)


@dataclass(frozen=True)
class Texts:
    """The generated texts every test here reads."""

    watermarked_ids: list[int]
    watermarked: str
    plain_ids: list[int]
    plain: str


def generate(engine: Engine, params: SamplerParams, seed: int, length: int = LENGTH) -> list[int]:
    """`length` tokens (or fewer at the end of the turn) from the chat prompt."""
    generation = Generation(engine, engine.format_prompt(PROMPT, chat=True), params, seed=seed,
                            max_tokens=length, record=False)
    for _ in generation.run():
        pass
    return [token for token in generation.generated_ids if not engine.is_eog(token)]


@pytest.fixture(scope="module")
def texts(engine: Engine) -> Texts:
    """A watermarked and a plain generation at temperature 1 (same prompt, same seed)."""
    base = SamplerParams(temperature=1.0)
    marked = generate(engine, base.replace(watermark_key=KEY), seed=11)
    plain = generate(engine, base, seed=11)
    return Texts(marked, engine.detokenize(marked), plain, engine.detokenize(plain))


def test_generation_runs_the_watermark_stage(texts: Texts) -> None:
    assert len(texts.watermarked_ids) >= 150  # long enough for the test to mean something
    assert texts.watermarked_ids != texts.plain_ids  # delta moved the draws


def test_right_key_detects_the_watermark_and_wrong_keys_do_not(engine: Engine, texts: Texts) -> None:
    result = score_text(engine, texts.watermarked, top_n=0, watermark=WatermarkTest(KEY))
    detection = result.watermark
    assert detection is not None
    assert detection.z > 4, detection.summary()
    assert detection.p_value < 1e-4
    assert detection.green_count / detection.total > 0.4  # gamma is 0.25
    summary = result.summary()["watermark"]
    assert summary["z"] == pytest.approx(detection.z) and summary["counted"] == detection.total
    # other keys see gamma green, on average over keys
    wrong = [detect_watermark(texts.watermarked_ids, key=key, n_vocab=engine.n_vocab).z for key in range(1, 9)]
    assert abs(float(np.mean(wrong))) < 2, wrong


def test_unwatermarked_and_paraphrased_text(engine: Engine, texts: Texts) -> None:
    marked = detect_watermark(texts.watermarked_ids, key=KEY, n_vocab=engine.n_vocab).z
    plain = detect_watermark(texts.plain_ids, key=KEY, n_vocab=engine.n_vocab).z
    assert abs(plain) < 3, plain  # measured 0.0
    # a paraphrase that swaps every second word for the plain text's word at that place: each swap
    # also changes the context of the next word's first token, so little of the watermark is left
    words = texts.watermarked.split(" ")
    others = [word for word in texts.plain.split(" ") if word.strip()]
    swapped = [others[i % len(others)] if i % 2 else word for i, word in enumerate(words)]
    paraphrase = score_text(engine, " ".join(swapped), top_n=0, watermark=WatermarkTest(KEY)).watermark
    assert paraphrase is not None
    # between: far below the watermarked text (measured 0.95 against 8.2), not below chance
    assert -2 < paraphrase.z < marked / 2, (plain, paraphrase.z, marked)


def test_selfhash_watermark_is_detected_with_its_scheme(engine: Engine) -> None:
    params = SamplerParams(temperature=1.0, watermark_key=KEY, watermark_scheme="selfhash")
    ids = generate(engine, params, seed=5, length=160)
    assert detect_watermark(ids, key=KEY, n_vocab=engine.n_vocab, scheme="selfhash").z > 4  # 5.5 at 120 tokens
    assert abs(detect_watermark(ids, key=KEY + 1, n_vocab=engine.n_vocab, scheme="selfhash").z) < 3


def test_fast_detectgpt_puts_model_text_above_human_text(engine: Engine, texts: Texts) -> None:
    """Bao et al.: machine text is likelier than the model's typical sample; human text is not.

    The model text is the plain generation (temperature 1 with llama.cpp's default top-k, top-p and
    min-p: truncation keeps the likely tokens).  Measured: d 3.9 for it, -0.6 for Darwin.
    """
    model_text = score_text(engine, texts.plain, top_n=0).fast_detectgpt
    human_text = score_text(engine, HUMAN_TEXT, top_n=0).fast_detectgpt
    assert model_text > human_text + 2, (model_text, human_text)
    assert model_text > 2 and human_text < 1, (model_text, human_text)


def test_score_command_reports_the_watermark(tmp_path: Path, texts: Texts, model_path: Path) -> None:
    path = tmp_path / "story.txt"
    path.write_text(texts.watermarked, encoding="utf-8")
    command = [sys.executable, "-m", "tokenlab", "score", str(path), "--watermark-key", str(KEY)]
    env = {**os.environ, "COLUMNS": "120"}
    out = subprocess.run([*command, "--format", "jsonl"], capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    summary = lines[-1]
    assert summary["watermark"]["z"] > 4 and summary["watermark"]["p_value"] < 1e-4
    assert isinstance(summary["fast_detectgpt"], float)
    assert lines[0]["green"] is None and lines[0]["counted"] is False  # no context before it
    assert sum(line["green"] is True and line["counted"] for line in lines[:-1]) == summary["watermark"]["green"]
    text = subprocess.run([*command, "--format", "text"], capture_output=True, text=True, timeout=180,
                          env={**env, "FORCE_COLOR": "1", "COLORTERM": "truecolor"})
    assert text.returncode == 0, text.stderr
    assert "Fast-DetectGPT d" in text.stdout and "watermark (lefthash, γ 0.25)" in text.stdout
    assert "48;2;47;158;68" in text.stdout  # green tokens have the green-list background (#2f9e44)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--watermark-gamma", "1.5"], "watermark_gamma"),
        (["--watermark-scheme", "minhash"], "watermark_scheme"),
        (["--watermark-key", "-3"], "watermark_key"),
    ],
)
def test_bad_watermark_flags_are_one_line_errors(tmp_path: Path, args: list[str], fragment: str) -> None:
    path = tmp_path / "t.txt"
    path.write_text("Some text.", encoding="utf-8")
    for command in (["score", str(path), "--watermark-key", "1", *args],
                    ["generate", "Hi", "-n", "2", "--watermark-key", "1", *args]):
        result = subprocess.run([sys.executable, "-m", "tokenlab", *command], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr and fragment in result.stderr
        assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr


def test_a_samplers_order_without_the_watermark_stage_is_an_error() -> None:
    result = subprocess.run([sys.executable, "-m", "tokenlab", "generate", "Hi", "-n", "2", "--watermark-key", "1",
                             "--samplers", "top_k,temperature"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "add 'watermark'" in result.stderr and "Traceback" not in result.stderr
