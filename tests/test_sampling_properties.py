"""Hypothesis properties: any logits, parameters and order give a valid distribution.

The strategies cover the whole catalogue (every stage, every knob, random orders, schedules,
states and step indices).  At least `min_keep` tokens survive unless a stage chose by design:
greedy decoding (an effective temperature of 0, also reached by a schedule or dynamic
temperature) and mirostat (v1 and v2), which may keep a single token, as in llama.cpp.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tokenlab.sampling import (
    MIROSTAT_MU,
    STAGE_NAMES,
    Pipeline,
    PipelineResult,
    SamplerParams,
    raw_stats,
)
from tokenlab.sampling.shaping import ADAPTIVE_TOTAL_WEIGHT, ADAPTIVE_WEIGHTED_SUM

MAX_VOCAB = 40

special_floats = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e30, -1e30, 3.4e38])
logit_values = st.one_of(st.floats(-50, 50, width=32), st.floats(-50, 50, width=32), special_floats)
# extremes of a float64 row: their differences overflow
huge_floats = st.sampled_from([1e308, -1e308, 1.7976931348623157e308, -1.7976931348623157e308])


@st.composite
def logits_rows(draw: st.DrawFn) -> np.ndarray:
    """A float32 or float64 row with ordinary, tied and non-finite values."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    size = draw(st.integers(1, MAX_VOCAB))
    wide = st.floats(allow_nan=False, width=32 if dtype is np.float32 else 64)
    extremes = [wide] if dtype is np.float32 else [wide, huge_floats]
    return draw(hnp.arrays(dtype, size, elements=st.one_of(logit_values, *extremes)))


@st.composite
def sampler_params(draw: st.DrawFn, n_vocab: int) -> SamplerParams:
    """Random valid parameters over the whole catalogue, a random subset of stages in random order."""
    unit = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))
    below_one = st.one_of(st.sampled_from([0.0, 1e-4]), st.floats(0.0, 0.999))
    stages = draw(st.permutations(STAGE_NAMES))
    samplers = tuple(stages[: draw(st.integers(0, len(stages)))])
    token = st.integers(0, n_vocab - 1)
    temperature = draw(st.one_of(st.sampled_from([0.0, 1.0, 1e-300]), st.floats(0.0, 100.0)))
    temperature_end = draw(st.one_of(st.none(), st.sampled_from([0.0, 1.0]), st.floats(0.0, 10.0)))
    curve = draw(st.sampled_from(["linear", "exponential"]))
    if temperature_end is not None and min(temperature, temperature_end) <= 0.0:
        curve = "linear"
    return SamplerParams(
        temperature=temperature,
        top_k=draw(st.integers(0, MAX_VOCAB + 5)),
        top_p=draw(unit),
        min_p=draw(unit),
        typical_p=draw(unit),
        repeat_penalty=draw(st.one_of(st.just(1.0), st.floats(1e-3, 1e3))),
        frequency_penalty=draw(st.floats(-10, 10)),
        presence_penalty=draw(st.floats(-10, 10)),
        penalty_last_n=draw(st.integers(-1, 10)),
        min_keep=draw(st.integers(1, 6)),
        logit_bias=draw(
            st.dictionaries(token, st.one_of(st.floats(-1e3, 1e3), st.just(-math.inf)), max_size=3)
        ),
        ban=tuple(draw(st.lists(token, max_size=3))),
        samplers=samplers,
        top_n_sigma=draw(st.one_of(st.just(-1.0), st.floats(0.0, 5.0))),
        xtc_probability=draw(unit),
        xtc_threshold=draw(unit),
        dry_multiplier=draw(st.one_of(st.just(0.0), st.floats(0.0, 1e3))),
        dry_base=draw(st.one_of(st.sampled_from([1.0, 1.000001, 1e6, 1e300]), st.floats(1.0, 4.0),
                                st.floats(1.0, 1e308))),
        dry_allowed_length=draw(st.integers(0, 4)),
        dry_penalty_last_n=draw(st.integers(-1, 12)),
        dry_sequence_breakers=tuple(
            tuple(b)
            for b in draw(
                st.lists(st.lists(st.integers(0, n_vocab + 2), min_size=1, max_size=3), max_size=3)
            )
        ),
        mirostat=draw(st.sampled_from([0, 1, 2])),
        mirostat_tau=draw(st.floats(0.0, 20.0)),
        mirostat_eta=draw(st.floats(0.0, 2.0)),
        dynatemp_range=draw(st.one_of(st.just(0.0), st.floats(0.0, 10.0))),
        dynatemp_exponent=draw(st.one_of(st.sampled_from([1.0, 1e20]), st.floats(0.0, 5.0),
                                         st.floats(0.0, 1e300))),
        temperature_end=temperature_end,
        temperature_steps=draw(st.integers(0, 50)),
        temperature_curve=curve,
        epsilon_cutoff=draw(below_one),
        eta_cutoff=draw(below_one),
        top_a=draw(unit),
        no_repeat_ngram_size=draw(st.integers(0, 4)),
        scaled_frequency=draw(st.one_of(st.just(1.0), st.floats(1.0, 1e3))),
        scaled_presence=draw(st.one_of(st.just(1.0), st.floats(1.0, 1e3))),
        watermark_key=draw(st.one_of(st.none(), st.integers(0, 2**63 - 1))),
        watermark_gamma=draw(st.floats(0.01, 0.99)),
        watermark_delta=draw(st.one_of(st.just(0.0), st.floats(0.0, 1e3))),
        watermark_scheme=draw(st.sampled_from(["lefthash", "selfhash"])),
        adaptive_target=draw(st.one_of(st.just(-1.0), unit)),
        adaptive_decay=draw(st.one_of(st.sampled_from([0.0, 0.99]), st.floats(0.0, 0.99))),
        smoothing_factor=draw(st.one_of(st.just(0.0), st.floats(0.0, 50.0), st.floats(0.0, 1e300))),
        smoothing_curve=draw(st.one_of(st.sampled_from([1.0, 3.0, 10.0]), st.floats(1.0, 10.0))),
        tfs_z=draw(unit),
        top_h=draw(unit),
        p_less=draw(unit),
    )


@st.composite
def cases(draw: st.DrawFn) -> tuple[np.ndarray, SamplerParams, list[int]]:
    """Logits, parameters and a history (with a few ids outside the vocabulary, and repeats)."""
    logits = draw(logits_rows())
    params = draw(sampler_params(logits.shape[0]))
    alphabet = st.integers(-2, logits.shape[0] + 2)
    history: list[int] = draw(st.lists(alphabet, max_size=20))
    repeat: bool = draw(st.booleans())
    if history and repeat:
        history = history + history[draw(st.integers(0, len(history) - 1)) :]  # a repeat
    return logits, params, history


def alive_after_bias_and_ban(logits: np.ndarray, params: SamplerParams) -> int:
    """How many tokens still have a logit above -inf after logit_bias and ban."""
    alive = logits > -np.inf  # NaN compares False
    for token_id, bias in params.logit_bias.items():
        if bias == -math.inf:
            alive[token_id] = False
    alive[list(params.ban)] = False
    return int(alive.sum())


def chose_by_design(result: PipelineResult) -> bool:
    """Whether greedy decoding or mirostat ran (they may keep fewer than min_keep tokens)."""
    return any(
        report.name in ("mirostat_v1", "mirostat_v2")
        or (report.name == "temperature" and report.params.get("effective_temperature") == 0.0)
        for report in result.stages
    )


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cases(),
    st.integers(0, 60),
    st.one_of(st.none(), st.floats(-50.0, 50.0)),
    st.one_of(st.none(), st.tuples(st.floats(0.0, 100.0), st.floats(0.0, 100.0))),
)
def test_any_input_gives_a_valid_distribution(
    case: tuple[np.ndarray, SamplerParams, list[int]],
    step_index: int,
    mu: float | None,
    moving_average: tuple[float, float] | None,
) -> None:
    logits, params, history = case
    before = logits.copy()
    history_before = list(history)
    state: dict[str, float] | None = None if mu is None else {MIROSTAT_MU: mu}
    if moving_average is not None:  # adaptive-p's weighted sum and total weight (0 weight included)
        state = {**(state or {}), ADAPTIVE_WEIGHTED_SUM: moving_average[0],
                 ADAPTIVE_TOTAL_WEIGHT: moving_average[1]}
    pipeline = Pipeline(params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # extreme inputs must not leak numpy RuntimeWarnings
        result = pipeline.run(
            logits, history, rng=np.random.default_rng(step_index), state=state, step_index=step_index
        )
        result.dense_probs()
        result.draw(np.random.default_rng(0))
        for report in result.stages:
            report.probs()

    np.testing.assert_array_equal(logits, before)  # never mutated (NaN == NaN here)
    assert history == history_before
    probs = result.dense_probs()
    assert probs.shape == logits.shape and probs.dtype == np.float64
    assert np.isfinite(probs).all() and (probs >= 0).all()
    assert abs(probs.sum() - 1.0) <= 1e-12
    final_probs = result.final_probs
    assert abs(final_probs.sum() - 1.0) <= 1e-12
    assert (np.diff(final_probs) <= 0).all()  # sorted by descending probability
    assert len(set(result.final_ids.tolist())) == result.final_ids.shape[0]
    np.testing.assert_array_equal(probs[result.final_ids], final_probs)

    alive = alive_after_bias_and_ban(logits, params)
    if result.uniform_fallback:
        assert alive == 0
    elif chose_by_design(result):
        assert result.n_final >= 1
    else:
        assert result.n_final >= min(params.min_keep, alive)

    for report in result.stages:
        report_probs = report.probs()
        assert np.isfinite(report_probs).all() and abs(report_probs.sum() - 1.0) <= 1e-12
        assert not np.isnan(report.logits).any()
        assert report.n_kept <= report.n_in
        assert 0.0 <= report.mass_kept <= 1.0 + 1e-12
        if report.cutoff is not None:
            assert not math.isnan(report.cutoff.value)
    survivors = set(result.final_ids.tolist())
    for token_id in range(logits.shape[0]):
        assert (result.removed_by(token_id) is None) == (token_id in survivors)

    token = result.draw(np.random.default_rng(0))
    assert token in survivors and probs[token] > 0
    assert token == result.draw(np.random.default_rng(0))

    # the same rng seed and state give the same run and the same next state
    twin = pipeline.run(
        logits, history, rng=np.random.default_rng(step_index), state=state, step_index=step_index
    )
    np.testing.assert_array_equal(twin.dense_probs(), probs)
    next_state = result.next_state(token)
    assert dict(twin.next_state(token)) == dict(next_state)
    for value in next_state.values():
        assert isinstance(value, float) and math.isfinite(value)
    following = pipeline.run(logits, [*history, token], state=next_state, step_index=step_index + 1)
    assert abs(following.dense_probs().sum() - 1.0) <= 1e-12


@settings(max_examples=300, deadline=None)
@given(logits_rows())
@example(np.array([-2.8236157e35, 3.4e38], dtype=np.float32))  # logit - max rounds past -FLT_MAX
def test_raw_stats_is_finite_and_consistent(logits: np.ndarray) -> None:
    before = logits.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = raw_stats(logits)
        stats.entropy_bits
    np.testing.assert_array_equal(logits, before)
    probs = stats.probs(np.arange(logits.shape[0]))
    assert np.isfinite(probs).all() and (probs >= 0).all()
    assert abs(probs.sum() - 1.0) <= 1e-9
    assert 0.0 <= stats.entropy_bits <= math.log2(logits.shape[0]) + 1e-9
    for token_id in range(logits.shape[0]):
        assert stats.prob(token_id) == probs[token_id]
        assert 0 <= stats.rank(token_id) < logits.shape[0]
    assert stats.rank(int(stats.top_ids(1)[0])) == 0


def test_huge_dynatemp_exponent_on_a_flat_row_gives_the_flat_distribution() -> None:
    # the normalised entropy of a flat row rounds a hair above 1; raised to 1e20 it overflowed
    from tokenlab.sampling import distribution

    probs = distribution(np.zeros(5), top_k=0, dynatemp_range=1.0, dynatemp_exponent=1e20)
    np.testing.assert_allclose(probs, np.full(5, 0.2))


def test_extreme_rows_and_dry_base_leak_no_runtime_warnings() -> None:
    from tokenlab.sampling import distribution

    row = np.array([1e308, -1e308, 0.0, -1e308])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probs = distribution(row, [0, 1, 0, 1, 0], top_k=0, dry_multiplier=1.0, dry_base=1e300,
                             dry_allowed_length=1, mirostat=2)
        stats = raw_stats(row)
        assert stats.prob(0) == 1.0 and stats.prob(1) == 0.0
    assert probs[0] == 1.0


@given(st.integers(min_value=0, max_value=2**32 - 1), st.sampled_from([40, 0]), st.sampled_from([0.0, 0.05]))
@settings(max_examples=60, deadline=None)
def test_the_dice_mass_before_a_token_is_the_draws_cumulative_order(seed: int, top_k: int, min_p: float) -> None:
    """mass_before (ranked survivors or one pass over the row) equals the mass of every token the draw
    puts first: higher final probability, or the same probability and a lower id."""
    from tokenlab.lab.step import mass_before
    from tokenlab.sampling import Pipeline, SamplerParams

    rng = np.random.default_rng(seed)
    row = np.round(rng.normal(size=600) * 3, 1).astype(np.float32)  # rounded: ties happen
    result = Pipeline(SamplerParams(top_k=top_k, top_p=1.0, min_p=min_p)).run(row, (), rng=np.random.default_rng(seed))
    token_id = result.draw(np.random.default_rng(seed))
    probs = result.dense_probs()
    prob = probs[token_id]
    expected = float(probs[probs > prob].sum() + probs[np.flatnonzero(probs[:token_id] == prob)].sum())
    assert mass_before(result, token_id) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(), st.integers(0, 2**32 - 1))
def test_a_records_lookups_agree_with_the_one_by_one_answers(
    case: tuple[np.ndarray, SamplerParams, list[int]], seed: int
) -> None:
    """A step's record reads removed_by and final probabilities for a few ids through fast paths
    (Python sets and a dict): they must give exactly the one-id-at-a-time answers."""
    logits, params, history = case
    result = Pipeline(params).run(logits, history, rng=np.random.default_rng(seed))
    ids = np.arange(logits.shape[0], dtype=np.int64)
    assert result.removed_by_many(ids) == [result.removed_by(int(i)) for i in ids]
    probs = result.probs_of(ids)
    lookup = result.final_lookup
    if lookup is not None:
        assert [lookup.get(int(i), 0.0) for i in ids] == probs.tolist()
    assert probs.tolist() == [result.prob_of(int(i)) for i in ids]
