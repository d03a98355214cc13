"""A/B comparison on the real model: two knob sets on one step, and two generations from one prompt."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tokenlab.lab.compare import compare_frontier, compare_generations
from tokenlab.lab.step import Frontier
from tokenlab.sampling import SamplerParams
from tokenlab.sampling.params import parse_assignment

PROMPT = "The capital of France is"


def tokenlab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tokenlab", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def prompt_tokens(engine) -> list[int]:
    return engine.format_prompt(PROMPT, chat=False)


def test_the_same_knobs_on_both_sides_agree_everywhere(engine, prompt_tokens) -> None:
    params = SamplerParams(temperature=1.0)
    frontier = Frontier(logits=engine.evaluate(prompt_tokens), history=tuple(prompt_tokens), params=params,
                        rng_key=(5, 0))
    step = compare_frontier(frontier, params, engine.token_text)
    assert step.only_a == step.only_b == () and step.only_a_mass == step.only_b_mass == 0.0
    assert all(row.final_a == row.final_b for row in step.rows)
    runs = compare_generations(engine, prompt_tokens, params, params, seed=5, max_tokens=12)
    assert [s.id for s in runs.a] == [s.id for s in runs.b] and runs.first_difference is None


def test_the_tokens_only_one_set_can_draw(engine, prompt_tokens) -> None:
    narrow = SamplerParams(top_k=2, top_p=1.0, min_p=0.0)
    wide = SamplerParams(top_k=0, top_p=1.0, min_p=0.1)
    frontier = Frontier(logits=engine.evaluate(prompt_tokens), history=tuple(prompt_tokens), params=narrow,
                        rng_key=(1, 0))
    step = compare_frontier(frontier, wide, engine.token_text)
    a, b = frontier.result, Frontier(logits=frontier.logits, history=frontier.history, params=wide).result
    expected_only_b = set(b.final_ids.tolist()) - set(a.final_ids.tolist())
    expected_only_a = set(a.final_ids.tolist()) - set(b.final_ids.tolist())
    assert step.survivors_a == 2 and step.survivors_b == b.n_final
    assert {row.id for row in step.only_b} == set(list(expected_only_b)[:8]) or len(expected_only_b) > 8
    assert {row.id for row in step.only_a} <= expected_only_a
    assert step.only_b_mass == pytest.approx(float(b.probs_of(np.asarray(sorted(expected_only_b))).sum()))
    for row in step.only_b:  # B can draw it, A removed it (top-k)
        assert row.final_b > 0 and row.final_a == 0 and row.removed_by_a == "top_k"


def test_each_generation_is_its_knob_sets_own_and_starts_like_the_lab(engine, prompt_tokens) -> None:
    greedy, hot = SamplerParams(temperature=0.0), SamplerParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0)
    runs = compare_generations(engine, prompt_tokens, greedy, hot, seed=11, max_tokens=16)
    assert len(runs.a) == 16 and runs.stop_a == "max_tokens"
    assert all(step.final_prob == 1.0 for step in runs.a)  # greedy: the one survivor
    # the first token of each side is what a lab frontier with the same seed draws (same prefix decode)
    for side, params in (("a", greedy), ("b", hot)):
        frontier = Frontier(logits=engine.evaluate(prompt_tokens), history=tuple(prompt_tokens), params=params,
                            rng_key=(11, 0))
        assert getattr(runs, side)[0].id == frontier.draw()
    assert runs.text("a") == "".join(step.text for step in runs.a)


def test_knob_assignments_are_named_like_the_flags() -> None:
    assert parse_assignment("top-k=0") == ("top_k", 0)
    assert parse_assignment("--temp=1.5") == ("temperature", 1.5)
    assert parse_assignment("temperature-end=off") == ("temperature_end", None)
    with pytest.raises(ValueError, match="not a sampler knob"):
        parse_assignment("warmth=3")


def test_compare_command_prints_both_sides_and_rejects_bad_knobs() -> None:
    done = tokenlab("compare", PROMPT, "--raw", "--seed", "2", "-n", "6", "--b", "temperature=0", "-f", "jsonl")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert records[0]["params"]["b"]["temperature"] == 0.0 and records[0]["params"]["a"]["temperature"] == 0.8
    assert records[1]["step"]["survivors"]["b"] == 1
    generations = records[2]["generations"]
    assert len(generations["a"]["tokens"]) == len(generations["b"]["tokens"]) == 6
    text = tokenlab("compare", PROMPT, "--raw", "--seed", "2", "-n", "4", "--b-preset", "greedy")
    assert text.returncode == 0 and "only B can draw" in text.stdout and "B differs from A in" in text.stdout
    for args, words in ((["--b", "warmth=2"], "not a sampler knob"), ([], "give B's knobs"),
                        (["--b", "top-p=3"], "top_p must be in [0, 1]")):
        bad = tokenlab("compare", PROMPT, *args)
        assert bad.returncode == 2 and words in bad.stderr and "Traceback" not in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1


def test_only_one_sets_tokens_are_its_most_likely_first_without_ranking_a_dense_row() -> None:
    """With a dense final distribution on one side (temperature only) the tokens only it can draw are its
    most likely ones, ties by id, and their mass is all of them: what ranking every id would give."""
    rng = np.random.default_rng(2)
    logits = (rng.standard_normal(40_000) * 1.5).astype(np.float32)
    logits[::9] = np.round(logits[::9], 1)
    dense, narrow = SamplerParams(top_k=0, top_p=1.0, min_p=0.0), SamplerParams(top_k=5)
    frontier = Frontier(logits=logits, history=(), params=dense, rng_key=(1, 0))
    step = compare_frontier(frontier, narrow, str)
    a = frontier.result
    b = Frontier(logits=logits, history=(), params=narrow).result
    only = np.setdiff1d(a.final_ids, b.final_ids)
    probs = a.probs_of(only)
    expected = only[np.lexsort((only, -probs))][: len(step.only_a)]
    assert len(step.only_a) == 8
    assert [row.id for row in step.only_a] == expected.tolist()
    assert step.only_a_mass == pytest.approx(float(probs.sum()), rel=1e-12)
    assert step.only_b == () and step.only_b_mass == 0.0
