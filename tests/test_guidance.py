"""Classifier-free guidance: the formula on hand-made rows, and the negative context on the real model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tokenlab.engine import Engine
from tokenlab.lab import Generation
from tokenlab.lab.session import step_from_json, step_to_json
from tokenlab.sampling import Pipeline, SamplerParams, distribution
from tokenlab.sampling.guidance import guided_scores, log_softmax
from test_sampling_properties import logits_rows

PLAIN = dict(top_k=0, top_p=1.0, min_p=0.0, temperature=1.0)
"""Knobs that leave a distribution as it is, so the guided row alone decides."""


def softmax(row: np.ndarray) -> np.ndarray:
    z = np.exp(row.astype(np.float64) - row.max())
    return z / z.sum()


# -- the formula on hand-made rows ----------------------------------------------------------------


def test_guided_scores_match_transformers_formula_by_hand() -> None:
    positive = np.array([2.0, 1.0, 0.0, -1.0])
    negative = np.array([0.0, 2.0, 0.0, 0.0])
    # log-softmax by hand: positive has normaliser log(e^2 + e + 1 + e^-1), negative log(3 + e^2)
    log_p = positive - math.log(math.exp(2) + math.exp(1) + 1 + math.exp(-1))
    log_n = negative - math.log(3 + math.exp(2))
    for scale in (0.0, 0.5, 1.5, 3.0, -1.0):
        expected = log_n + scale * (log_p - log_n)
        np.testing.assert_allclose(guided_scores(positive, negative, scale), expected, rtol=1e-12)
        probs = distribution(positive, negative_logits=negative, guidance_scale=scale, **PLAIN)
        np.testing.assert_allclose(probs, np.exp(expected) / np.exp(expected).sum(), rtol=1e-12)


def test_scale_one_is_off_and_zero_is_the_negative_distribution() -> None:
    rng = np.random.default_rng(3)
    positive, negative = rng.standard_normal(1000), rng.standard_normal(1000)
    assert [stage.name for stage in Pipeline(SamplerParams(guidance_scale=1.0)).stages][:1] != ["guidance"]
    unguided = distribution(positive, **PLAIN)
    assert np.array_equal(distribution(positive, negative_logits=negative, guidance_scale=1.0, **PLAIN), unguided)
    np.testing.assert_allclose(distribution(positive, negative_logits=negative, guidance_scale=0.0, **PLAIN),
                               softmax(negative), rtol=1e-10)


def test_guidance_runs_first_so_bans_and_biases_hold_at_any_scale() -> None:
    positive, negative = np.array([3.0, 1.0, 0.0]), np.array([0.0, 0.0, 5.0])
    result = Pipeline(SamplerParams(guidance_scale=0.0, ban=(2,), **PLAIN)).run(positive, negative_logits=negative)
    assert [stage.name for stage in result.stages][:2] == ["guidance", "ban"]
    assert result.prob_of(2) == 0.0 and result.removed_by(2) == "ban"
    assert result.prob_of(0) == pytest.approx(0.5)  # the negative row's own, renormalised without token 2


def test_guidance_leaves_its_inputs_alone_and_needs_a_negative_row() -> None:
    positive, negative = np.array([1.0, 2.0, 3.0], dtype=np.float32), np.array([3.0, 2.0, 1.0], dtype=np.float32)
    kept = positive.copy(), negative.copy()
    Pipeline(SamplerParams(guidance_scale=2.0)).run(positive, negative_logits=negative)
    assert np.array_equal(positive, kept[0]) and np.array_equal(negative, kept[1])
    with pytest.raises(ValueError, match="negative"):
        Pipeline(SamplerParams(guidance_scale=2.0)).run(positive)
    assert np.all(np.isneginf(log_softmax(np.array([-np.inf, -np.inf]))))
    with pytest.raises(ValueError, match="guidance_scale"):
        SamplerParams(guidance_scale=math.nan)


# -- on the real model ------------------------------------------------------------------------------

PROMPT = "Write a story about a cat."
NEGATIVE = "Write a story about a dog."


@pytest.fixture(scope="module")
def cat(engine: Engine) -> list[int]:
    return engine.format_prompt(PROMPT, chat=True)


def test_scale_one_decodes_no_negative_context_and_changes_nothing(engine: Engine, cat: list[int]) -> None:
    # each run decodes the prompt from an empty cache: a re-decoded last token would round differently
    engine.reset()
    plain = Generation(engine, cat, SamplerParams(), seed=4, max_tokens=12)
    ids = [step.id for step in plain.run()]
    engine.reset()
    same = Generation(engine, cat, SamplerParams(guidance_scale=1.0, negative_prompt=NEGATIVE), seed=4, max_tokens=12)
    assert [step.id for step in same.run()] == ids
    assert same._guide is None and all(not step.negative for step in same.steps)


def test_the_negative_context_is_a_second_sequence_of_one_context(engine: Engine, cat: list[int]) -> None:
    params = SamplerParams(guidance_scale=0.0, negative_prompt=NEGATIVE, **PLAIN)
    generation = Generation(engine, cat, params, seed=0, max_tokens=6, chat=True)
    frontier = generation.frontier()
    negative_tokens = engine.format_prompt(NEGATIVE, chat=True)
    assert generation.negative_context() == tuple(negative_tokens)
    decoder = generation._guide
    assert decoder is not None and decoder.n_seq == 2 and decoder.decode_calls == 1  # both prompts, one decode
    # scale 0: the final distribution is the negative context's own
    np.testing.assert_allclose(frontier.result.dense_probs(), softmax(frontier.negative_logits), atol=1e-9)
    # that row is `inspect` of the negative prompt alone, within the tolerance of a shared batch
    alone = engine.evaluate(negative_tokens)
    assert 0.5 * np.abs(softmax(frontier.negative_logits) - softmax(alone)).sum() < 0.1
    assert int(np.argmax(frontier.negative_logits)) == int(np.argmax(alone))
    # the positive row is the Engine's own decode of the prompt (sequence 0 of the same batch)
    assert 0.5 * np.abs(softmax(frontier.logits) - softmax(engine.evaluate(cat))).sum() < 0.1
    # each further step feeds the drawn token to both sequences in one llama_decode
    calls = decoder.decode_calls
    steps = [generation.step() for _ in range(3)]
    generation.frontier()
    assert decoder.decode_calls == calls + 3
    ids = [step.id for step in steps]
    assert decoder.held[0] == [*cat, *ids] and decoder.held[1] == [*negative_tokens, *ids]
    assert steps[0].negative[0][0] == int(np.argmax(frontier.negative_logits))  # drawn from that first frontier
    generation.close()
    assert generation._guide is None


def test_one_guided_step_by_hand(engine: Engine, cat: list[int]) -> None:
    scale = 1.5
    params = SamplerParams(guidance_scale=scale, negative_prompt=NEGATIVE, top_k=0, top_p=1.0, min_p=0.0)
    generation = Generation(engine, cat, params, seed=0, max_tokens=4)
    frontier = generation.frontier()
    positive = frontier.logits.astype(np.float64)
    negative = frontier.negative_logits.astype(np.float64)
    log_p = positive - np.log(np.exp(positive - positive.max()).sum()) - positive.max()
    log_n = negative - np.log(np.exp(negative - negative.max()).sum()) - negative.max()
    guided = (log_n + scale * (log_p - log_n)) / params.temperature
    np.testing.assert_allclose(frontier.result.dense_probs(), softmax(guided), atol=1e-12)
    assert frontier.result.stages[0].name == "guidance"
    # the record carries the negative context's top candidates next to the positive ones
    step = generation.step()
    top = np.argsort(-negative, kind="stable")[:5]
    assert [entry[0] for entry in step.negative] == [int(i) for i in top]
    assert step.negative[0][2] == pytest.approx(softmax(negative)[top[0]])
    assert step.to_json()["negative"][0]["id"] == int(top[0])
    assert step_from_json(json.loads(json.dumps(step_to_json(step)))).negative == step.negative  # sessions keep it
    generation.close()


def test_without_a_negative_prompt_the_prompts_last_token_is_the_negative_context(
    engine: Engine, cat: list[int]
) -> None:
    generation = Generation(engine, cat, SamplerParams(guidance_scale=2.0), seed=0, max_tokens=2)
    frontier = generation.frontier()
    assert generation.negative_context() == (cat[-1],)  # as transformers does without negative_prompt_ids
    alone = engine.evaluate([cat[-1]])
    assert 0.5 * np.abs(softmax(frontier.negative_logits) - softmax(alone)).sum() < 0.1
    generation.close()


def test_turning_guidance_on_and_off_rebuilds_the_frontier(engine: Engine, cat: list[int]) -> None:
    generation = Generation(engine, cat, SamplerParams(**PLAIN), seed=0, max_tokens=4)
    plain = generation.frontier().result.dense_probs()
    guided = generation.set_params(generation.params.replace(guidance_scale=0.0, negative_prompt=NEGATIVE))
    assert guided is not None and guided.stages[0].name == "guidance"
    assert generation.frontier().negative_logits is not None
    back = generation.set_params(generation.params.replace(guidance_scale=1.0))
    assert back is not None and generation.frontier().negative_logits is None
    # the Engine's own row again (its last token decoded anew, so it rounds a little differently)
    np.testing.assert_array_equal(generation.frontier().logits, engine.last_logits())
    assert 0.5 * np.abs(back.dense_probs() - plain).sum() < 0.1
    generation.close()


# -- properties ------------------------------------------------------------------------------------


@st.composite
def row_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """A positive and a negative row of the same length (ordinary, tied and non-finite values)."""
    positive = draw(logits_rows())
    elements = st.one_of(st.floats(-50, 50), st.sampled_from([math.nan, math.inf, -math.inf, 1e30, -1e30]))
    return positive, draw(hnp.arrays(np.float64, positive.shape[0], elements=elements))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(row_pairs(), st.one_of(st.sampled_from([0.0, 0.5, 1.5, 3.0, -1.0]), st.floats(-10, 10)))
def test_any_guided_row_gives_a_finite_normalised_distribution_and_mutates_nothing(
    rows: tuple[np.ndarray, np.ndarray], scale: float
) -> None:
    positive, negative = rows
    kept = positive.copy(), negative.copy()
    result = Pipeline(SamplerParams(guidance_scale=scale)).run(positive, negative_logits=negative)
    probs = result.dense_probs()
    assert np.all(np.isfinite(probs)) and np.all(probs >= 0) and probs.sum() == pytest.approx(1.0)
    np.testing.assert_array_equal(positive, kept[0])
    np.testing.assert_array_equal(negative, kept[1])
