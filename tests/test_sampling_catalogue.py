"""Hand-made cases with exact expected outputs for the catalogue stages, state, rng and presets.

Transformers' samplers (epsilon, eta, no-repeat n-grams) and text-generation-webui's top-a are
checked against their formulas here; llama.cpp's are also compared with the C++ code in
test_sampling_llamacpp.py and test_sampling_catalogue_llamacpp.py.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from sampling_helpers import only, softmax, survivors

from tokenlab.sampling import (
    BUILTIN_PRESETS,
    DEFAULT_ORDER,
    DRY_DEFAULT_BREAKERS,
    MIROSTAT_MU,
    STAGE_NAMES,
    Pipeline,
    SamplerParams,
    distribution,
    dry_breaker_sequences,
    order_preset,
    parse_samplers,
    scheduled_temperature,
)

INF = math.inf
PROBS = [0.5, 0.3, 0.15, 0.05]
LOG_PROBS = [math.log(p) for p in PROBS]
ORIGINAL_SIX = ("penalties", "top_k", "typical_p", "top_p", "min_p", "temperature")


def kept_probs(kept: list[int]) -> np.ndarray:
    """PROBS restricted to `kept` and renormalised."""
    values = np.array(PROBS)[kept]
    return values / values.sum()


# -- defaults, order, names ------------------------------------------------------------------------


def test_new_knobs_default_to_off_with_llama_cpp_values() -> None:
    params = SamplerParams()
    assert (params.top_n_sigma, params.xtc_probability, params.xtc_threshold) == (-1.0, 0.0, 0.1)
    assert (params.dry_multiplier, params.dry_base, params.dry_allowed_length) == (0.0, 1.75, 2)
    assert params.dry_penalty_last_n == 64 and params.dry_sequence_breakers == ()
    assert (params.mirostat, params.mirostat_tau, params.mirostat_eta) == (0, 5.0, 0.1)
    assert (params.dynatemp_range, params.dynatemp_exponent) == (0.0, 1.0)
    assert (params.temperature_end, params.temperature_curve) == (None, "linear")
    assert (params.epsilon_cutoff, params.eta_cutoff, params.top_a) == (0.0, 0.0, 0.0)
    assert params.no_repeat_ngram_size == 0
    assert (params.scaled_frequency, params.scaled_presence) == (1.0, 1.0)
    assert [stage.name for stage in Pipeline(params).stages] == [
        "top_k",
        "top_p",
        "min_p",
        "temperature",
    ]
    assert set(STAGE_NAMES) == set(DEFAULT_ORDER)
    assert [name for name in DEFAULT_ORDER if name in ORIGINAL_SIX] == list(ORIGINAL_SIX)


def test_default_behaviour_is_unchanged_by_the_catalogue() -> None:
    rng = np.random.default_rng(4)
    for params in (
        SamplerParams(),
        SamplerParams(top_k=0, typical_p=0.7, repeat_penalty=1.3, temperature=0.0),
    ):
        logits = rng.normal(0, 3, 3000).astype(np.float32)
        history = [int(t) for t in rng.integers(0, 3000, 100)]
        everything = Pipeline(params).run(logits, history)
        six = Pipeline(params.replace(samplers=ORIGINAL_SIX)).run(logits, history)
        np.testing.assert_array_equal(everything.dense_probs(), six.dense_probs())
        assert [r.name for r in everything.stages] == [r.name for r in six.stages]


def test_stage_names_and_aliases() -> None:
    assert parse_samplers("mirostat, top-n-sigma, dry, xtc, epsilon, eta, top-a") == (
        "mirostat_v2",
        "top_n_sigma",
        "dry",
        "xtc",
        "epsilon",
        "eta",
        "top_a",
    )
    assert parse_samplers("no_repeat_ngram scaled_penalties dynatemp") == (
        "no_repeat_ngram",
        "scaled_penalties",
        "temperature",
    )


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"top_n_sigma": INF}, "top_n_sigma"),
        ({"xtc_probability": 1.5}, "xtc_probability"),
        ({"xtc_threshold": -0.1}, "xtc_threshold"),
        ({"dry_multiplier": -1.0}, "dry_multiplier"),
        ({"dry_base": 0.5}, "dry_base"),
        ({"dry_allowed_length": -1}, "dry_allowed_length"),
        ({"dry_penalty_last_n": -2}, "dry_penalty_last_n"),
        ({"dry_sequence_breakers": ["\n"]}, "dry_sequence_breakers"),
        ({"dry_sequence_breakers": "\n"}, "dry_sequence_breakers"),
        ({"dry_sequence_breakers": [[]]}, "dry_sequence_breakers"),
        ({"dry_sequence_breakers": [[-3]]}, "dry_sequence_breakers"),
        ({"mirostat": 3}, "mirostat"),
        ({"mirostat": -1}, "mirostat"),
        ({"adaptive_target": 1.5}, "adaptive_target"),
        ({"adaptive_decay": 0.995}, "adaptive_decay"),
        ({"smoothing_factor": -1.0}, "smoothing_factor"),
        ({"smoothing_curve": 0.5}, "smoothing_curve"),
        ({"tfs_z": 1.5}, "tfs_z"),
        ({"top_h": -0.1}, "top_h"),
        ({"p_less": 2.0}, "p_less"),
        ({"mirostat_tau": -1.0}, "mirostat_tau"),
        ({"mirostat_eta": math.nan}, "mirostat_eta"),
        ({"dynatemp_range": -0.5}, "dynatemp_range"),
        ({"dynatemp_exponent": -1.0}, "dynatemp_exponent"),
        ({"temperature_end": -0.1}, "temperature_end"),
        ({"temperature_steps": -1}, "temperature_steps"),
        ({"temperature_curve": "cubic"}, "temperature_curve"),
        ({"temperature_curve": "exponential", "temperature_end": 0.0}, "temperature_curve"),
        ({"epsilon_cutoff": 1.0}, "epsilon_cutoff"),
        ({"eta_cutoff": -1e-4}, "eta_cutoff"),
        ({"top_a": 1.01}, "top_a"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
        ({"no_repeat_ngram_size": 1.5}, "no_repeat_ngram_size"),
        ({"scaled_frequency": 0.9}, "scaled_frequency"),
        ({"scaled_presence": INF}, "scaled_presence"),
    ],
)
def test_invalid_catalogue_values_raise_naming_parameter_and_value(
    changes: dict[str, object], name: str
) -> None:
    with pytest.raises(ValueError, match=name) as info:
        SamplerParams(**changes)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and "got" in message


def test_to_dict_round_trips_the_catalogue() -> None:
    params = SamplerParams(
        dry_multiplier=0.8,
        dry_sequence_breakers=[[13], [25, 7]],  # type: ignore[arg-type]
        temperature_end=0.2,
        temperature_curve="exponential",
        mirostat=2,
        epsilon_cutoff=3e-4,
    )
    data = params.to_dict()
    assert data["dry_sequence_breakers"] == [[13], [25, 7]]
    assert data["temperature_end"] == 0.2 and data["mirostat"] == 2
    assert json.loads(json.dumps(data)) == data
    assert SamplerParams.from_dict(data) == params
    assert hash(SamplerParams.from_dict(data)) == hash(params)
    assert SamplerParams().to_dict()["temperature_end"] is None


# -- top_n_sigma -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "kept"), [(1.0, [4, 3]), (2.0, [4, 3, 2]), (3.0, [4, 3, 2, 1, 0])])
def test_top_n_sigma_keeps_logits_within_n_sigma_of_the_max(n: float, kept: list[int]) -> None:
    # mean 2, σ = sqrt(2): thresholds 4 - 1.414, 4 - 2.828, 4 - 4.243
    result = only("top_n_sigma", [0.0, 1.0, 2.0, 3.0, 4.0], top_n_sigma=n)
    assert survivors(result) == kept
    report = result.stages[0]
    assert report.cutoff is not None and report.cutoff.scale == "logit"
    assert report.cutoff.value == pytest.approx(4.0 - n * math.sqrt(2.0))
    assert report.params["sigma"] == pytest.approx(math.sqrt(2.0))


def test_top_n_sigma_ignores_minus_inf_and_handles_flat_rows() -> None:
    # σ over the finite logits 0..4 only; -inf is already gone
    result = only("top_n_sigma", [0.0, 1.0, -INF, 2.0, 3.0, 4.0], top_n_sigma=1.0)
    assert survivors(result) == [5, 4]
    assert survivors(only("top_n_sigma", [2.0, 2.0, 2.0], top_n_sigma=1.0)) == [0, 1, 2]
    assert only("top_n_sigma", [1.0, 2.0], top_n_sigma=0.0).stages == ()
    assert only("top_n_sigma", [1.0, 2.0], top_n_sigma=-1.0).stages == ()
    assert survivors(
        only("top_n_sigma", [0.0, 1.0, 2.0, 3.0, 4.0], top_n_sigma=0.1, min_keep=3)
    ) == [
        4,
        3,
        2,
    ]


def test_top_n_sigma_with_plus_inf_keeps_only_the_infinite_tokens() -> None:
    result = only("top_n_sigma", [1.0, INF, 3.0, INF], top_n_sigma=2.0)
    assert survivors(result) == [1, 3]


# -- xtc -------------------------------------------------------------------------------------------


def test_xtc_removes_the_top_choices_but_the_least_likely_of_them() -> None:
    # p >= 0.1: ids 0, 1, 2; all but the least likely (2) go
    result = only("xtc", LOG_PROBS, xtc_probability=1.0, xtc_threshold=0.1)
    assert survivors(result) == [2, 3]
    np.testing.assert_allclose(result.final_probs, kept_probs([2, 3]), rtol=1e-12)
    report = result.stages[0]
    assert report.params["fired"] is True and report.params["removed"] == 2
    assert report.cutoff is not None and report.cutoff.value == 0.1
    assert result.removed_by(0) == "xtc"


def test_xtc_needs_two_tokens_above_and_respects_min_keep() -> None:
    one_above = only("xtc", LOG_PROBS, xtc_probability=1.0, xtc_threshold=0.4)
    assert survivors(one_above) == [0, 1, 2, 3]
    assert one_above.stages[0].params["removed"] == 0
    kept = only("xtc", LOG_PROBS, xtc_probability=1.0, xtc_threshold=0.1, min_keep=3)
    assert survivors(kept) == [0, 1, 2, 3]  # removing two would leave 2 < 3
    assert only("xtc", LOG_PROBS, xtc_probability=1.0, xtc_threshold=0.51).stages == ()
    assert only("xtc", LOG_PROBS, xtc_probability=0.0, xtc_threshold=0.1).stages == ()


def test_xtc_draws_once_from_the_given_rng_and_fires_when_the_draw_is_at_most_p() -> None:
    pipeline = Pipeline(SamplerParams(samplers=("xtc",), xtc_probability=0.4, xtc_threshold=0.1))
    fired = 0
    for seed in range(200):
        rng, twin = np.random.default_rng(seed), np.random.default_rng(seed)
        result = pipeline.run(np.array(LOG_PROBS), rng=rng)
        draw = twin.random()
        assert rng.random() == twin.random()  # exactly one number was used
        expected = [2, 3] if draw <= 0.4 else [0, 1, 2, 3]
        assert survivors(result) == expected
        assert result.stages[0].params["chance"] == draw
        fired += draw <= 0.4
    assert 50 < fired < 110


def test_without_an_rng_stochastic_stages_are_deterministic_per_step() -> None:
    params = {"samplers": "xtc", "xtc_probability": 0.5, "xtc_threshold": 0.1}
    logits = np.array(LOG_PROBS)
    first = [distribution(logits, step_index=i, **params) for i in range(40)]
    again = [distribution(logits, step_index=i, **params) for i in range(40)]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len({tuple(a) for a in first}) == 2  # the step index varies the draw


def test_dense_xtc_spares_the_least_likely_with_ties_to_the_highest_id() -> None:
    logits = np.full(5000, -10.0)
    logits[[10, 20, 30]] = [5.0, 5.0, 4.0]
    logits[40] = 5.0
    result = Pipeline(
        SamplerParams(samplers=("xtc",), xtc_probability=1.0, xtc_threshold=0.01)
    ).run(logits)
    removed = {i for i in (10, 20, 30, 40) if result.removed_by(i) == "xtc"}
    assert removed == {10, 20, 40}  # 30 (p smallest above the threshold) survives


# -- epsilon, eta (transformers) and top_a (text-generation-webui) ---------------------------------


@pytest.mark.parametrize(
    ("epsilon", "min_keep", "kept"),
    [
        (0.1, 1, [0, 1, 2]),
        (0.2, 1, [0, 1]),
        (0.6, 1, [0]),
        (0.6, 2, [0, 1]),
        (0.01, 1, [0, 1, 2, 3]),
    ],
)
def test_epsilon_keeps_p_at_least_epsilon(epsilon: float, min_keep: int, kept: list[int]) -> None:
    result = only("epsilon", LOG_PROBS, epsilon_cutoff=epsilon, min_keep=min_keep)
    assert survivors(result) == kept
    np.testing.assert_allclose(result.final_probs, kept_probs(kept), rtol=1e-12)


def test_epsilon_min_keep_keeps_ties_with_the_last_kept_logit() -> None:
    # transformers removes only scores < the min_keep-th largest: both maxima stay
    assert survivors(only("epsilon", [1.0, 1.0, 0.0], epsilon_cutoff=0.9)) == [0, 1]


@pytest.mark.parametrize(
    ("epsilon", "eta", "kept"),
    [
        # H(0.5, 0.3, 0.15, 0.05) = 1.142114 nats; sqrt(ε)·e^-H = 0.319141·sqrt(ε)
        (0.1, 0.1, [0, 1, 2]),  # min(0.1, 0.100921)
        (0.2, 0.142724, [0, 1, 2]),
        (0.3, 0.174801, [0, 1]),
    ],
)
def test_eta_cutoff_follows_the_transformers_formula(
    epsilon: float, eta: float, kept: list[int]
) -> None:
    result = only("eta", LOG_PROBS, eta_cutoff=epsilon)
    assert survivors(result) == kept
    report = result.stages[0]
    entropy = -sum(p * math.log(p) for p in PROBS)
    assert report.params["entropy"] == pytest.approx(entropy, rel=1e-12)
    assert report.params["eta"] == pytest.approx(eta, rel=1e-5)
    assert report.params["eta"] == pytest.approx(
        min(epsilon, math.sqrt(epsilon) * math.exp(-entropy)), rel=1e-14
    )


@pytest.mark.parametrize(
    ("a", "min_keep", "kept"),
    [(0.5, 1, [0, 1, 2]), (1.0, 1, [0, 1]), (1.0, 3, [0, 1, 2]), (0.1, 1, [0, 1, 2, 3])],
)
def test_top_a_removes_p_below_a_times_p_max_squared(
    a: float, min_keep: int, kept: list[int]
) -> None:
    # p_max² = 0.25: limits 0.125, 0.25, 0.025
    result = only("top_a", LOG_PROBS, top_a=a, min_keep=min_keep)
    assert survivors(result) == kept
    report = result.stages[0]
    assert report.cutoff is not None and report.cutoff.value == pytest.approx(a * 0.25)


# -- no_repeat_ngram (transformers) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("history", "size", "banned"),
    [
        ((1, 2, 3, 1, 2), 3, [3]),  # prefix (1, 2) was followed by 3
        ((1, 2, 3, 1, 2), 2, [3]),  # prefix (2,) was followed by 3
        ((1, 2, 3, 1, 2), 1, [1, 2, 3]),  # every unigram seen
        ((5, 6, 5), 2, [6]),
        ((5, 6, 5, 7, 5), 2, [6, 7]),
        ((40, 41, 42, 43), 2, []),  # transformers' docstring example: (43,) never seen before
        ((1, 2), 4, []),  # history too short
        ((), 1, []),
    ],
)
def test_no_repeat_ngram_bans_what_would_repeat_an_ngram(
    history: tuple[int, ...], size: int, banned: list[int]
) -> None:
    logits = [0.0] * 50
    result = only("no_repeat_ngram", logits, history=history, no_repeat_ngram_size=size)
    removed = [i for i in range(50) if result.removed_by(i) == "no_repeat_ngram"]
    assert removed == banned
    assert result.n_final == 50 - len(banned)


def test_no_repeat_ngram_spares_the_best_banned_tokens_for_min_keep() -> None:
    result = only(
        "no_repeat_ngram",
        [0.0, 2.0, 1.0],
        history=(0, 1, 0, 2, 0),
        no_repeat_ngram_size=2,
        min_keep=2,
    )
    assert survivors(result) == [1, 0]  # 1 and 2 are banned; 1 (the likelier) is spared
    assert result.removed_by(2) == "no_repeat_ngram"


# -- scaled penalties ------------------------------------------------------------------------------


def test_scaled_penalties_divide_shifted_logits_per_token() -> None:
    logits = [2.0, -1.0, 1.0, 0.5]
    result = only(
        "scaled_penalties",
        logits,
        history=(0, 0, 2),
        scaled_frequency=1.5,
        scaled_presence=1.2,
    )
    # k0 = 1 + 0.5·2 + 0.2 = 2.2, k2 = 1 + 0.5 + 0.2 = 1.7; min logit -1 < 0: shift by +1
    shifted = [3.0 / 2.2, 0.0, 2.0 / 1.7, 1.5]
    np.testing.assert_allclose(result.dense_probs(), softmax(shifted), rtol=1e-13)
    # reported logits are shifted back: unseen tokens keep theirs
    np.testing.assert_allclose(result.stages[0].logits, [v - 1.0 for v in shifted], rtol=1e-13)


def test_scaled_penalties_without_negative_logits_divide_directly_and_use_the_window() -> None:
    result = only("scaled_penalties", [2.0, 1.0], history=(0,), scaled_frequency=2.0)
    np.testing.assert_allclose(result.stages[0].logits, [1.0, 1.0])
    windowed = only(
        "scaled_penalties", [2.0, 1.0], history=(0, 1), scaled_presence=2.0, penalty_last_n=1
    )
    np.testing.assert_allclose(windowed.stages[0].logits, [2.0, 0.5])
    assert (
        only(
            "scaled_penalties", [2.0, 1.0], history=(0,), penalty_last_n=0, scaled_frequency=2.0
        ).stages
        == ()
    )


# -- DRY -------------------------------------------------------------------------------------------

# llama.cpp's own DRY cases (tests/test-sampling.cpp): probabilities, history, expected, multiplier,
# base, allowed length, last_n, breakers.
LLAMA_DRY_CASES = [
    ([0.25] * 4, [0, 1], [0.25] * 4, 1.0, 1.1, 2, 4, ()),
    ([0.25] * 4, [0, 1, 2, 0, 1], [0.296923, 0.296923, 0.109232, 0.296923], 1.0, 1.1, 2, 5, ()),
    ([0.2] * 5, [0, 1, 3, 4, 0, 1], [0.2] * 5, 1.0, 1.1, 2, 6, ((3,),)),
    (
        [0.2] * 5,
        [0, 1, 2, 0, 1],
        [0.241818, 0.241818, 0.032727, 0.241818, 0.241818],
        2.0,
        1.1,
        2,
        5,
        (),
    ),
    ([0.2] * 5, [0, 1, 2, 3, 4, 0, 1], [0.2] * 5, 1.0, 1.1, 4, 7, ()),
]


@pytest.mark.parametrize("case", LLAMA_DRY_CASES)
def test_dry_reproduces_llama_cpps_own_test_cases(case: tuple[Any, ...]) -> None:
    probs, history, expected, multiplier, base, allowed, last_n, breakers = case
    result = only(
        "dry",
        [math.log(p) for p in probs],
        history=tuple(history),
        dry_multiplier=multiplier,
        dry_base=base,
        dry_allowed_length=allowed,
        dry_penalty_last_n=last_n,
        dry_sequence_breakers=breakers,
    )
    np.testing.assert_allclose(result.dense_probs(), expected, atol=1e-6)


def test_dry_penalty_grows_with_the_repeat_length() -> None:
    # the suffix "0 1 2 0 1" also ends 3 tokens earlier, where 2 followed: L = 5
    history = (0, 1, 2, 0, 1, 2, 0, 1)
    result = only(
        "dry",
        [0.0] * 4,
        history=history,
        dry_multiplier=0.5,
        dry_base=2.0,
        dry_allowed_length=2,
        dry_penalty_last_n=-1,
    )
    np.testing.assert_allclose(result.stages[0].logits, [0.0, 0.0, -4.0, 0.0])  # 0.5·2^(5-2)
    assert result.stages[0].params["longest_repeat"] == 5
    window = only(
        "dry",
        [0.0] * 4,
        history=history,
        dry_multiplier=0.5,
        dry_base=2.0,
        dry_penalty_last_n=5,  # "2 0 1 2 0 1"[-5:]: "0 1" repeats, L = 2
    )
    np.testing.assert_allclose(window.stages[0].logits, [0.0, 0.0, -0.5, 0.0])


def test_dry_sequence_breakers_cap_the_repeat_length() -> None:
    history = (5, 6, 0, 1, 2, 5, 6, 0, 1)
    knobs: dict[str, Any] = {"dry_multiplier": 1.0, "dry_base": 2.0}
    free = only("dry", [0.0] * 10, history=history, **knobs)
    assert free.stages[0].logits[2] == -4.0  # "5 6 0 1" repeats (L = 4) and 2 followed it
    broken = only("dry", [0.0] * 10, history=history, dry_sequence_breakers=((5, 6),), **knobs)
    assert broken.stages[0].logits[2] == -1.0  # capped at the 2 tokens after the last "5 6"
    single = only(
        "dry", [0.0] * 10, history=(0, 1, 2, 0, 1), dry_sequence_breakers=((2,),), **knobs
    )
    np.testing.assert_array_equal(single.final_logits, [0.0] * 10)  # a breaker is not penalized


def test_dry_breaker_sequences_on_a_toy_vocabulary() -> None:
    pieces = ["a", "\n", "b\n", "x:", "Us", "er", "User", ":", "Use"]
    table = {"er:": [5, 7], "r:": [5, 7], ":": [7], "\n": [1], "ser:": [4, 5, 7]}

    def tokenize(text: str) -> list[int]:
        return table.get(text, [99])

    sequences = dry_breaker_sequences(["\n", ":", "User:"], tokenize, pieces)
    # contains a breaker: one-token breakers
    assert {(1,), (2,), (3,), (7,)} <= set(sequences)
    # ends with a proper prefix of "User:": head + tokens of the rest
    assert (4, 5, 7) in sequences  # "Us" + "er:"
    assert (6, 7) in sequences  # "User" + ":"
    assert (8, 5, 7) in sequences  # "Use" + "r:"
    assert (0,) not in sequences
    plain = dry_breaker_sequences(DRY_DEFAULT_BREAKERS, lambda text: [ord(text[0])])
    assert plain == tuple(sorted((ord(c),) for c in DRY_DEFAULT_BREAKERS))


# -- temperature: dynamic and scheduled ------------------------------------------------------------


def test_dynamic_temperature_maps_the_normalised_entropy_into_the_range() -> None:
    flat = only("temperature", [0.0, 0.0, 0.0], temperature=1.0, dynatemp_range=0.5)
    assert flat.stages[0].params["effective_temperature"] == pytest.approx(1.5)  # H/H_max = 1
    logits = LOG_PROBS
    entropy = -sum(p * math.log(p) for p in PROBS)
    normalized = entropy / math.log(4)
    result = only("temperature", logits, temperature=0.8, dynatemp_range=0.5, dynatemp_exponent=2.0)
    applied = 0.3 + 1.0 * normalized**2
    assert result.stages[0].params["effective_temperature"] == pytest.approx(applied, rel=1e-14)
    np.testing.assert_allclose(
        result.dense_probs(), softmax([v / applied for v in logits]), rtol=1e-12
    )
    # range >= T: the low end is 0, so a one-hot input is greedy
    spiky = only("temperature", [0.0, -800.0, -900.0], temperature=0.5, dynatemp_range=1.0)
    assert survivors(spiky) == [0]
    single = only("temperature", [0.0, -INF], temperature=0.5, dynatemp_range=1.0)
    assert single.stages[0].params["effective_temperature"] == 0.5


@pytest.mark.parametrize(
    ("curve", "step", "expected"),
    [
        ("linear", 0, 1.0),
        ("linear", 5, 0.75),
        ("linear", 10, 0.5),
        ("linear", 50, 0.5),
        ("exponential", 5, math.sqrt(0.5)),
        ("exponential", 10, 0.5),
    ],
)
def test_temperature_schedule(curve: str, step: int, expected: float) -> None:
    params = SamplerParams(
        samplers=("temperature",),
        temperature=1.0,
        temperature_end=0.5,
        temperature_steps=10,
        temperature_curve=curve,
    )
    result = Pipeline(params).run(np.array(LOG_PROBS), step_index=step)
    report = result.stages[0]
    assert report.params["effective_temperature"] == pytest.approx(expected, rel=1e-14)
    assert report.params["scheduled_temperature"] == pytest.approx(expected, rel=1e-14)
    np.testing.assert_allclose(
        result.dense_probs(), softmax([v / expected for v in LOG_PROBS]), rtol=1e-12
    )
    assert scheduled_temperature(1.0, 0.5, 10, curve, step) == pytest.approx(expected)


def test_a_schedule_can_anneal_to_greedy_and_a_flat_schedule_is_off() -> None:
    params = SamplerParams(
        samplers=("temperature",), temperature=1.0, temperature_end=0.0, temperature_steps=4
    )
    assert survivors(Pipeline(params).run(np.array(LOG_PROBS), step_index=4)) == [0]
    assert Pipeline(params).run(np.array(LOG_PROBS), step_index=2).n_final == 4
    flat = SamplerParams(samplers=("temperature",), temperature=1.0, temperature_end=1.0)
    assert Pipeline(flat).stages == ()
    assert scheduled_temperature(0.7, None, 10, "linear", 99) == 0.7
    assert scheduled_temperature(1.0, 0.5, 0, "linear", 0) == 0.5


# -- mirostat state --------------------------------------------------------------------------------


def test_mirostat_truncates_by_surprise_and_threads_mu_through_next_state() -> None:
    params = SamplerParams(samplers=("mirostat",), mirostat=2, mirostat_tau=1.0, mirostat_eta=0.5)
    pipeline = Pipeline(params)
    logits = np.array(LOG_PROBS)
    # surprises: 1.0, 1.737, 2.737, 4.322 bits; mu starts at 2·tau = 2
    first = pipeline.run(logits)
    assert survivors(first) == [0, 1]
    assert first.stages[0].params["mu"] == 2.0
    assert first.stages[0].cutoff is not None and first.stages[0].cutoff.value == 2.0
    state = first.next_state(1)
    surprise = -math.log2(0.3 / 0.8)  # under the truncated distribution the stage produced
    assert state[MIROSTAT_MU] == pytest.approx(2.0 - 0.5 * (surprise - 1.0), rel=1e-14)
    with pytest.raises(TypeError):
        state[MIROSTAT_MU] = 3.0  # type: ignore[index]
    second = pipeline.run(logits, state=state)
    assert second.stages[0].params["mu"] == state[MIROSTAT_MU]
    # rewinding: the old state gives the old result
    np.testing.assert_array_equal(
        pipeline.run(logits, state=None).dense_probs(), first.dense_probs()
    )
    # a forced token the stage removed is measured under the stage's input
    forced = first.next_state(3)
    assert forced[MIROSTAT_MU] == pytest.approx(2.0 - 0.5 * (-math.log2(0.05) - 1.0), rel=1e-12)


def test_mirostat_keeps_at_least_the_best_token_and_leaves_other_state_alone() -> None:
    params = SamplerParams(samplers=("mirostat_v2",), mirostat=2, mirostat_tau=0.01)
    result = Pipeline(params).run(np.array(LOG_PROBS), state={"other": 1.0})
    assert survivors(result) == [0]  # mu = 0.02 bits: nothing passes, the best is kept
    assert result.next_state(0)["other"] == 1.0
    off = Pipeline(SamplerParams()).run(np.array(LOG_PROBS), state={"mirostat_mu": 9.0})
    assert off.next_state(0) == {"mirostat_mu": 9.0}
    with pytest.raises(ValueError, match="mirostat_mu"):
        Pipeline(params).run(np.array(LOG_PROBS), state={MIROSTAT_MU: "high"})


def test_run_validates_its_step_arguments() -> None:
    pipeline = Pipeline()
    with pytest.raises(ValueError, match="step_index"):
        pipeline.run(np.zeros(3), step_index=-1)
    with pytest.raises(ValueError, match="rng"):
        pipeline.run(np.zeros(3), rng=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="state"):
        pipeline.run(np.zeros(3), state=[1, 2])  # type: ignore[arg-type]


# -- reports ---------------------------------------------------------------------------------------


def test_reports_show_kept_mass_and_cutoffs_for_every_filter() -> None:
    params = SamplerParams(
        samplers=("epsilon", "top_a", "min_p"),
        epsilon_cutoff=0.1,
        top_a=1.0,
        min_p=0.7,
    )
    result = Pipeline(params).run(np.array(LOG_PROBS))
    epsilon, top_a, min_p = result.stages
    assert epsilon.mass_kept == pytest.approx(0.95)
    assert top_a.mass_kept == pytest.approx(0.8 / 0.95)
    assert min_p.mass_kept == pytest.approx(0.5 / 0.8)
    assert [r.cutoff.scale for r in result.stages if r.cutoff] == [
        "probability",
        "probability",
        "logit",
    ]
    assert min_p.cutoff is not None
    assert min_p.cutoff.value == pytest.approx(math.log(0.5) + math.log(0.7))
    assert (result.removed_by(3), result.removed_by(2), result.removed_by(1)) == (
        "epsilon",
        "top_a",
        "min_p",
    )


# -- presets ---------------------------------------------------------------------------------------


def test_order_presets() -> None:
    assert order_preset("llama.cpp") == DEFAULT_ORDER
    assert order_preset("transformers")[2] == "watermark"  # the last logits processor
    assert order_preset("transformers")[3:] == (
        "temperature",
        "top_h",
        "top_k",
        "top_p",
        "min_p",
        "typical_p",
        "epsilon",
        "eta",
    )
    assert order_preset("greedy")[-1] == "temperature"
    assert order_preset("mirostat")[-3:] == ("temperature", "mirostat_v1", "mirostat_v2")
    with pytest.raises(ValueError, match="unknown order preset 'nope'"):
        order_preset("nope")


def test_builtin_presets_are_plain_valid_parameter_sets() -> None:
    assert {
        "greedy",
        "llama.cpp",
        "transformers",
        "creative",
        "deterministic-ish",
        "penalized",
    } <= set(BUILTIN_PRESETS)
    for name, values in BUILTIN_PRESETS.items():
        assert json.loads(json.dumps(values)) == values  # plain data
        params = SamplerParams.from_preset(name)
        assert params == SamplerParams.from_dict(values)
    assert SamplerParams.from_preset("llama.cpp") == SamplerParams()
    penalized = SamplerParams.from_preset("penalized", top_p=0.8)
    assert (penalized.top_p, penalized.scaled_frequency, penalized.scaled_presence) == (
        0.8,
        1.2,
        1.2,
    )
    greedy = Pipeline(SamplerParams.from_preset("greedy")).run(np.array(LOG_PROBS))
    assert survivors(greedy) == [0]
    assert SamplerParams.from_preset("deterministic-ish").top_k in (2, 3)
    creative = SamplerParams.from_preset("creative")
    assert creative.temperature > 1.0 and creative.min_p > 0
    with pytest.raises(ValueError, match="unknown sampler preset"):
        SamplerParams.from_preset("spicy")
    with pytest.raises(ValueError, match="unknown sampler parameter"):
        SamplerParams.from_preset("greedy", topk=3)
    SamplerParams.from_preset("greedy").to_dict()["samplers"].append("top_k")
    assert BUILTIN_PRESETS["greedy"]["samplers"] == list(order_preset("greedy"))  # copied


def test_dry_suffix_matching_is_exact_for_short_repeats_and_loops() -> None:
    from tokenlab.sampling.history import _suffix_matches

    def brute_force(recent: list[int], limit: int) -> list[int]:
        size = len(recent)
        out = []
        for k in range(1, size):
            length = 0
            while k + length < size and recent[length] == recent[k + length]:
                length += 1
            out.append(min(length, limit))
        return out

    rng = np.random.default_rng(12)
    for _ in range(60):
        size = int(rng.integers(2, 300))
        alphabet = int(rng.choice([1, 2, 3, 50]))
        if rng.random() < 0.5:  # a loop: long repeats switch to the Z-algorithm
            period = int(rng.integers(1, 20))
            tokens = [int(t) for t in rng.integers(0, alphabet, period)] * (size // period + 1)
        else:
            tokens = [int(t) for t in rng.integers(0, alphabet, size)]
        recent = tokens[:size]
        limit = int(rng.choice([0, 1, 5, 40, size]))
        expected = brute_force(recent, limit)
        assert _suffix_matches(np.array(recent, dtype=np.int64), limit).tolist() == expected
