"""Scoring an existing text on the real default model: batched rows agree with token-by-token decoding."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from tokenlab.engine import Engine, EngineOptions
from tokenlab.lab.score import rank_bucket, score_text

TEXT = "The lighthouse keeper climbed the stairs every evening, and the lamp burned until morning."


def test_batched_scores_match_token_by_token_decoding(engine: Engine) -> None:
    result = score_text(engine, TEXT, top_n=3)
    ids = [token.id for token in result.tokens]
    assert engine.detokenize(ids) == TEXT
    assert result.tokens[0].prob is None  # nothing before the first token (this model uses no BOS)
    differences = []
    for index in range(1, len(ids)):
        logits = engine.evaluate(ids[:index]).astype(np.float64)
        log_norm = logits.max() + math.log(np.exp(logits - logits.max()).sum())
        expected = math.exp(logits[ids[index]] - log_norm)
        token = result.tokens[index]
        differences.append(abs(token.prob - expected))
        # the rank must fit the token-by-token logits up to the same rounding (0.1 in logit units)
        target = logits[ids[index]]
        assert int((logits > target + 0.1).sum()) + 1 <= token.rank <= int((logits > target - 0.1).sum()) + 1
        assert token.top[0].id == int(np.argmax(logits))
    # llama.cpp's kernels for a one-token batch and a many-token batch do not round alike, so a few
    # positions differ by up to ~1e-2 (measured 0.013 on this text); most agree exactly
    assert float(np.median(differences)) <= 1e-4
    assert max(differences) <= 2e-2
    assert result.perplexity == pytest.approx(math.exp(-result.mean_logprob))
    assert sum(result.histogram().values()) == len(ids) - 1


def test_chunking_does_not_change_the_scores(model_path) -> None:
    """Our chunking and bookkeeping are exact: any chunk size of 2 or more gives identical scores."""
    scores = []
    for n_batch in (2, 7, 512):
        engine = Engine(model_path, EngineOptions(n_ctx=256, n_batch=n_batch))
        try:
            scores.append([token.prob for token in score_text(engine, TEXT, top_n=0).tokens[1:]])
        finally:
            engine.close()
    assert scores[0] == scores[1] == scores[2]


def test_one_decode_per_chunk(model_path) -> None:
    engine = Engine(model_path, EngineOptions(n_ctx=256, n_batch=16))
    try:
        text = " ".join(["the keeper"] * 25)
        n_tokens = len(engine.tokenize(text, add_bos=False))
        result = score_text(engine, text, top_n=0)
        assert len(result.tokens) == n_tokens
        assert engine.decode_calls == math.ceil(n_tokens / 16)
        assert engine.decoded_tokens == n_tokens
    finally:
        engine.close()


def test_a_text_longer_than_the_context_slides(model_path, engine: Engine) -> None:
    small = Engine(model_path, EngineOptions(n_ctx=32))
    try:
        text = " ".join([TEXT] * 3) + " The end came quietly, with fog over the sea and no ships at all."
        seen = []
        result = score_text(small, text, top_n=1, progress=lambda done, total: seen.append((done, total)))
        n_tokens = len(result.tokens)
        assert n_tokens > 60
        assert result.windows == 1 + math.ceil((n_tokens - 32) / 16)  # each new window slides half a context
        assert all(t.prob is not None and 0 < t.prob <= 1 for t in result.tokens[1:])
        assert seen[-1][0] == seen[-1][1] == len(result.tokens) - 1
        assert [done for done, _ in seen] == sorted(done for done, _ in seen)
        # inside the first window, sliding changes nothing
        full = score_text(engine, text, top_n=1)
        for a, b in zip(result.tokens[1:30], full.tokens[1:30]):
            assert a.prob == pytest.approx(b.prob, abs=1e-4)
    finally:
        small.close()


def test_rank_buckets() -> None:
    assert [rank_bucket(r) for r in (1, 10, 11, 100, 101, 1000, 1001)] == [
        "top-10", "top-10", "top-100", "top-100", "top-1000", "top-1000", "rest"]


def test_score_command(tmp_path, model_path) -> None:
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "tokenlab", "score", str(path), "--format", "jsonl"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    summary = lines[-1]
    assert summary["done"] and summary["tokens"] == len(lines) - 1 and summary["perplexity"] > 1
    assert "".join(line["text"] for line in lines[:-1]) == TEXT
    assert {"index", "id", "text", "prob", "logprob", "rank", "bucket", "entropy", "top"} <= lines[1].keys()

    table = subprocess.run([sys.executable, "-m", "tokenlab", "score", "-"], input=TEXT,
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "perplexity" in table.stdout and "top-10" in table.stdout

    for args, message in ((["score", str(tmp_path / "missing.txt")], "file not found"),
                          (["score", "-"], "empty")):
        bad = subprocess.run([sys.executable, "-m", "tokenlab", *args], input="  ",
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr


def test_a_file_ends_with_a_newline_that_is_not_scored_and_one_token_is_refused(tmp_path, engine: Engine) -> None:
    path = tmp_path / "text.txt"
    path.write_text(TEXT + "\n", encoding="utf-8")  # what an editor or `echo` writes
    out = subprocess.run([sys.executable, "-m", "tokenlab", "score", str(path), "--format", "jsonl"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert "".join(line["text"] for line in lines[:-1]) == TEXT
    assert lines[-1]["tokens"] == len(engine.tokenize(TEXT, add_bos=False))

    one = tmp_path / "one.txt"
    one.write_text(" Paris\n", encoding="utf-8")
    assert len(engine.tokenize(" Paris", add_bos=False)) == 1
    for args in (["score", str(one)], ["score", str(one), "--format", "jsonl"]):
        bad = subprocess.run([sys.executable, "-m", "tokenlab", *args], capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and "single token" in bad.stderr, bad.stderr
        assert "nan" not in (bad.stdout + bad.stderr).lower() and "Traceback" not in bad.stderr
