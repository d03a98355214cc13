"""Unit tests of tokenlab.sampling on tiny hand-made distributions with exact expected outputs."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from sampling_helpers import only, softmax, survivors

from tokenlab.sampling import (
    DEFAULT_ORDER,
    STAGE_NAMES,
    Pipeline,
    PipelineResult,
    RawStats,
    SamplerParams,
    StageReport,
    distribution,
    parse_samplers,
    raw_stats,
)

INF = math.inf
NAN = math.nan
ALL_OFF: dict[str, Any] = {
    "top_k": 0,
    "top_p": 1.0,
    "min_p": 0.0,
    "typical_p": 1.0,
    "temperature": 1.0,
}


# probabilities 0.5, 0.3, 0.15, 0.05 (ids 0..3)
LOG_PROBS = [math.log(0.5), math.log(0.3), math.log(0.15), math.log(0.05)]


# -- parameters ------------------------------------------------------------------------------------


def test_defaults_match_llama_cpp_common_sampler() -> None:
    params = SamplerParams()
    assert (params.temperature, params.top_k, params.top_p, params.min_p, params.typical_p) == (
        0.8,
        40,
        0.95,
        0.05,
        1.0,
    )
    assert (params.repeat_penalty, params.frequency_penalty, params.presence_penalty) == (
        1.0,
        0.0,
        0.0,
    )
    assert (params.penalty_last_n, params.min_keep) == (64, 1)
    assert dict(params.logit_bias) == {} and params.ban == ()
    assert params.samplers == DEFAULT_ORDER
    # llama.cpp's common order (common/common.h) with the rest of the catalogue slotted in
    llama_cpp_order = ("penalties", "dry", "top_n_sigma", "top_k", "typical_p", "top_p", "min_p")
    assert [name for name in DEFAULT_ORDER if name in llama_cpp_order + ("xtc", "temperature")] == [
        *llama_cpp_order,
        "xtc",
        "temperature",
    ]
    assert STAGE_NAMES == DEFAULT_ORDER


def test_out_of_range_message_names_parameter_value_and_range() -> None:
    with pytest.raises(ValueError, match=r"^top_p must be in \[0, 1\], got 1\.5$"):
        SamplerParams(top_p=1.5)


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": NAN}, "temperature"),
        ({"temperature": INF}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_p": -0.01}, "top_p"),
        ({"top_p": NAN}, "top_p"),
        ({"min_p": 1.01}, "min_p"),
        ({"typical_p": 2.0}, "typical_p"),
        ({"repeat_penalty": 0.0}, "repeat_penalty"),
        ({"repeat_penalty": NAN}, "repeat_penalty"),
        ({"frequency_penalty": INF}, "frequency_penalty"),
        ({"presence_penalty": NAN}, "presence_penalty"),
        ({"penalty_last_n": -2}, "penalty_last_n"),
        ({"min_keep": 0}, "min_keep"),
        ({"logit_bias": {3: NAN}}, "logit_bias"),
        ({"logit_bias": {3: INF}}, "logit_bias"),
        ({"logit_bias": {-1: 1.0}}, "logit_bias"),
        ({"ban": (-4,)}, "ban"),
        ({"samplers": ("top_k", "bogus")}, "samplers"),
        ({"samplers": ("top_k", "top-k")}, "samplers"),
    ],
)
def test_invalid_values_raise_value_error_naming_the_parameter(
    changes: dict[str, object], name: str
) -> None:
    with pytest.raises(ValueError, match=name) as info:
        SamplerParams(**changes)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_value_error_shows_the_value() -> None:
    with pytest.raises(ValueError, match=r"got -3"):
        SamplerParams(top_k=-3)
    with pytest.raises(ValueError, match=r"got nan"):
        SamplerParams(min_p=NAN)


def test_unknown_stage_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="bogus") as info:
        parse_samplers("top_k,bogus")
    for name in STAGE_NAMES:
        assert name in str(info.value)


def test_parse_samplers_aliases_and_separators() -> None:
    assert parse_samplers("top_k,temp") == ("top_k", "temperature")
    assert parse_samplers("typ_p; top-p  min-p") == ("typical_p", "top_p", "min_p")
    assert parse_samplers(["typical", "TEMP", "Penalties"]) == (
        "typical_p",
        "temperature",
        "penalties",
    )
    assert parse_samplers("") == ()
    with pytest.raises(ValueError, match="more than once"):
        parse_samplers("temp,temperature")


def test_samplers_accepts_a_comma_string_and_aliases() -> None:
    params = SamplerParams(samplers="top_k,temp")  # type: ignore[arg-type]
    assert params.samplers == ("top_k", "temperature")


def test_logit_bias_and_ban_are_not_orderable() -> None:
    with pytest.raises(ValueError, match="samplers"):
        SamplerParams(samplers=("logit_bias", "top_k"))


def test_replace_to_dict_from_dict_hash_eq() -> None:
    params = SamplerParams(
        top_k=5, logit_bias={3: -INF, 1: 0.5}, ban=(7,), samplers=("top_k", "temp")
    )
    assert params.replace(top_k=6).top_k == 6
    with pytest.raises(ValueError, match="top_k"):
        params.replace(top_k=-6)
    data = params.to_dict()
    assert data["logit_bias"] == {"1": 0.5, "3": -INF}
    assert data["samplers"] == ["top_k", "temperature"]
    assert json.loads(json.dumps(data)) == data  # plain JSON values (-inf is written as -Infinity)
    assert SamplerParams.from_dict(data) == params
    assert hash(SamplerParams.from_dict(data)) == hash(params)
    assert params != params.replace(logit_bias={1: 0.5})
    with pytest.raises(ValueError, match="unknown sampler parameter"):
        SamplerParams.from_dict({"topk": 3})


def test_params_are_frozen_and_logit_bias_is_read_only() -> None:
    params = SamplerParams(logit_bias={1: 1.0})
    with pytest.raises(AttributeError):
        params.top_k = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        params.logit_bias[2] = 1.0  # type: ignore[index]


# -- top_k -----------------------------------------------------------------------------------------


def test_top_k_keeps_the_k_largest() -> None:
    result = only("top_k", [1.0, 3.0, 2.0, 0.5], top_k=2)
    assert survivors(result) == [1, 2]
    np.testing.assert_allclose(result.final_probs, softmax([3.0, 2.0]), rtol=1e-15)
    np.testing.assert_allclose(result.dense_probs(), [0.0, *softmax([3.0, 2.0]), 0.0], rtol=1e-15)


def test_top_k_ties_at_the_cut_keep_the_lowest_ids() -> None:
    result = only("top_k", [1.0, 2.0, 2.0, 2.0, 0.0], top_k=2)
    assert survivors(result) == [1, 2]
    np.testing.assert_allclose(result.final_probs, [0.5, 0.5])


def test_top_k_zero_is_off_and_larger_than_vocab_keeps_all() -> None:
    logits = [1.0, 3.0, 2.0]
    off = only("top_k", logits, top_k=0)
    assert off.stages == ()
    np.testing.assert_allclose(off.dense_probs(), softmax(logits), rtol=1e-15)
    huge = only("top_k", logits, top_k=1000)
    np.testing.assert_allclose(huge.dense_probs(), softmax(logits), rtol=1e-15)
    assert [r.name for r in huge.stages] == ["top_k"]


def test_top_k_respects_min_keep() -> None:
    assert survivors(only("top_k", [1.0, 3.0, 2.0, 0.5], top_k=1, min_keep=3)) == [1, 2, 0]


# -- top_p -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "kept"),
    [
        (0.0, [0]),
        (0.4, [0]),
        (0.75, [0, 1]),
        (0.81, [0, 1, 2]),
        (0.96, [0, 1, 2, 3]),
        (0.999, [0, 1, 2, 3]),
    ],
)
def test_top_p_keeps_the_smallest_prefix_reaching_p(p: float, kept: list[int]) -> None:
    result = only("top_p", LOG_PROBS, top_p=p)
    assert survivors(result) == kept
    expected = np.array([0.5, 0.3, 0.15, 0.05])[kept]
    np.testing.assert_allclose(result.final_probs, expected / expected.sum(), rtol=1e-12)


def test_top_p_cut_is_inclusive() -> None:
    # two equal tokens: cumulative 0.5, 1.0; p = 0.5 is reached by the first (cum >= p)
    assert survivors(only("top_p", [0.0, 0.0], top_p=0.5)) == [0]


def test_top_p_one_is_off() -> None:
    result = only("top_p", LOG_PROBS, top_p=1.0)
    assert result.stages == ()
    np.testing.assert_allclose(result.final_probs, [0.5, 0.3, 0.15, 0.05], rtol=1e-12)


def test_top_p_respects_min_keep() -> None:
    assert survivors(only("top_p", LOG_PROBS, top_p=0.1, min_keep=3)) == [0, 1, 2]
    assert survivors(only("top_p", LOG_PROBS, top_p=0.1, min_keep=9)) == [0, 1, 2, 3]


def test_top_p_ties_keep_the_lowest_ids() -> None:
    result = only("top_p", [0.0, 1.0, 1.0, 1.0], top_p=0.5)
    assert survivors(result) == [1, 2]


def test_top_p_on_a_large_flat_row_sorts_beyond_the_first_256() -> None:
    logits = np.linspace(0.0, -1.0, 5000)  # flat: p = 0.9 needs far more than 256 tokens
    result = Pipeline(SamplerParams(samplers=("top_p",), top_p=0.9)).run(logits)
    probs = softmax(list(logits))
    expected_count = int(np.searchsorted(np.cumsum(probs), 0.9)) + 1
    assert expected_count > 256
    assert survivors(result) == list(range(expected_count))


@pytest.mark.parametrize("seed", range(12))
def test_top_p_on_flat_rows_keeps_exactly_the_full_sorts_prefix(seed: int) -> None:
    """The nucleus of a flat row is found without ranking the whole row (running sums of the values,
    then only the kept ids ranked): the same tokens, in the same order, as ranking everything first."""
    from tokenlab.sampling.candidates import Candidates
    from tokenlab.sampling.stages import TopP

    rng = np.random.default_rng(seed)
    size = int(rng.integers(2_000, 40_000))
    row = (rng.standard_normal(size) * rng.uniform(0.2, 3.0)).astype(np.float32)
    if seed % 3 == 0:
        row = np.round(row * 8) / 8  # many exact ties, at the cut too
    if seed % 4 == 1:
        row[rng.choice(size, size // 10, replace=False)] = -np.inf
    top_p = float(rng.choice([0.5, 0.9, 0.95, 0.99, 0.999]))
    min_keep = int(rng.choice([1, 1, 300, 5_000]))
    stage = TopP(top_p, min_keep=min_keep)
    kept = stage._cut(Candidates.dense(row))

    alive = np.flatnonzero(row > -np.inf)  # the reference: rank every alive token (lexsort), then cut
    order = np.lexsort((alive, -row[alive].astype(np.float64)))
    ids, values = alive[order], row[alive][order].astype(np.float64)
    cumulative = np.cumsum(softmax(list(row.astype(np.float64)))[ids])
    count = max(int(np.searchsorted(cumulative, top_p, side="left")) + 1, min_keep)
    assert kept.ids is not None
    np.testing.assert_array_equal(kept.ids, ids[:count])
    np.testing.assert_array_equal(kept.logits, values[:count])


# -- min_p -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "kept"), [(0.2, [0, 1, 2]), (0.35, [0, 1]), (0.61, [0]), (0.09, [0, 1, 2, 3])]
)
def test_min_p_keeps_tokens_above_a_fraction_of_the_max(p: float, kept: list[int]) -> None:
    result = only("min_p", LOG_PROBS, min_p=p)
    assert survivors(result) == kept
    expected = np.array([0.5, 0.3, 0.15, 0.05])[kept]
    np.testing.assert_allclose(result.final_probs, expected / expected.sum(), rtol=1e-12)


def test_min_p_zero_is_off_and_one_keeps_every_maximum() -> None:
    assert only("min_p", LOG_PROBS, min_p=0.0).stages == ()
    assert survivors(only("min_p", [2.0, 1.0, 2.0], min_p=1.0)) == [0, 2]


def test_min_p_respects_min_keep() -> None:
    assert survivors(only("min_p", [3.0, 2.0, 1.0], min_p=1.0, min_keep=2)) == [0, 1]


# -- typical_p -------------------------------------------------------------------------------------
# probs 0.5, 0.3, 0.15, 0.05: entropy 1.14211 nats; |surprisal - entropy| = 0.449, 0.062, 0.755,
# 1.854, so the typical order is ids 1, 0, 2, 3 with cumulative mass 0.3, 0.8, 0.95, 1.0.


@pytest.mark.parametrize(
    ("p", "kept"), [(0.25, [1]), (0.5, [0, 1]), (0.85, [0, 1, 2]), (0.97, [0, 1, 2, 3]), (0.0, [1])]
)
def test_typical_p_keeps_the_most_typical_tokens(p: float, kept: list[int]) -> None:
    result = only("typical_p", LOG_PROBS, typical_p=p)
    assert survivors(result) == kept
    expected = np.array([0.5, 0.3, 0.15, 0.05])[kept]
    np.testing.assert_allclose(result.final_probs, expected / expected.sum(), rtol=1e-12)


def test_typical_p_cut_is_strictly_greater() -> None:
    # two equal tokens: typical order 0, 1 with cumulative 0.5, 1.0; p = 0.5 is not exceeded by 0.5
    assert survivors(only("typical_p", [0.0, 0.0], typical_p=0.5)) == [0, 1]


def test_typical_p_one_is_off_and_min_keep_is_respected() -> None:
    assert only("typical_p", LOG_PROBS, typical_p=1.0).stages == ()
    assert survivors(only("typical_p", LOG_PROBS, typical_p=0.25, min_keep=3)) == [0, 1, 2]


# -- temperature -----------------------------------------------------------------------------------


def test_temperature_divides_the_logits() -> None:
    result = only("temperature", [1.0, 2.0, 3.0], temperature=0.5)
    np.testing.assert_allclose(result.final_probs, softmax([6.0, 4.0, 2.0]), rtol=1e-14)
    np.testing.assert_allclose(result.stages[0].logits, [2.0, 4.0, 6.0])
    hot = only("temperature", [1.0, 2.0, 3.0], temperature=2.0)
    np.testing.assert_allclose(hot.dense_probs(), softmax([0.5, 1.0, 1.5]), rtol=1e-14)


def test_temperature_zero_is_greedy_with_ties_to_the_lowest_id() -> None:
    result = only("temperature", [3.0, 1.0, 3.0, 2.0], temperature=0.0)
    assert survivors(result) == [0]
    np.testing.assert_array_equal(result.dense_probs(), [1.0, 0.0, 0.0, 0.0])
    assert result.removed_by(2) == "temperature"


def test_greedy_after_top_k_keeps_the_argmax() -> None:
    result = Pipeline(SamplerParams(temperature=0.0)).run(np.array([0.5, 4.0, 4.0, 1.0]))
    assert survivors(result) == [1]


def test_tiny_temperature_does_not_overflow() -> None:
    result = only("temperature", [-1.0, -2.0, 5.0, 5.0 - 1e-12], temperature=1e-308)
    assert np.isfinite(result.final_probs).all()
    np.testing.assert_allclose(result.dense_probs(), [0.0, 0.0, 1.0, 0.0])
    assert result.final.count() == 4  # temperature removes nothing


# -- penalties -------------------------------------------------------------------------------------


def test_penalties_follow_llama_cpp() -> None:
    logits = [1.0, -3.0, 2.0, 0.5]
    result = only(
        "penalties",
        logits,
        history=(1, 1, 2),
        repeat_penalty=1.5,
        frequency_penalty=0.1,
        presence_penalty=0.2,
    )
    # token 1 (seen twice, logit <= 0): -3 * 1.5 - (2 * 0.1 + 0.2)
    # token 2 (seen once): 2 / 1.5 - (0.1 + 0.2)
    expected_logits = [1.0, -4.9, 2.0 / 1.5 - 0.3, 0.5]
    np.testing.assert_allclose(result.stages[0].logits, expected_logits, rtol=1e-15)
    np.testing.assert_allclose(result.dense_probs(), softmax(expected_logits), rtol=1e-14)


def test_penalty_window_and_switches() -> None:
    logits = [1.0, 1.0, 1.0]
    last_one = only("penalties", logits, history=(0, 1), repeat_penalty=2.0, penalty_last_n=1)
    np.testing.assert_allclose(last_one.stages[0].logits, [1.0, 0.5, 1.0])
    whole = only("penalties", logits, history=(0, 1), repeat_penalty=2.0, penalty_last_n=-1)
    np.testing.assert_allclose(whole.stages[0].logits, [0.5, 0.5, 1.0])
    assert (
        only("penalties", logits, history=(0, 1), repeat_penalty=2.0, penalty_last_n=0).stages == ()
    )
    assert only("penalties", logits, history=(0, 1)).stages == ()  # neutral values: no-op
    outside = only(
        "penalties", logits, history=(7, -1, 2), repeat_penalty=2.0
    )  # ids outside are ignored
    np.testing.assert_allclose(outside.stages[0].logits, [1.0, 1.0, 0.5])


def test_penalties_after_top_k_touch_only_survivors() -> None:
    params = SamplerParams(samplers=("top_k", "penalties"), top_k=2, repeat_penalty=2.0)
    result = Pipeline(params).run(np.array([4.0, 3.0, 2.0]), history=[0, 2])
    assert survivors(result) == [1, 0]  # 4 / 2 = 2 < 3: re-sorted
    np.testing.assert_allclose(result.final_logits, [3.0, 2.0])


# -- logit_bias, ban, order ------------------------------------------------------------------------


def test_logit_bias_adds_and_minus_inf_bans() -> None:
    result = only("temperature", [1.0, 2.0, 3.0], logit_bias={0: 5.0, 2: -INF}, temperature=1.0)
    assert [r.name for r in result.stages] == ["logit_bias"]
    np.testing.assert_allclose(result.dense_probs(), [*softmax([6.0, 2.0]), 0.0], rtol=1e-15)
    assert result.removed_by(2) == "logit_bias"


def test_ban_removes_tokens_and_runs_after_logit_bias() -> None:
    result = Pipeline(SamplerParams(logit_bias={1: 10.0}, ban=(1,), **ALL_OFF)).run(
        np.array([1.0, 2.0, 3.0])
    )
    assert [r.name for r in result.stages] == ["logit_bias", "ban"]
    low, high = softmax([1.0, 3.0])
    np.testing.assert_allclose(result.dense_probs(), [low, 0.0, high], rtol=1e-15)
    assert result.removed_by(1) == "ban"


@pytest.mark.parametrize("params", [{"logit_bias": {5: 1.0}}, {"ban": (3, 5)}])
def test_ids_outside_the_vocabulary_raise(params: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"token id 5 .*n_vocab=3"):
        Pipeline(SamplerParams(**params)).run(np.zeros(3))  # type: ignore[arg-type]


def test_order_matters_and_unlisted_stages_are_off() -> None:
    logits = np.array(LOG_PROBS)
    # top_p before temperature sees the sharp distribution; after temperature 3 it sees a flat one
    sharp_first = Pipeline(
        SamplerParams(samplers=("top_p", "temperature"), top_p=0.75, temperature=3.0)
    ).run(logits)
    flat_first = Pipeline(
        SamplerParams(samplers=("temperature", "top_p"), top_p=0.75, temperature=3.0)
    ).run(logits)
    assert survivors(sharp_first) == [0, 1]
    assert survivors(flat_first) == [0, 1, 2]
    assert [r.name for r in flat_first.stages] == ["temperature", "top_p"]
    nothing = Pipeline(SamplerParams(samplers=())).run(logits)
    assert nothing.stages == ()
    np.testing.assert_allclose(nothing.final_probs, [0.5, 0.3, 0.15, 0.05], rtol=1e-12)


# -- reports and results ---------------------------------------------------------------------------


def test_stage_reports_show_each_stage() -> None:
    logits = np.array([1.0, 5.0, 3.0, 2.0, 4.0], dtype=np.float32)
    result = Pipeline(SamplerParams(top_k=3, top_p=1.0, min_p=0.0, temperature=0.5)).run(logits)
    top_k, temperature = result.stages
    assert isinstance(top_k, StageReport)
    assert (top_k.name, top_k.n_in, top_k.n_kept, top_k.n_removed) == ("top_k", 5, 3, 2)
    np.testing.assert_array_equal(top_k.kept_ids, [1, 4, 2])
    np.testing.assert_allclose(top_k.logits, [5.0, 4.0, 3.0])
    np.testing.assert_allclose(top_k.probs(), softmax([5.0, 4.0, 3.0]))
    np.testing.assert_allclose(temperature.logits, [10.0, 8.0, 6.0])
    assert temperature.params == {"temperature": 0.5, "effective_temperature": 0.5}
    assert top_k.cutoff is not None and (top_k.cutoff.value, top_k.cutoff.scale) == (3.0, "logit")
    assert top_k.mass_kept == pytest.approx(softmax([1.0, 5.0, 3.0, 2.0, 4.0])[[1, 4, 2]].sum())
    assert temperature.cutoff is None and temperature.mass_kept == 1.0
    ids, probs = temperature.top(2)
    np.testing.assert_array_equal(ids, [1, 4])
    np.testing.assert_allclose(probs, softmax([10.0, 8.0, 6.0])[:2])
    assert temperature.prob_of(0) == 0.0 and temperature.contains(4)


def test_dense_reports_keep_their_own_view_of_the_row() -> None:
    params = SamplerParams(
        logit_bias={0: 1.0}, ban=(1,), repeat_penalty=2.0, samplers=("penalties",), temperature=1.0
    )
    logits = np.array([1.0, 2.0, 3.0, 4.0])
    bias, ban, penalties = Pipeline(params).run(logits, history=[3]).stages
    assert bias.kept_ids is None and ban.kept_ids is None and penalties.kept_ids is None
    np.testing.assert_array_equal(bias.logits, [2.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(ban.logits, [2.0, -INF, 3.0, 4.0])
    np.testing.assert_array_equal(penalties.logits, [2.0, -INF, 3.0, 2.0])
    assert (bias.n_kept, ban.n_kept, penalties.n_kept) == (4, 3, 3)
    np.testing.assert_allclose(
        ban.probs(), [*softmax([2.0, 3.0, 4.0])[:1], 0.0, *softmax([2.0, 3.0, 4.0])[1:]]
    )
    np.testing.assert_array_equal(logits, [1.0, 2.0, 3.0, 4.0])


def test_result_lookups() -> None:
    result = Pipeline(SamplerParams(top_k=2, top_p=1.0, min_p=0.0, temperature=1.0)).run(
        np.array([1.0, 3.0, 2.0])
    )
    assert result.n_vocab == 3 and result.n_final == 2
    assert result.final_ids.dtype == np.int64 and result.final_probs.dtype == np.float64
    assert result.prob_of(1) == pytest.approx(softmax([3.0, 2.0])[0], rel=1e-15)
    assert result.prob_of(0) == 0.0
    assert (result.removed_by(0), result.removed_by(1), result.removed_by(2)) == (
        "top_k",
        None,
        None,
    )
    assert result.final_entropy_bits == pytest.approx(
        -(softmax([3.0, 2.0]) * np.log2(softmax([3.0, 2.0]))).sum()
    )
    with pytest.raises(ValueError, match="token id 3"):
        result.prob_of(3)


def test_input_is_never_mutated() -> None:
    rng = np.random.default_rng(3)
    params = SamplerParams(
        logit_bias={0: 2.0, 5: -INF},
        ban=(4,),
        repeat_penalty=1.3,
        frequency_penalty=0.2,
        presence_penalty=0.1,
        typical_p=0.9,
        top_k=0,
    )
    for dtype in (np.float32, np.float64):
        logits = rng.normal(size=300).astype(dtype)
        logits[[7, 8, 9]] = [NAN, INF, -INF]
        before = logits.copy()
        for current in (params, params.replace(top_k=20), params.replace(temperature=0.0)):
            result = Pipeline(current).run(logits, history=list(range(20)))
            for report in result.stages:
                _ = report.logits, report.probs()
            result.dense_probs()
            np.testing.assert_array_equal(logits, before)
        raw_stats(logits)
        np.testing.assert_array_equal(logits, before)


# -- drawing ---------------------------------------------------------------------------------------


def test_draw_is_deterministic_for_a_seed() -> None:
    logits = np.random.default_rng(0).normal(size=1000)
    result = Pipeline(SamplerParams(top_k=0, top_p=1.0, min_p=0.0)).run(logits)
    first = [result.draw(np.random.default_rng(42)) for _ in range(3)]
    assert len(set(first)) == 1
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    assert [result.draw(rng_a) for _ in range(50)] == [result.draw(rng_b) for _ in range(50)]


def test_draw_uses_exactly_one_random_number_and_the_inverse_cdf() -> None:
    result = only("temperature", LOG_PROBS, temperature=1.0)
    rng, twin = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(100):
        u = twin.random()
        expected = int(np.searchsorted(np.cumsum([0.5, 0.3, 0.15, 0.05]), u, side="right"))
        assert result.draw(rng) == expected


def test_draw_follows_the_probabilities() -> None:
    result = only("temperature", LOG_PROBS, temperature=1.0)
    rng = np.random.default_rng(2024)
    counts = np.bincount([result.draw(rng) for _ in range(20_000)], minlength=4) / 20_000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.015)


def test_dense_draw_matches_the_full_inverse_cdf() -> None:
    logits = (
        np.random.default_rng(1).normal(size=3000) * 0.3
    )  # flat: draws often fall past the best 256
    result = Pipeline(SamplerParams(**ALL_OFF)).run(logits)
    twin = Pipeline(SamplerParams(**ALL_OFF)).run(logits)
    _ = twin.final_ids  # forces the fully ranked path
    for seed in range(200):
        assert result.draw(np.random.default_rng(seed)) == twin.draw(np.random.default_rng(seed))


def test_draw_never_returns_a_removed_token() -> None:
    result = Pipeline(SamplerParams(top_k=3)).run(np.arange(50, dtype=np.float32))
    rng = np.random.default_rng(0)
    assert {result.draw(rng) for _ in range(500)} <= {47, 48, 49}


# -- degenerate logits -----------------------------------------------------------------------------


def assert_valid(result: PipelineResult) -> np.ndarray:
    probs = result.dense_probs()
    assert np.isfinite(probs).all() and (probs >= 0).all()
    assert abs(probs.sum() - 1.0) < 1e-12
    assert abs(result.final_probs.sum() - 1.0) < 1e-12
    return probs


PARAMS_UNDER_TEST = [
    SamplerParams(),
    SamplerParams(temperature=0.0),
    SamplerParams(top_k=0, typical_p=0.5, min_keep=2),
    SamplerParams(top_k=1000, top_p=0.0, min_p=1.0),
    SamplerParams(repeat_penalty=1.5, frequency_penalty=1.0, ban=(0,)),
]


@pytest.mark.parametrize("params", PARAMS_UNDER_TEST)
def test_nan_logits_are_removed(params: SamplerParams) -> None:
    result = Pipeline(params).run(np.array([NAN, 1.0, 2.0, NAN]), history=[1])
    probs = assert_valid(result)
    assert probs[0] == 0.0 and probs[3] == 0.0
    assert result.removed_by(3) == "input"


@pytest.mark.parametrize("params", PARAMS_UNDER_TEST)
def test_plus_inf_logits_share_the_mass(params: SamplerParams) -> None:
    probs = assert_valid(Pipeline(params).run(np.array([1.0, INF, 3.0, INF])))
    if (
        params.temperature == 0.0 or params.top_p == 0.0
    ):  # a single survivor: the lowest id among the +inf
        np.testing.assert_array_equal(probs, [0.0, 1.0, 0.0, 0.0])
    else:
        np.testing.assert_array_equal(probs, [0.0, 0.5, 0.0, 0.5])


@pytest.mark.parametrize("row", [[-INF, -INF, -INF], [NAN, NAN, NAN], [NAN, -INF, NAN]])
@pytest.mark.parametrize("params", PARAMS_UNDER_TEST[:4])
def test_rows_without_a_finite_logit_are_uniform(row: list[float], params: SamplerParams) -> None:
    result = Pipeline(params).run(np.array(row))
    np.testing.assert_allclose(assert_valid(result), [1 / 3] * 3)
    assert result.uniform_fallback and result.removed_by(0) is None


def test_banning_every_finite_token_is_uniform_over_the_allowed_ones() -> None:
    result = Pipeline(SamplerParams(ban=(1,), logit_bias={3: -INF})).run(
        np.array([-INF, 2.0, -INF, 1.0])
    )
    np.testing.assert_allclose(assert_valid(result), [0.5, 0.0, 0.5, 0.0])
    assert result.uniform_fallback
    assert (result.removed_by(1), result.removed_by(3), result.removed_by(0)) == (
        "ban",
        "logit_bias",
        None,
    )


def test_banning_the_whole_vocabulary_is_uniform_over_it() -> None:
    result = Pipeline(SamplerParams(ban=(0, 1))).run(np.array([1.0, 2.0]))
    np.testing.assert_allclose(assert_valid(result), [0.5, 0.5])


@pytest.mark.parametrize("params", PARAMS_UNDER_TEST)
def test_vocabulary_of_one(params: SamplerParams) -> None:
    if params.ban:
        params = params.replace(ban=())
    result = Pipeline(params).run(np.array([0.3], dtype=np.float32), history=[0, 0])
    np.testing.assert_array_equal(assert_valid(result), [1.0])
    assert survivors(result) == [0]


@pytest.mark.parametrize("params", PARAMS_UNDER_TEST)
def test_all_but_one_masked(params: SamplerParams) -> None:
    row = np.full(100, -INF)
    row[42] = -1e30
    probs = assert_valid(Pipeline(params).run(row))
    assert probs[42] == 1.0


def test_min_keep_larger_than_the_alive_tokens_keeps_them_all() -> None:
    row = np.array([1.0, -INF, 2.0, NAN])
    for stage in ("top_k", "top_p", "min_p", "typical_p"):
        result = only(stage, list(row), top_k=1, top_p=0.1, min_p=0.9, typical_p=0.1, min_keep=10)
        assert sorted(survivors(result)) == [0, 2]


def test_other_input_shapes_and_types() -> None:
    np.testing.assert_allclose(distribution([1, 2, 3], **ALL_OFF), softmax([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(
        distribution(np.array([1, 2], dtype=np.float16), **ALL_OFF), softmax([1.0, 2.0])
    )
    with pytest.raises(ValueError, match="1-D"):
        Pipeline().run(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="at least one"):
        Pipeline().run(np.zeros(0))


# -- distribution() and raw_stats ------------------------------------------------------------------


def test_distribution_shortcut() -> None:
    probs = distribution(np.array(LOG_PROBS), top_p=0.75, samplers="top_p")
    np.testing.assert_allclose(probs, [0.625, 0.375, 0.0, 0.0], rtol=1e-12)
    probs = distribution(
        np.array([1.0, 1.0, 1.0]), history=[0], repeat_penalty=2.0, samplers=["penalties"]
    )
    np.testing.assert_allclose(probs, softmax([0.5, 1.0, 1.0]))
    with pytest.raises(ValueError, match="unknown sampler parameter"):
        distribution(np.zeros(2), topk=3)


@pytest.mark.parametrize(("dtype", "rel"), [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_raw_stats_matches_a_float64_reference(dtype, rel) -> None:
    """A float64 row is exact to float64; a float32 row (llama.cpp's) is shifted and exponentiated in
    float32 with float64 sums, as llama.cpp's own softmax is: a tail token 17 nats down is off by up to
    ~1e-6 relative (the float32 rounding of logit - max), the normaliser and entropy by ~1e-8."""
    logits = (np.random.default_rng(11).normal(size=5000).astype(np.float32) * 4).astype(dtype)
    stats = raw_stats(logits)
    assert isinstance(stats, RawStats)
    reference = softmax(list(logits.astype(np.float64)))
    assert stats.log_normalizer == pytest.approx(
        np.log(np.exp(logits.astype(np.float64)).sum()), rel=min(rel, 1e-9)
    )
    assert stats.entropy_bits == pytest.approx(-(reference * np.log2(reference)).sum(), rel=min(rel, 1e-7))
    for token_id in (0, 17, int(np.argmax(logits)), 4999):
        assert stats.prob(token_id) == pytest.approx(reference[token_id], rel=rel)
        assert stats.rank(token_id) == int((logits > logits[token_id]).sum())
    assert stats.rank(int(np.argmax(logits))) == 0
    np.testing.assert_array_equal(stats.top_ids(5), np.argsort(-reference, kind="stable")[:5])
    np.testing.assert_allclose(stats.probs(np.array([3, 4])), reference[[3, 4]], rtol=rel)


def test_raw_stats_degenerate_rows() -> None:
    stats = raw_stats(np.array([1.0, -INF, NAN, 1.0]))
    assert stats.prob(0) == pytest.approx(0.5) and stats.prob(1) == 0.0 and stats.prob(2) == 0.0
    assert stats.entropy_bits == pytest.approx(1.0)
    assert (stats.rank(0), stats.rank(1), stats.rank(2)) == (0, 2, 2)
    with_inf = raw_stats(np.array([1.0, INF, INF, 5.0]))
    assert (with_inf.prob(1), with_inf.prob(3)) == (0.5, 0.0)
    assert with_inf.entropy_bits == pytest.approx(1.0)
    flat = raw_stats(np.array([NAN, -INF, -INF, -INF]))
    assert flat.prob(0) == pytest.approx(0.25) and flat.entropy_bits == pytest.approx(2.0)
    assert raw_stats(np.array([3.0])).entropy_bits == 0.0
    with pytest.raises(ValueError, match="token id 9"):
        stats.prob(9)


# -- cost structure (timings live in scripts/bench; this checks the shape that keeps the step cheap) -----


def test_default_chain_works_on_survivors_after_top_k() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(-2.0, 2.5, 262_144).astype(np.float32)
    logits[rng.choice(262_144, 30, replace=False)] += 12.0
    result = Pipeline(SamplerParams()).run(logits, list(range(500)))
    names = [stage.name for stage in result.stages]
    assert names[0] == "top_k"
    for (
        stage
    ) in result.stages:  # from top_k on, every stage holds only the survivors, never the full row
        assert stage.kept_ids is not None and stage.kept_ids.shape[0] <= 40
    assert result.final_ids.shape[0] <= 40


def test_the_keyed_ranking_is_lexsorts() -> None:
    """rank packs float32 values and ids into int64 keys for long rows: the same order as lexsort,
    with negative values, both zeros, infinities and ties among them."""
    from tokenlab.sampling.candidates import rank, sort_dense, top_k_dense

    rng = np.random.default_rng(5)
    values = np.round(rng.standard_normal(9_000) * 4, 1).astype(np.float32)  # many ties
    values[::97] = 0.0
    values[5::97] = -0.0
    values[7::389] = np.inf
    values[11::211] = -3.4028235e38
    ids = np.sort(rng.choice(262_144, values.shape[0], replace=False))
    row = np.full(262_144, -np.inf, dtype=np.float32)
    row[ids] = values
    expected = np.lexsort((ids, -values.astype(np.float64)))
    for got_ids, got_values, count in (rank(row, ids, values) + (9_000,), top_k_dense(row, 5_000) + (5_000,),
                                       sort_dense(row) + (9_000,), rank(row, ids[:100], values[:100]) + (100,)):
        want = expected if count != 100 else np.lexsort((ids[:100], -values[:100].astype(np.float64)))
        source = ids if count != 100 else ids[:100]
        assert got_ids.dtype == np.int64 and got_values.dtype == np.float64
        np.testing.assert_array_equal(got_ids, source[want][:count])
        np.testing.assert_array_equal(got_values, row[source[want][:count]].astype(np.float64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_draw_deep_in_a_flat_distribution_is_the_full_rankings(dtype: type) -> None:
    """The draw ranks a few hundred tokens first, then eight times as many while u falls past their mass:
    every u picks the token the inverse CDF over the whole ranked row picks."""
    rng = np.random.default_rng(8)
    logits = (rng.standard_normal(30_000) * 0.5).astype(dtype)
    logits[::7] = np.round(logits[::7], 1)  # ties
    logits[::13] = -np.inf
    result = Pipeline(SamplerParams(top_k=0, top_p=1.0, min_p=0.0, temperature=1.3)).run(logits)
    assert result.final.ids is None and result.n_final > 20_000
    dense = result.dense_probs()
    alive = np.flatnonzero(dense > 0)
    ranked = alive[np.lexsort((alive, -dense[alive]))]
    cumulative = np.cumsum(dense[ranked])
    for u in [0.0, 0.01, 0.2, 0.5, 0.77, 0.9, 0.99, 0.999, 0.99999, *rng.random(20)]:
        expected = ranked[min(int(np.searchsorted(cumulative, u, side="right")), ranked.shape[0] - 1)]
        fresh = Pipeline(result.params).run(logits)  # no ranking cached from an earlier draw
        assert fresh.draw(None, u=float(u)) == expected, u


@pytest.mark.parametrize("ties", ["few", "many"])
def test_float64_ranking_is_lexsorts(ties: str) -> None:
    from tokenlab.sampling.candidates import rank

    rng = np.random.default_rng(9)
    values = rng.standard_normal(20_000) / 0.7
    values[::50] = np.round(values[::50], 1) if ties == "few" else values[::50]
    if ties == "many":
        values = np.round(values, 2)
    values[::301] = 0.0
    values[1::301] = -0.0
    values[2::997] = np.inf
    ids = np.sort(rng.choice(100_000, values.shape[0], replace=False))
    row = np.full(100_000, -np.inf)
    row[ids] = values
    got_ids, got_values = rank(row, ids, values)
    order = np.lexsort((ids, -values))
    np.testing.assert_array_equal(got_ids, ids[order])
    np.testing.assert_array_equal(got_values, values[order])
