"""Differential tests: tokenlab.sampling against llama.cpp's own C++ samplers.

The samplers need no model: we build a `llama_token_data_array` from the same float32 logits, feed
the history with `llama_sampler_accept`, call `llama_sampler_apply`, and compare the survivors
(logit > -inf) and the softmax of their logits with our pipeline's, stage by stage.  Every stage
llama.cpp has is covered: penalties, dry, top_n_sigma, top_k, typical_p, top_p, min_p, xtc (at
probability 1 and 0, so llama.cpp's own generator never matters) and temperature (temp_ext, i.e.
with dynamic temperature); mirostat_v2 and DRY's string breakers have their own tests in
test_sampling_catalogue_llamacpp.py.

Stage by stage, llama.cpp's array is compacted to its survivors before the next stage: llama.cpp
leaves tokens that top_n_sigma or greedy set to -inf in its array, where they still count in
XTC's min_keep and dynamic temperature's maximum entropy (and make typical-p's entropy NaN), while
tokenlab counts only alive tokens.  That difference is documented in the stages; the chain-object
test avoids it.

llama.cpp works and sums in float32, we in float64.  Where a cumulative sum (top-p, typical-p) or
a threshold (min-p, top-n-sigma, xtc) lands within rounding distance of the parameter, the two may
put the cut one token apart; such a trial is accepted only when that specific situation is proven
from our own float64 numbers (see `explained_by_rounding`).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

from tokenlab.sampling import DEFAULT_ORDER, Pipeline, SamplerParams, StageReport
from tokenlab.sampling.filters import finite_std

llama_cpp = pytest.importorskip("llama_cpp")

TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
assert TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)

PROB_ATOL = 1e-5
# float32 sums of a few hundred probabilities stay well within this of the float64 sum; a genuine
# bug moves the cumulative mass at the cut by at least one token's probability, which for these
# logits is far larger.
CUT_TOL = 2e-5
# llama.cpp's typical-p ranks tokens by |-log p - H| in float32: scores closer than this (~10x the
# float32 error of a score near 10) may come out in either order.
SCORE_TOL = 1e-5
# Relative float32 error allowed on top-n-sigma's threshold (mean and σ summed in float32).
SIGMA_RTOL = 1e-4
XTC_SEED = 1234

LLAMA_ORDER: tuple[str, ...] = tuple(
    name
    for name in DEFAULT_ORDER
    if name
    in (
        "penalties",
        "dry",
        "top_n_sigma",
        "top_k",
        "typical_p",
        "top_p",
        "min_p",
        "xtc",
        "temperature",
    )
)
"""The stages llama.cpp's common sampler chains, in its default order."""
assert LLAMA_ORDER == (
    "penalties",
    "dry",
    "top_n_sigma",
    "top_k",
    "typical_p",
    "top_p",
    "min_p",
    "xtc",
    "temperature",
)
HISTORY_STAGES = ("penalties", "dry")


@contextmanager
def llama_sampler(init: Callable[..., Any], *args: Any) -> Iterator[Any]:
    """A llama.cpp sampler, freed afterwards."""
    sampler = init(*args)
    assert sampler, f"{init.__name__}{args} returned NULL"
    try:
        yield sampler
    finally:
        llama_cpp.llama_sampler_free(sampler)


class TokenArray:
    """A llama_token_data_array over the vocabulary that llama.cpp samplers modify in place."""

    def __init__(self, logits: np.ndarray, ids: np.ndarray | None = None) -> None:
        self.buffer = (llama_cpp.llama_token_data * logits.shape[0])()
        view = np.frombuffer(self.buffer, dtype=TOKEN_DATA)
        view["id"] = np.arange(logits.shape[0]) if ids is None else ids
        view["logit"] = logits
        view["p"] = 0.0
        self.array = llama_cpp.llama_token_data_array(
            data=self.buffer, size=logits.shape[0], selected=-1, sorted=False
        )

    def apply(self, sampler: Any) -> None:
        """Run one llama.cpp sampler on the array."""
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(self.array))

    def survivors(self) -> dict[int, float]:
        """Alive token id -> float32 logit, read through the (possibly moved) data pointer."""
        entries = np.ctypeslib.as_array(
            ctypes.cast(self.array.data, ctypes.POINTER(ctypes.c_uint8)),
            shape=(self.array.size * TOKEN_DATA.itemsize,),
        ).view(TOKEN_DATA)
        return {int(e["id"]): float(e["logit"]) for e in entries if e["logit"] > -np.inf}

    @classmethod
    def of_survivors(cls, survivors: dict[int, float]) -> TokenArray:
        """A fresh array holding only `survivors` (id -> float32 logit)."""
        ids = np.array(list(survivors), dtype=np.int32)
        return cls(np.array([survivors[i] for i in survivors], dtype=np.float32), ids)


def llama_stage(
    name: str, params: SamplerParams, n_vocab: int, history_length: int = 0
) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """The llama.cpp initialiser and arguments equivalent to our stage `name` under `params`."""
    if name == "penalties":
        last_n = params.penalty_last_n
        return llama_cpp.llama_sampler_init_penalties, (
            n_vocab,
            last_n,
            params.repeat_penalty,
            params.frequency_penalty,
            params.presence_penalty,
        )
    if name == "top_k":
        return llama_cpp.llama_sampler_init_top_k, (params.top_k,)
    if name == "top_p":
        return llama_cpp.llama_sampler_init_top_p, (params.top_p, params.min_keep)
    if name == "min_p":
        return llama_cpp.llama_sampler_init_min_p, (params.min_p, params.min_keep)
    if name == "typical_p":
        return llama_cpp.llama_sampler_init_typical, (params.typical_p, params.min_keep)
    if name == "temperature":
        return llama_cpp.llama_sampler_init_temp_ext, (
            params.temperature,
            params.dynatemp_range,
            params.dynatemp_exponent,
        )
    if name == "top_n_sigma":
        return llama_cpp.llama_sampler_init_top_n_sigma, (params.top_n_sigma,)
    if name == "xtc":
        return llama_cpp.llama_sampler_init_xtc, (
            params.xtc_probability,
            params.xtc_threshold,
            params.min_keep,
            XTC_SEED,
        )
    if name == "dry":
        # llama.cpp's C API has no "whole history" (-1): give it a window that holds all of it.
        last_n = params.dry_penalty_last_n
        if last_n < 0:
            last_n = max(history_length, 1)
        assert not params.dry_sequence_breakers, "breakers need a vocabulary (catalogue tests)"
        return llama_cpp.llama_sampler_init_dry, (
            None,
            params.dry_multiplier,
            params.dry_base,
            params.dry_allowed_length,
            last_n,
            None,
            0,
        )
    raise AssertionError(name)


def softmax_of(logits: dict[int, float]) -> dict[int, float]:
    """Float64 softmax over a survivor dict."""
    ids = list(logits)
    values = np.array([logits[i] for i in ids])
    weights = np.exp(values - values.max())
    return dict(zip(ids, weights / weights.sum(), strict=True))


def ours_as_dict(report: StageReport) -> dict[int, float]:
    """Survivor id -> probability of one of our stage reports."""
    probs = report.probs()
    if report.kept_ids is None:
        alive = np.flatnonzero(report.logits > -np.inf)
        return {int(i): float(probs[i]) for i in alive}
    return {int(i): float(p) for i, p in zip(report.kept_ids, probs, strict=True)}


def ours_logits(report: StageReport) -> dict[int, float]:
    """Survivor id -> logit of one of our stage reports."""
    if report.kept_ids is None:
        alive = np.flatnonzero(report.logits > -np.inf)
        return {int(i): float(report.logits[i]) for i in alive}
    return {int(i): float(v) for i, v in zip(report.kept_ids, report.logits, strict=True)}


def explained_by_rounding(
    name: str,
    params: SamplerParams,
    stage_input: dict[int, float],
    ours: set[int],
    theirs: set[int],
) -> bool:
    """Whether a survivor mismatch is the float32-vs-float64 cut-off case, not a real difference.

    We recompute the stage from its input in float64.  Top-p (typical-p) keeps a prefix of the
    tokens ranked by probability (by typicality), so both kept sets must be prefixes of that
    ranking, one S and one L tokens long; the float64 cumulative mass after S tokens and after L - 1
    tokens must both lie within CUT_TOL of p (so each implementation may see p reached at its own
    cut: the tokens between carry less than ~2 * CUT_TOL of mass). For min-p every differing token
    must sit within CUT_TOL of the threshold max_logit + log(min_p). Anything else (a gap inside the
    prefix, a cut far from p) is a real difference and fails the test.

    Typical-p has one more float32 effect: two tokens whose typicality scores differ by less than
    SCORE_TOL may be ranked in either order, so a token can cross the cut.  That is accepted only
    when every differing token's score is within SCORE_TOL of the score of our last kept token.
    """
    if name == "min_p":
        threshold = max(stage_input.values()) + math.log(params.min_p)
        return all(abs(stage_input[token] - threshold) < CUT_TOL for token in ours ^ theirs)
    if name == "top_n_sigma":
        values = np.array(list(stage_input.values()))
        spread = params.top_n_sigma * finite_std(values)
        threshold = values.max() - spread
        tolerance = SIGMA_RTOL * (1.0 + abs(values.max()) + spread)
        return all(abs(stage_input[token] - threshold) < tolerance for token in ours ^ theirs)
    if name == "xtc":
        # the count of tokens at or above the threshold differs when one sits on it
        return any(
            abs(p - params.xtc_threshold) < CUT_TOL for p in softmax_of(stage_input).values()
        )
    probs = softmax_of(stage_input)
    ranked = sorted(probs, key=lambda token: (-probs[token], token))
    if name == "typical_p":
        entropy = -sum(p * math.log(p) for p in probs.values() if p > 0)
        scores = {
            t: abs(-math.log(probs[t]) - entropy) if probs[t] > 0 else math.inf for t in ranked
        }
        ranked = sorted(ranked, key=lambda token: scores[token])
        boundary = scores[ranked[len(ours) - 1]]
        if all(abs(scores[token] - boundary) < SCORE_TOL for token in ours ^ theirs):
            return True
        target = params.typical_p
    elif name == "top_p":
        target = params.top_p
    else:
        return False
    short, long = sorted((len(ours), len(theirs)))
    for kept in (ours, theirs):
        if set(ranked[: len(kept)]) != kept:
            return False
    cumulative = np.cumsum([probs[token] for token in ranked])
    return short < long and all(
        abs(cumulative[i] - target) < CUT_TOL for i in (short - 1, long - 2)
    )


def _underflows_in_float32(stage_input: dict[int, float]) -> bool:
    """Whether some float32 probability of the stage input is 0.

    llama.cpp's typical-p sums -p * logf(p) in float32, which is NaN for p == 0: its output is then
    meaningless, so such a trial is not compared (ours leaves those tokens out of the entropy).
    """
    logits = np.array(list(stage_input.values()), dtype=np.float32)
    weights = np.exp(logits - logits.max())
    return bool((weights / weights.sum() == 0).any())


def compare_stagewise(logits: np.ndarray, history: list[int], params: SamplerParams) -> str:
    """Compare ours and llama.cpp stage by stage: 'same', 'rounding', 'llama_nan' or raise."""
    n_vocab = logits.shape[0]
    result = Pipeline(params).run(logits, history, rng=np.random.default_rng(0))
    reports = {report.name: report for report in result.stages}
    tokens = TokenArray(logits)
    previous = {i: float(v) for i, v in enumerate(logits)}
    for name in params.samplers:
        init, args = llama_stage(name, params, n_vocab, len(history))
        with llama_sampler(init, *args) as sampler:
            if name in HISTORY_STAGES:
                for token in history:
                    llama_cpp.llama_sampler_accept(sampler, token)
            tokens.apply(sampler)
        theirs = tokens.survivors()
        if name == "typical_p" and name in reports and _underflows_in_float32(previous):
            return "llama_nan"
        if name not in reports:  # our no-op stage: llama.cpp's must be one too
            assert theirs.keys() == previous.keys(), name
            previous = theirs
            tokens = TokenArray.of_survivors(theirs)
            continue
        ours = ours_as_dict(reports[name])
        if ours.keys() != theirs.keys():
            assert explained_by_rounding(name, params, previous, set(ours), set(theirs)), (
                f"{name}: ours kept {sorted(ours)}, llama.cpp kept {sorted(theirs)}"
            )
            return "rounding"  # the two chains now differ legitimately; stop comparing this trial
        if name == "temperature" and params.dynatemp_range > 0 and len(theirs) > 1:
            assert_same_dynamic_temperature(previous, theirs, reports[name])
        elif name == "dry":
            # DRY penalties grow as base**length: a float32 logit of -6775 is only good to ~4e-4,
            # which moves probabilities by more than PROB_ATOL; compare the penalties themselves.
            report = reports[name]
            for token, logit in ours_logits(report).items():
                our_input = float(report.input_candidates.values_at(np.array([token]))[0])
                scale = max(1.0, abs(theirs[token]), abs(previous[token]))
                assert our_input - logit == pytest.approx(
                    previous[token] - theirs[token], abs=1e-6 * scale
                ), (name, token)
        else:
            expected = softmax_of(theirs)
            for token, prob in ours.items():
                assert prob == pytest.approx(expected[token], abs=PROB_ATOL), (name, token)
        previous = theirs
        tokens = TokenArray.of_survivors(theirs)
    final = dict(zip(result.final_ids.tolist(), result.final_probs.tolist(), strict=True))
    assert final.keys() == previous.keys()
    return "same"


def assert_same_dynamic_temperature(
    stage_input: dict[int, float], theirs: dict[int, float], report: StageReport
) -> None:
    """llama.cpp's dynamic temperature (read back from its output) matches ours to float32 error.

    llama.cpp sums the entropy in float32, so its normalised entropy H/H_max is off by ~1e-7
    absolute; raised to the exponent and divided into logits tens apart, that moves probabilities
    by more than PROB_ATOL.  So the normalised entropy behind llama.cpp's temperature is compared
    (absolute 1e-6) unless the temperatures agree to float32 resolution anyway, then our
    probabilities against softmax(llama.cpp's input / our T).
    """
    applied = report.params["effective_temperature"]
    normalized = report.params["normalized_entropy"]
    base = report.params["temperature"]
    spread = report.params["dynatemp_range"]
    exponent = report.params["dynatemp_exponent"]
    assert isinstance(applied, float) and isinstance(normalized, float)
    assert isinstance(base, float) and isinstance(spread, float) and isinstance(exponent, float)
    ratios = [stage_input[t] / theirs[t] for t in theirs if abs(theirs[t]) > 1e-3]
    if ratios:
        their_temperature = float(np.median(ratios))
        low, high = max(0.0, base - spread), base + spread
        if their_temperature == pytest.approx(applied, rel=1e-6):
            pass  # equal to float32 resolution (of llama.cpp's parameters and of the read-back)
        elif exponent == 0.0:
            assert their_temperature == pytest.approx(high, rel=1e-6)
        else:
            fraction = max(0.0, (their_temperature - low) / (high - low))
            their_normalized = fraction ** (1.0 / exponent)
            assert normalized == pytest.approx(their_normalized, abs=1e-6, rel=1e-4)
    expected = softmax_of({t: stage_input[t] / applied for t in theirs})
    for token, prob in ours_as_dict(report).items():
        assert prob == pytest.approx(expected[token], abs=PROB_ATOL)


def random_logits(rng: np.random.Generator, n_vocab: int) -> np.ndarray:
    """Continuous float32 logits (no ties, so llama.cpp's unstable sorts cannot matter)."""
    scale = rng.choice([0.3, 1.0, 3.0, 8.0])
    return (rng.normal(size=n_vocab) * scale + rng.normal() * 5).astype(np.float32)


def random_history(rng: np.random.Generator, n_vocab: int, length: int) -> list[int]:
    """Token ids with real repeats: chunks copied from earlier in the history (for DRY)."""
    alphabet = int(min(n_vocab, rng.choice([2, 3, 5, 12, n_vocab])))
    history = [int(t) for t in rng.integers(0, alphabet, min(length, 6))]
    while len(history) < length:
        if rng.random() < 0.5 and len(history) > 2:
            start = int(rng.integers(0, len(history) - 1))
            history.extend(history[start : start + int(rng.integers(1, 8))])
        else:
            history.append(int(rng.integers(0, alphabet)))
    return history[:length]


def random_params(
    rng: np.random.Generator, n_vocab: int, samplers: tuple[str, ...]
) -> SamplerParams:
    """Random parameters in the ranges llama.cpp users pick from."""
    min_keep = int(rng.integers(1, 4))
    return SamplerParams(
        temperature=0.0 if rng.random() < 0.15 else float(rng.uniform(0.1, 2.0)),
        # llama.cpp's top-k ignores min_keep; ours keeps max(k, min_keep), so draw k >= min_keep.
        top_k=0 if rng.random() < 0.5 else int(rng.integers(min_keep, n_vocab + 5)),
        top_p=1.0 if rng.random() < 0.2 else float(rng.uniform(0.05, 0.99)),
        min_p=0.0 if rng.random() < 0.2 else float(rng.uniform(0.001, 0.5)),
        typical_p=1.0 if rng.random() < 0.4 else float(rng.uniform(0.1, 0.99)),
        repeat_penalty=float(rng.choice([1.0, rng.uniform(0.5, 2.0)])),
        frequency_penalty=float(rng.choice([0.0, rng.uniform(-1.0, 1.0)])),
        presence_penalty=float(rng.choice([0.0, rng.uniform(-1.0, 1.0)])),
        penalty_last_n=int(rng.choice([0, 1, 8, 64])),
        min_keep=min_keep,
        # llama.cpp's top-n-sigma ignores min_keep, ours honours it: they agree at min_keep 1.
        top_n_sigma=-1.0 if rng.random() < 0.4 or min_keep > 1 else float(rng.uniform(0.3, 3.0)),
        xtc_probability=float(rng.choice([0.0, 1.0])),
        xtc_threshold=float(rng.uniform(0.0, 0.6)),
        dry_multiplier=0.0 if rng.random() < 0.4 else float(rng.uniform(0.1, 3.0)),
        dry_base=float(rng.choice([1.0, 1.000001, rng.uniform(1.0, 3.0), 60.0])),
        dry_allowed_length=int(rng.integers(0, 5)),
        dry_penalty_last_n=int(rng.choice([-1, 1, 5, 16, 64])),
        dynatemp_range=0.0 if rng.random() < 0.5 else float(rng.uniform(0.05, 1.5)),
        dynatemp_exponent=float(rng.choice([1.0, rng.uniform(0.0, 3.0)])),
        samplers=samplers,
    )


SIZES = (
    2,
    5,
    17,
    64,
    300,
    1500,
)  # 300 and 1500 exercise llama.cpp's bucket sort and our dense/partial paths


@pytest.mark.parametrize("stage", LLAMA_ORDER)
def test_each_stage_matches_llama_cpp(stage: str) -> None:
    rng = np.random.default_rng(sum(map(ord, stage)))
    outcomes = []
    for trial in range(150):
        n_vocab = int(SIZES[trial % len(SIZES)])
        logits = random_logits(rng, n_vocab)
        history = random_history(rng, n_vocab, int(rng.integers(0, 80)))
        params = random_params(rng, n_vocab, (stage,))
        outcomes.append(compare_stagewise(logits, history, params))
    assert outcomes.count("rounding") <= 3, outcomes.count("rounding")


def test_default_chain_matches_llama_cpp_stage_by_stage() -> None:
    rng = np.random.default_rng(2026)
    outcomes = []
    for trial in range(200):
        n_vocab = int(SIZES[trial % len(SIZES)])
        logits = random_logits(rng, n_vocab)
        history = random_history(rng, n_vocab, int(rng.integers(0, 100)))
        outcomes.append(
            compare_stagewise(logits, history, random_params(rng, n_vocab, LLAMA_ORDER))
        )
    assert outcomes.count("rounding") <= 5


def test_shuffled_orders_match_llama_cpp() -> None:
    rng = np.random.default_rng(7)
    for trial in range(100):
        n_vocab = int(SIZES[trial % len(SIZES)])
        order = tuple(rng.permutation(list(LLAMA_ORDER)))
        params = random_params(rng, n_vocab, order)
        logits = random_logits(rng, n_vocab)
        history = random_history(rng, n_vocab, 30)
        compare_stagewise(logits, history, params)


def test_llama_cpp_chain_object_gives_the_same_final_distribution() -> None:
    """The default order as a real llama_sampler_chain (what llama.cpp's common sampler runs).

    No compaction here, so top_n_sigma (which leaves -inf entries in llama.cpp's array) is only
    combined with stages that do not count those entries (see the module docstring).
    """
    rng = np.random.default_rng(99)
    compared = 0
    for trial in range(120):
        n_vocab = int(SIZES[trial % len(SIZES)])
        logits = random_logits(rng, n_vocab)
        history = random_history(rng, n_vocab, 50)
        params = random_params(rng, n_vocab, LLAMA_ORDER)
        if params.dynatemp_range > 0 or params.xtc_probability > 0 or params.typical_p < 1:
            params = params.replace(top_n_sigma=-1.0)
        if compare_stagewise(logits, history, params) != "same":
            continue  # a proven float32 cut-off case; the chain would differ the same way
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        try:
            for name in LLAMA_ORDER:
                init, args = llama_stage(name, params, n_vocab, len(history))
                llama_cpp.llama_sampler_chain_add(
                    chain, init(*args)
                )  # the chain owns and frees them
            for token in history:
                llama_cpp.llama_sampler_accept(chain, token)
            tokens = TokenArray(logits)
            tokens.apply(chain)
        finally:
            llama_cpp.llama_sampler_free(chain)
        expected = softmax_of(tokens.survivors())
        result = Pipeline(params).run(logits, history)
        ours = dict(zip(result.final_ids.tolist(), result.final_probs.tolist(), strict=True))
        assert ours.keys() == expected.keys()
        tolerance = 1e-3 if params.dynatemp_range > 0 else PROB_ATOL  # float32 entropy, see above
        for token, prob in ours.items():
            assert prob == pytest.approx(expected[token], abs=tolerance)
        compared += 1
    assert compared >= 105


@pytest.mark.parametrize("stage", ["top_p", "typical_p"])
def test_cut_offs_placed_on_a_cumulative_boundary(stage: str) -> None:
    """p set to one of our float64 cumulative sums: llama.cpp's float32 sum may land either side."""
    rng = np.random.default_rng(5)
    outcomes = []
    for _ in range(60):
        n_vocab = int(rng.choice([8, 40, 300]))
        logits = random_logits(rng, n_vocab)
        probs = softmax_of({i: float(v) for i, v in enumerate(logits)})
        ranked = sorted(probs.values(), reverse=True)
        boundary = float(np.cumsum(ranked)[int(rng.integers(0, min(6, n_vocab - 1)))])
        params = SamplerParams(samplers=(stage,), top_p=boundary, typical_p=min(boundary, 0.999))
        outcomes.append(compare_stagewise(logits, [], params))
    assert set(outcomes) <= {"same", "rounding"}
    if stage == "top_p":
        assert "rounding" in outcomes  # the acceptance path is exercised, not just present


def test_a_real_difference_is_not_explained_by_rounding() -> None:
    stage_input = {0: 2.0, 1: 1.0, 2: 0.0, 3: -1.0}
    params = SamplerParams(top_p=0.5, min_p=0.2, typical_p=0.5)
    assert not explained_by_rounding("top_p", params, stage_input, {0, 1}, {0})  # cut far from p
    assert not explained_by_rounding("top_p", params, stage_input, {0, 2}, {0, 1})  # not a prefix
    assert not explained_by_rounding("min_p", params, stage_input, {0, 1}, {0})
    probs = softmax_of(stage_input)
    at_boundary = params.replace(top_p=probs[0] + 1e-7)
    assert explained_by_rounding("top_p", at_boundary, stage_input, {0, 1}, {0})
