"""The KGW watermark stage and its z-test, and Fast-DetectGPT's criterion, on hand-made data."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from tokenlab.lab.knobs import KNOBS_BY_NAME, nudge, toggle_stage
from tokenlab.lab.score import ScoredToken, ScoreResult
from tokenlab.sampling import DEFAULT_ORDER, Pipeline, SamplerParams, order_preset, raw_stats
from tokenlab.sampling.watermark import (
    CONTEXT_WIDTH,
    Watermark,
    detect_watermark,
    green_list_size,
    green_mask,
    is_green,
    p_value,
    z_score,
)


# -- the green lists -------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["lefthash", "selfhash"])
def test_green_list_is_a_pure_function_of_key_and_context(scheme: str) -> None:
    context = [17, 4, 99, 2301]
    first = green_mask(5, context, 49_152, 0.25, scheme)
    again = green_mask(5, list(context), 49_152, 0.25, scheme)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, green_mask(5, np.array(context), 49_152, 0.25, scheme))
    # another key, or another previous token, gives another list (overlap ~ gamma, not 1)
    other_key = green_mask(6, context, 49_152, 0.25, scheme)
    other_token = green_mask(5, [*context[:-1], 2302], 49_152, 0.25, scheme)
    for other in (other_key, other_token):
        overlap = np.count_nonzero(first & other) / np.count_nonzero(first)
        assert 0.2 < overlap < 0.3


def test_lefthash_reads_only_the_previous_token() -> None:
    np.testing.assert_array_equal(
        green_mask(5, [1, 2, 3, 77], 5_000, 0.25), green_mask(5, [9, 77], 5_000, 0.25)
    )


@pytest.mark.parametrize("n_vocab", [10, 1_000, 49_152, 262_144])
@pytest.mark.parametrize("gamma", [0.1, 0.25, 0.5, 0.9])
def test_lefthash_makes_exactly_gamma_of_the_vocabulary_green(n_vocab: int, gamma: float) -> None:
    expected = green_list_size(gamma, n_vocab)
    assert abs(expected - gamma * n_vocab) <= 0.5  # gamma of the vocabulary, within rounding
    for previous in (0, 1, 12_345 % n_vocab):
        assert np.count_nonzero(green_mask(3, [previous], n_vocab, gamma)) == expected


def test_selfhash_makes_about_gamma_of_the_vocabulary_green() -> None:
    n_vocab, gamma = 49_152, 0.25
    spread = math.sqrt(n_vocab * gamma * (1 - gamma))  # each token green with probability gamma
    for context in ([1, 2, 3, 4], [50, 60], [49_151]):
        count = np.count_nonzero(green_mask(3, context, n_vocab, gamma, "selfhash"))
        assert abs(count - gamma * n_vocab) < 5 * spread


@pytest.mark.parametrize("scheme", ["lefthash", "selfhash"])
def test_is_green_agrees_with_the_mask(scheme: str) -> None:
    context = [8, 16, 32, 64]
    mask = green_mask(11, context, 2_000, 0.3, scheme)
    assert [is_green(11, context, v, 2_000, 0.3, scheme) for v in range(2_000)] == mask.tolist()


# -- the stage -------------------------------------------------------------------------------------


def test_watermark_stage_adds_delta_to_the_green_logits_only() -> None:
    logits = np.random.default_rng(0).standard_normal(3_000).astype(np.float32)
    before = logits.copy()
    history = [5, 6, 7]
    params = SamplerParams(samplers=("watermark",), watermark_key=9, watermark_delta=1.5)
    result = Pipeline(params).run(logits, history)
    np.testing.assert_array_equal(logits, before)  # the input is left alone
    green = green_mask(9, history, 3_000, 0.25)
    after = result.stages[0].logits
    np.testing.assert_allclose(after[green], before[green].astype(np.float64) + 1.5)
    np.testing.assert_array_equal(after[~green], before[~green].astype(np.float64))
    # probability moves: every green/red probability ratio grows by e^delta
    probs = result.probs_of(np.arange(3_000))
    raw = np.exp(before - before.max()) / np.exp(before - before.max()).sum()
    g, r = int(np.flatnonzero(green)[0]), int(np.flatnonzero(~green)[0])
    assert probs[g] / probs[r] == pytest.approx(raw[g] / raw[r] * math.exp(1.5), rel=1e-5)
    assert result.stages[0].params["green"] == int(green.sum())
    assert result.removed_by(g) is None and result.removed_by(r) is None  # it removes nothing


@pytest.mark.parametrize("scheme", ["lefthash", "selfhash"])
def test_sparse_watermark_agrees_with_dense(scheme: str) -> None:
    """After a cut the stage touches only the survivors, with the same green test."""
    logits = np.random.default_rng(1).standard_normal(5_000)
    history = [10, 20, 30, 40, 50]
    common = {"watermark_key": 4, "watermark_delta": 3.0, "watermark_scheme": scheme, "top_k": 50,
              "top_p": 1.0, "min_p": 0.0, "temperature": 1.0}
    before_cut = Pipeline(SamplerParams(samplers=("watermark", "top_k"), **common)).run(logits, history)
    after_cut = Pipeline(SamplerParams(samplers=("top_k", "watermark"), **common)).run(logits, history)
    top = after_cut.stages[0].kept_ids
    green = green_mask(4, history, 5_000, 0.25, scheme)[top]
    shifted = after_cut.stages[1]
    np.testing.assert_allclose(
        shifted.logits, np.sort(logits[top] + 3.0 * green)[::-1]
    )  # re-sorted by the new logits
    assert before_cut.stages[0].n_kept == 5_000
    assert after_cut.stages[1].n_kept == 50


def test_watermark_is_off_without_a_key_or_with_delta_zero() -> None:
    assert Watermark.from_params(SamplerParams()) is None
    assert Watermark.from_params(SamplerParams(watermark_key=1, watermark_delta=0.0)) is None
    assert isinstance(Watermark.from_params(SamplerParams(watermark_key=1)), Watermark)
    assert "watermark" in DEFAULT_ORDER
    assert DEFAULT_ORDER.index("watermark") < DEFAULT_ORDER.index("top_k")
    for preset in ("transformers", "greedy", "mirostat"):
        assert "watermark" in order_preset(preset)


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"watermark_key": -1}, "watermark_key"),
        ({"watermark_key": 2**63}, "watermark_key"),
        ({"watermark_key": "k"}, "watermark_key"),
        ({"watermark_gamma": 0.0}, "watermark_gamma"),
        ({"watermark_gamma": 1.0}, "watermark_gamma"),
        ({"watermark_delta": -1.0}, "watermark_delta"),
        ({"watermark_scheme": "minhash"}, "watermark_scheme"),
    ],
)
def test_bad_watermark_parameters_name_themselves(changes: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        SamplerParams(**changes)


def test_watermark_params_round_trip_and_knobs() -> None:
    params = SamplerParams(watermark_key=42, watermark_gamma=0.5, watermark_delta=4.0,
                           watermark_scheme="selfhash")
    assert SamplerParams.from_dict(params.to_dict()) == params
    # the lab's key knob starts from "off" and turns like the others
    assert KNOBS_BY_NAME["watermark_key"].format(None) == "off"
    assert nudge(SamplerParams(), "watermark_key", 1).watermark_key == 1
    assert nudge(params, "watermark_delta", 1).watermark_delta == pytest.approx(4.1)
    assert "watermark" not in toggle_stage(params, "watermark").samplers


# -- the z-test ------------------------------------------------------------------------------------


def test_z_and_p_against_a_hand_computation() -> None:
    # T = 100 tokens, 40 green, gamma = 0.25: z = (40 - 25) / sqrt(100 * 0.25 * 0.75) = 15 / 4.3301
    assert z_score(40, 100, 0.25) == pytest.approx(3.4641016, rel=1e-7)
    # P(Z >= 3.4641) = 0.000266; P(Z >= 0) = 0.5; P(Z >= -1.96) = 0.975
    assert p_value(3.4641016) == pytest.approx(2.6603e-4, rel=1e-3)
    assert p_value(0.0) == 0.5
    assert p_value(-1.959964) == pytest.approx(0.975, rel=1e-6)
    assert math.isnan(z_score(0, 0, 0.25))


def test_detection_counts_each_ngram_once_and_skips_the_first_tokens() -> None:
    n_vocab, key = 1_000, 3
    tokens = [1, 2, 3, 2, 3, 2, 3, 4]  # (2, 3) and (3, 2) repeat
    result = detect_watermark(tokens, key=key, n_vocab=n_vocab, gamma=0.25)
    assert result.green[0] is None and not result.counted[0]
    assert result.counted == (False, True, True, True, False, False, False, True)
    expected_green = [is_green(key, [tokens[i - 1]], tokens[i], n_vocab, 0.25) for i in range(1, 8)]
    assert list(result.green[1:]) == expected_green
    counted_green = sum(g for g, c in zip(result.green, result.counted) if c)
    assert result.total == 4 and result.green_count == counted_green
    assert result.z == pytest.approx((counted_green - 1.0) / math.sqrt(4 * 0.25 * 0.75))
    every = detect_watermark(tokens, key=key, n_vocab=n_vocab, ignore_repeated_ngrams=False)
    assert every.total == 7
    selfhash = detect_watermark(tokens, key=key, n_vocab=n_vocab, scheme="selfhash")
    assert selfhash.green[: CONTEXT_WIDTH["selfhash"]] == (None,) * 4


def test_text_sampled_from_green_lists_is_detected_and_other_keys_are_not() -> None:
    """Tokens drawn only from the key's green lists give a huge z; other keys see ~gamma green."""
    rng = np.random.default_rng(0)
    n_vocab, tokens = 5_000, [7]
    for _ in range(200):
        tokens.append(int(rng.choice(np.flatnonzero(green_mask(1, tokens, n_vocab, 0.25)))))
    assert detect_watermark(tokens, key=1, n_vocab=n_vocab).z > 10
    wrong = [detect_watermark(tokens, key=k, n_vocab=n_vocab).z for k in range(2, 12)]
    assert abs(float(np.mean(wrong))) < 1.0


# -- Fast-DetectGPT --------------------------------------------------------------------------------


def test_logprob_moments_against_a_direct_computation() -> None:
    logits = np.array([2.0, 1.0, 0.0, -1.0, -np.inf])
    probs = np.exp(logits[:4]) / np.exp(logits[:4]).sum()
    logp = np.log(probs)
    mean = float((probs * logp).sum())
    variance = float((probs * logp**2).sum() - mean**2)
    got_mean, got_variance = raw_stats(logits).logprob_moments()
    assert got_mean == pytest.approx(mean, rel=1e-12)
    assert got_variance == pytest.approx(variance, rel=1e-12)
    assert got_mean == pytest.approx(-raw_stats(logits).entropy_bits * math.log(2), rel=1e-12)
    assert raw_stats(np.zeros(4)).logprob_moments() == pytest.approx((-math.log(4), 0.0))


def _token(index: int, probs: list[float], chosen: int) -> ScoredToken:
    p = np.asarray(probs)
    mean = float((p * np.log(p)).sum())
    variance = float((p * np.log(p) ** 2).sum() - mean**2)
    return ScoredToken(index, chosen, "x", "x", float(p[chosen]), math.log(p[chosen]), 1, 0.0, (),
                       mean, variance)


def test_fast_detectgpt_against_a_direct_computation() -> None:
    first = [0.7, 0.2, 0.1]
    second = [0.5, 0.5]
    third = [0.9, 0.05, 0.05]
    tokens = (
        ScoredToken(0, 0, "x", "x", None, None, None, None, ()),
        _token(1, first, 0),
        _token(2, second, 1),
        _token(3, third, 2),
    )
    result = ScoreResult(tokens, "test", 1)
    log_likelihood = math.log(0.7) + math.log(0.5) + math.log(0.05)
    means = [sum(p * math.log(p) for p in dist) for dist in (first, second, third)]
    variances = [sum(p * math.log(p) ** 2 for p in dist) - m**2 for dist, m in zip((first, second, third), means)]
    expected = (log_likelihood - sum(means)) / math.sqrt(sum(variances))
    assert result.fast_detectgpt == pytest.approx(expected, rel=1e-12)
    assert result.summary()["fast_detectgpt"] == pytest.approx(expected, rel=1e-12)
    # the likeliest token everywhere scores above 0, the unlikeliest below
    likeliest = ScoreResult((tokens[0], _token(1, first, 0), _token(2, third, 0)), "test", 1)
    unlikeliest = ScoreResult((tokens[0], _token(1, first, 2), _token(2, third, 1)), "test", 1)
    assert likeliest.fast_detectgpt > 0 > unlikeliest.fast_detectgpt


# -- like any stage: stage view, presets ------------------------------------------------------------


def test_stage_view_shows_the_watermark_moving_probabilities(tmp_path) -> None:
    from rich.console import Console

    from tokenlab.lab.stages import stage_view
    from tokenlab.presets import load_preset, save_preset
    from tokenlab.render import stage_view_tables

    logits = np.random.default_rng(2).standard_normal(1_000)
    history = [3, 1, 4]
    params = SamplerParams(watermark_key=77, top_p=1.0, min_p=0.0, temperature=1.0)
    result = Pipeline(params).run(logits, history)
    assert [report.name for report in result.stages] == ["watermark", "top_k"]
    green = green_mask(77, history, 1_000, 0.25)
    ids = [int(np.flatnonzero(green)[0]), int(np.flatnonzero(~green)[0])]
    view = stage_view(result, raw_stats(logits), ids, str)
    row = view.rows[0]
    assert row.name == "watermark" and row.kept == 1_000 and row.details["green"] == 250
    assert row.probs[0] > view.raw_probs[0] and row.probs[1] < view.raw_probs[1]  # green up, red down
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(stage_view_tables(view)[0])
    assert "green 250" in console.export_text()
    # a preset keeps the watermark knobs
    save_preset("marked", params.replace(watermark_scheme="selfhash"), tmp_path / "presets.toml")
    loaded = load_preset("marked", tmp_path / "presets.toml")
    assert (loaded.watermark_key, loaded.watermark_scheme) == (77, "selfhash")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logprob_moments_taken_with_the_statistics_match_the_separate_passes(dtype: type) -> None:
    """raw_stats(..., moments=True) computes the moments from the weights the entropy summed: the same
    numbers as logprob_moments' own float64 passes (to float32 rounding for a float32 row)."""
    rng = np.random.default_rng(4)
    logits = (rng.standard_normal(50_000) * 3).astype(dtype)
    logits[::17] = -np.inf
    logits[5::101] -= 200  # weights that underflow
    together = raw_stats(logits, moments=True).logprob_moments()
    separate = raw_stats(logits).logprob_moments()
    rel = 1e-12 if dtype == np.float64 else 1e-6
    assert together[0] == pytest.approx(separate[0], rel=rel)
    assert together[1] == pytest.approx(separate[1], rel=rel)
    assert together[0] == pytest.approx(-raw_stats(logits).entropy_bits * math.log(2), rel=1e-12)
    small = np.array([2.0, 1.0, 0.0, -1.0, -np.inf])
    assert raw_stats(small, moments=True).logprob_moments() == pytest.approx(raw_stats(small).logprob_moments(),
                                                                             rel=1e-12)
