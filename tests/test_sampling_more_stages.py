"""Hand-made distributions with exact expected outputs for quadratic smoothing, tail-free, top-H, p-less,
adaptive-p and Mirostat 1.0, each against the formula of the project whose semantics it follows.

The expected numbers are worked out here from the reference formulas (text-generation-webui's
QuadraticSamplingLogitsWarper, KoboldCpp's sample_tail_free, transformers' TopHLogitsWarper, the
p-less paper's Σp² rule, llama.cpp's adaptive-p and mirostat), never by calling the stages.
adaptive-p and Mirostat 1.0 are also compared with llama.cpp's C++ code, step after step, in
test_sampling_selectors_llamacpp.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sampling_helpers import softmax

from tokenlab.sampling import Candidates, StageReport, StepContext
from tokenlab.sampling.filters import PLess, TailFree, TopH
from tokenlab.sampling.mirostat import MirostatV1
from tokenlab.sampling.shaping import (
    ADAPTIVE_TOTAL_WEIGHT,
    ADAPTIVE_WEIGHTED_SUM,
    AdaptiveP,
    QuadraticSmoothing,
)
from tokenlab.sampling.stages import Stage

INF = math.inf


def run(stage: Stage, logits: list[float], state: dict[str, object] | None = None) -> StageReport:
    """One run of `stage` on a dense row, reported as the pipeline reports it."""
    row = np.array(logits, dtype=np.float64)
    before = Candidates.dense(row)
    outcome = stage.outcome(before, StepContext(n_vocab=row.shape[0], history=(), state=state or {}))
    params = {**stage.describe(), **(outcome.details or {})}
    return StageReport(stage.name, params, before, outcome.candidates, outcome.cutoff)


def dense(report: StageReport) -> np.ndarray:
    """The report's probabilities by token id (0 where removed)."""
    probs = np.zeros(report.candidates.n_vocab)
    for token in range(probs.shape[0]):
        probs[token] = report.prob_of(token)
    return probs


def kept(report: StageReport) -> list[int]:
    """Ids alive after the stage, ascending."""
    return [token for token in range(report.candidates.n_vocab) if report.contains(token)]


# -- quadratic smoothing (text-generation-webui) ---------------------------------------------------


@pytest.mark.parametrize(
    ("curve", "expected_logits"),
    [
        # k = 1, s = 0: max - 0.5·d² with d = 0, -1, -2
        (1.0, [2.0, 2.0 - 0.5, 2.0 - 0.5 * 4]),
        # k = 0.5, s = 0.5: max - 0.25·d² + 0.25·d³
        (2.0, [2.0, 2.0 - 0.25 - 0.25, 2.0 - 0.25 * 4 - 0.25 * 8]),
        # k = -1, s = 2: max + 0.5·d² + d³
        (5.0, [2.0, 2.0 + 0.5 - 1.0, 2.0 + 0.5 * 4 - 8.0]),
    ],
)
def test_smoothing_follows_the_webui_formula(curve: float, expected_logits: list[float]) -> None:
    report = run(QuadraticSmoothing(0.5, curve), [2.0, 1.0, 0.0, -INF])
    np.testing.assert_allclose(report.logits[:3], expected_logits, rtol=1e-12)
    assert report.logits[3] == -INF  # removed tokens stay removed
    np.testing.assert_allclose(dense(report), [*softmax(expected_logits), 0.0], rtol=1e-12)
    assert report.n_removed == 0


def test_smoothing_of_far_tokens_stays_finite_and_alive() -> None:
    report = run(QuadraticSmoothing(3.0, 1.0), [1e200, 0.0, -1e200])
    assert np.isfinite(report.logits).all() and report.n_kept == 3
    assert dense(report)[0] == 1.0


# -- tail-free (KoboldCpp) -------------------------------------------------------------------------

# |second differences| of [0.3, 0.25, 0.2, 0.1, 0.08, 0.07]: 0, 0.05, 0.08, 0.01 (sum 0.14), so the
# running sums are 0, 5/14, 13/14, 1: the cut is the first index >= min_keep whose sum passes z.
TFS_PROBS = [0.3, 0.25, 0.2, 0.1, 0.08, 0.07]


@pytest.mark.parametrize(
    ("z", "min_keep", "expected_kept"),
    [(0.3, 1, 1), (0.5, 1, 2), (0.9, 1, 2), (0.95, 1, 3), (0.3, 3, 3), (0.5, 5, 6)],
)
def test_tail_free_cuts_where_kobold_does(z: float, min_keep: int, expected_kept: int) -> None:
    shuffled = [3, 0, 5, 1, 4, 2]  # token id -> rank, so the stage has to sort
    logits = [math.log(TFS_PROBS[rank]) for rank in shuffled]
    report = run(TailFree(z, min_keep), logits)
    assert kept(report) == sorted(shuffled.index(rank) for rank in range(expected_kept))
    survivors = np.array(TFS_PROBS[:expected_kept])
    np.testing.assert_allclose(sorted(dense(report)[kept(report)], reverse=True), survivors / survivors.sum())


def test_tail_free_on_a_straight_line_counts_every_step_alike() -> None:
    # equal probabilities: the curvature sums to 0, so each of the 3 steps weighs 1/3
    assert kept(run(TailFree(0.5), [0.0] * 5)) == [0]
    assert kept(run(TailFree(0.7), [0.0] * 5)) == [0, 1]


def test_tail_free_leaves_two_tokens_alone() -> None:
    assert kept(run(TailFree(0.0), [0.0, -5.0, -INF])) == [0, 1]


# -- top-H (transformers) --------------------------------------------------------------------------

TOP_H_PROBS = [0.5, 0.25, 0.125, 0.125]


@pytest.mark.parametrize(("top_h", "expected_kept"), [(0.5, 1), (0.6, 2), (0.8, 3), (1.0, 4)])
def test_top_h_keeps_tokens_while_their_entropy_stays_under_top_h_times_h(
    top_h: float, expected_kept: int
) -> None:
    terms = [-p * math.log(p) for p in TOP_H_PROBS]  # ln2/2, ln2/2, 3ln2/8, 3ln2/8
    entropy = sum(terms)
    running = np.cumsum(terms)
    assert int((running <= top_h * entropy).sum()) == expected_kept  # the formula's own count
    report = run(TopH(top_h), [math.log(p) for p in TOP_H_PROBS])
    assert kept(report) == list(range(expected_kept))
    assert report.params["entropy"] == pytest.approx(entropy, rel=1e-12)
    assert report.cutoff is not None and report.cutoff.value == pytest.approx(top_h * entropy, rel=1e-12)


def test_top_h_sees_only_the_100_most_likely_renormalised() -> None:
    # 100 tokens at 0 and 1000 at -1: over the top 100 the distribution is uniform, H = ln 100,
    # each term is H/100, so top_h = 0.505 keeps exactly 50 (51 would reach 0.51·H)
    logits = [0.0] * 100 + [-1.0] * 1000
    assert kept(run(TopH(0.505), logits)) == list(range(50))
    assert kept(run(TopH(1.0), logits)) == list(range(100))


def test_top_h_keeps_min_keep() -> None:
    assert kept(run(TopH(0.01, min_keep=3), [math.log(p) for p in TOP_H_PROBS])) == [0, 1, 2]


# -- p-less ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("probs", "strength", "expected_kept"),
    [
        ([0.5, 0.3, 0.15, 0.05], 1.0, [0]),  # Σp² = 0.365
        ([0.5, 0.3, 0.15, 0.05], 0.5, [0, 1]),  # 0.1825
        ([0.5, 0.3, 0.15, 0.05], 0.25, [0, 1, 2]),  # 0.09125
        ([0.2, 0.4, 0.4], 1.0, [1, 2]),  # Σp² = 0.36
        ([0.25, 0.25, 0.25, 0.25], 1.0, [0, 1, 2, 3]),  # uniform: p = Σp², all stay
    ],
)
def test_p_less_keeps_p_at_least_the_sum_of_squares(
    probs: list[float], strength: float, expected_kept: list[int]
) -> None:
    report = run(PLess(strength), [math.log(p) for p in probs])
    assert kept(report) == expected_kept
    collision = sum(p * p for p in probs)
    assert report.params["sum_p_squared"] == pytest.approx(collision, rel=1e-12)
    survivors = np.array(probs)[expected_kept]
    np.testing.assert_allclose(dense(report)[expected_kept], survivors / survivors.sum(), rtol=1e-12)


def test_p_less_keeps_min_keep() -> None:
    assert kept(run(PLess(1.0, min_keep=3), [math.log(p) for p in (0.5, 0.3, 0.15, 0.05)])) == [0, 1, 2]


# -- adaptive-p (llama.cpp) ------------------------------------------------------------------------


def test_adaptive_p_transform_and_moving_average() -> None:
    stage = AdaptiveP(0.3, 0.9)
    probs = [0.5, 0.3, 0.2]
    report = run(stage, [math.log(p) for p in probs] + [-INF])
    # the average starts at the target: adapted = 2·0.3 - 0.3 = 0.3
    assert report.params["average"] == pytest.approx(0.3)
    assert report.params["adapted_target"] == pytest.approx(0.3)
    distances = [abs(p - 0.3) / 0.3 for p in probs]  # 2/3, 0, 1/3
    shaped = [5.0 - 10.0 * d * d / (1.0 + d) for d in distances]  # 7/3, 5, 25/6
    np.testing.assert_allclose(shaped, [7 / 3, 5.0, 25 / 6])
    np.testing.assert_allclose(dense(report), [*softmax(shaped), 0.0], rtol=1e-9)
    # token 0 (p = 0.5 on entry) is appended: weighted sum 0.5 + 0.9·3, total weight 1 + 0.9·10
    state = dict(stage.next_state(report, 0))
    assert state[ADAPTIVE_WEIGHTED_SUM] == pytest.approx(0.5 + 0.9 * 3.0)
    assert state[ADAPTIVE_TOTAL_WEIGHT] == pytest.approx(1.0 + 0.9 * 10.0)
    after = run(stage, [math.log(p) for p in probs] + [-INF], state)
    assert after.params["average"] == pytest.approx(3.2 / 10.0)
    assert after.params["adapted_target"] == pytest.approx(0.6 - 0.32)
    # a token that was not alive on entry leaves the average alone
    assert dict(stage.next_state(report, 3)) == {
        ADAPTIVE_WEIGHTED_SUM: report.params["weighted_sum"],
        ADAPTIVE_TOTAL_WEIGHT: report.params["total_weight"],
    }


def test_adaptive_p_clamps_the_adapted_target() -> None:
    stage = AdaptiveP(0.9, 0.5)
    # an average of 0.05 asks for 1.75: clamped to 1, so the most likely token is favoured most
    report = run(stage, [0.0, -1.0, -2.0], {ADAPTIVE_WEIGHTED_SUM: 0.1, ADAPTIVE_TOTAL_WEIGHT: 2.0})
    assert report.params["adapted_target"] == 1.0
    with pytest.raises(ValueError, match="adaptive_p_weighted_sum"):
        run(stage, [0.0, -1.0], {ADAPTIVE_WEIGHTED_SUM: "x"})


@pytest.mark.parametrize(("name", "make"), [
    ("adaptive_target", lambda: AdaptiveP(1.5)),
    ("adaptive_decay", lambda: AdaptiveP(0.5, 0.995)),
    ("smoothing_factor", lambda: QuadraticSmoothing(-1.0)),
    ("smoothing_curve", lambda: QuadraticSmoothing(1.0, 0.5)),
    ("tfs_z", lambda: TailFree(1.5)),
    ("top_h", lambda: TopH(0.0)),
    ("p_less", lambda: PLess(2.0)),
])
def test_bad_parameters_name_themselves(name: str, make: object) -> None:
    with pytest.raises(ValueError, match=name):
        make()  # type: ignore[operator]


# -- Mirostat 1.0 (llama.cpp) ----------------------------------------------------------------------


def test_mirostat_v1_picks_k_from_the_zipf_estimate() -> None:
    # an exact Zipf law p ∝ rank^-1.5 over 50 tokens: every b_i/t_i is 1.5, so s = 1.5 exactly
    n_vocab, s = 50, 1.5
    logits = [-s * math.log(rank) for rank in range(1, n_vocab + 1)]
    tau = 3.0
    mu = 2 * tau
    epsilon = s - 1
    k = ((epsilon * 2**mu) / (1 - n_vocab**-epsilon)) ** (1 / s)  # 19.6...
    report = run(MirostatV1(tau, 0.1), logits)
    assert report.params["s_hat"] == pytest.approx(s, rel=1e-12)
    assert report.params["k"] == pytest.approx(k, rel=1e-12)
    assert kept(report) == list(range(int(k)))
    # mu moves by eta·(surprise - tau), the surprise under the kept distribution
    chosen_prob = report.prob_of(0)
    state = dict(MirostatV1(tau, 0.1).next_state(report, 0))
    assert state["mirostat_mu"] == pytest.approx(mu - 0.1 * (-math.log2(chosen_prob) - tau))


def test_the_lab_shows_adaptive_ps_state_beside_its_knobs() -> None:
    from tokenlab.lab.controller import live_values
    from tokenlab.sampling import Pipeline, SamplerParams

    params = SamplerParams(samplers=("adaptive_p",), adaptive_target=0.4, adaptive_decay=0.5)
    state = {ADAPTIVE_WEIGHTED_SUM: 0.3, ADAPTIVE_TOTAL_WEIGHT: 1.5}  # an average of 0.2
    result = Pipeline(params).run(np.array([0.0, -1.0, -2.0]), state=state)
    # the adapted target 2·0.4 - 0.2 = 0.6 beside the target, the average beside the decay
    assert dict(live_values(result)) == pytest.approx({"adaptive_target": 0.6, "adaptive_decay": 0.2})


def test_new_knobs_default_to_off_round_trip_and_name_the_stage_that_removed_a_token() -> None:
    import json

    from tokenlab.sampling import DEFAULT_ORDER, Pipeline, SamplerParams, parse_samplers

    defaults = SamplerParams()
    assert (defaults.adaptive_target, defaults.adaptive_decay) == (-1.0, 0.9)
    assert (defaults.smoothing_factor, defaults.smoothing_curve, defaults.tfs_z) == (0.0, 1.0, 1.0)
    assert (defaults.top_h, defaults.p_less, defaults.mirostat) == (0.0, 0.0, 0)
    assert [stage.name for stage in Pipeline(defaults).stages] == ["top_k", "top_p", "min_p", "temperature"]
    assert DEFAULT_ORDER[-3:] == ("mirostat_v1", "mirostat_v2", "adaptive_p")
    assert parse_samplers("tfs, toph, pless, quadratic, adaptive, mirostat1") == (
        "tail_free", "top_h", "p_less", "smoothing", "adaptive_p", "mirostat_v1"
    )
    params = SamplerParams(adaptive_target=0.3, adaptive_decay=0.5, smoothing_factor=0.2, smoothing_curve=2.0,
                           tfs_z=0.9, top_h=0.5, p_less=0.5, mirostat=1, top_k=0)
    assert SamplerParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params  # as sessions save it
    names = [stage.name for stage in Pipeline(params).stages]
    assert names == ["smoothing", "top_h", "tail_free", "top_p", "min_p", "p_less", "temperature",
                     "mirostat_v1", "adaptive_p"]
    tail = [0.0, -0.1, -0.2, -3.0, -3.1, -3.2, -3.3, -3.4, -3.5]
    result = Pipeline(SamplerParams(samplers=("tail_free",), tfs_z=0.5)).run(np.array(tail))
    assert result.removed_by(8) == "tail_free" and result.removed_by(0) is None
