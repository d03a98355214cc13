"""Differential tests of the stateful final selectors against llama.cpp's C++ samplers, over many steps.

- Mirostat 1.0 (`llama_sampler_init_mirostat`, m = 100): llama.cpp keeps mu inside its sampler and
  picks a token with its own generator; we feed that token to `next_state` and compare the next
  step's truncation, so a wrong mu (or a wrong k) shows up as a different kept set.
- Adaptive-p (`llama_sampler_init_adaptive_p`): llama.cpp draws, then `llama_sampler_accept` updates
  its moving average; we feed the same token to `next_state` and compare the next step's whole
  transformed distribution, so a wrong average shows up in every probability.

llama.cpp works in float32, we in float64: mirostat's k may land one token apart when it is within
float32 rounding of an integer (then the trajectories legitimately part), and adaptive-p's
probabilities agree to a relative 1e-4.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tokenlab.sampling import MIROSTAT_MU, Candidates, StageReport, StepContext
from tokenlab.sampling.mirostat import MirostatV1
from tokenlab.sampling.shaping import ADAPTIVE_TOTAL_WEIGHT, ADAPTIVE_WEIGHTED_SUM, AdaptiveP

llama_cpp = pytest.importorskip("llama_cpp")

from test_sampling_catalogue_llamacpp import survivors_array
from test_sampling_llamacpp import TokenArray, llama_sampler, ours_as_dict, random_logits, softmax_of

# float32 k = powf(...) carries a relative error of a few ulps amplified by the exponent 1/s.
K_RTOL = 1e-4
PROB_RTOL = 1e-4
INT_LIMIT = 2.0**31
PROB_ATOL = 1e-7


def zipf_logits(rng: np.random.Generator, n_vocab: int) -> np.ndarray:
    """Float32 logits of a noisy Zipf law (p ∝ rank^-s), the shape Mirostat 1.0 assumes, shuffled."""
    exponent = rng.uniform(0.6, 2.5)
    ranked = -exponent * np.log(np.arange(1, n_vocab + 1)) + rng.normal(size=n_vocab) * 0.05
    return rng.permutation(ranked).astype(np.float32)


def run_stage(stage: MirostatV1 | AdaptiveP, logits: np.ndarray, state: object) -> StageReport:
    """One run of `stage` on a raw row, as the pipeline would report it."""
    before = Candidates.dense(logits)
    context = StepContext(n_vocab=int(logits.shape[0]), history=(), state=state or {})
    outcome = stage.outcome(before, context)
    params = {**stage.describe(), **(outcome.details or {})}
    return StageReport(stage.name, params, before, outcome.candidates, outcome.cutoff)


def test_mirostat_v1_trajectory_matches_llama_cpp() -> None:
    rng = np.random.default_rng(91)
    compared = cut = parted = overflowed = 0
    for trial in range(24):
        n_vocab = int([300, 1500, 5000][trial % 3])
        tau = float(rng.uniform(1.0, 9.0))
        eta = float(rng.uniform(0.05, 1.0))
        stage = MirostatV1(tau, eta)
        state: dict[str, object] | None = None
        with llama_sampler(
            llama_cpp.llama_sampler_init_mirostat, n_vocab, 777 + trial, tau, eta, 100
        ) as sampler:
            for _ in range(8):
                logits = zipf_logits(rng, n_vocab) if rng.random() < 0.8 else random_logits(rng, n_vocab)
                tokens = TokenArray(logits)
                tokens.apply(sampler)
                theirs = tokens.survivors()
                ids, _ = survivors_array(tokens)
                chosen = int(ids[tokens.array.selected])
                report = run_stage(stage, logits, state)
                mu = report.params["mu"]
                assert isinstance(mu, float)
                if state is None:
                    assert mu == pytest.approx(2 * tau)
                ours = ours_as_dict(report)
                k = report.params["k"]
                assert isinstance(k, float)
                if not k < INT_LIMIT:
                    # llama.cpp's int(k) is undefined here; on x86 it gives INT_MIN, so one token
                    assert len(theirs) == 1 and len(ours) == n_vocab
                    overflowed += 1
                    break
                if ours.keys() != theirs.keys():
                    # only a k within float32 rounding of an integer may put the cut elsewhere
                    assert abs(len(ours) - len(theirs)) == 1
                    assert abs(k - round(k)) <= K_RTOL * k, (k, len(ours), len(theirs))
                    parted += 1
                    break
                expected = softmax_of(theirs)
                for token, prob in ours.items():
                    assert prob == pytest.approx(expected[token], abs=1e-5)
                compared += 1
                cut += 1 < len(ours) < n_vocab
                state = dict(report_next_state(stage, report, chosen))
                surprise = -math.log2(report.prob_of(chosen))
                assert state[MIROSTAT_MU] == pytest.approx(mu - eta * (surprise - tau), rel=1e-12)
    assert compared >= 170 and cut >= 100 and parted <= 4 and overflowed <= 4


def report_next_state(
    stage: MirostatV1 | AdaptiveP, report: StageReport, token_id: int
) -> dict[str, object]:
    """The stage's state after `token_id` was appended."""
    return dict(stage.next_state(report, token_id))


@pytest.mark.parametrize("target", [0.05, 0.3, 0.5, 0.9])
def test_adaptive_p_trajectory_matches_llama_cpp(target: float) -> None:
    rng = np.random.default_rng(int(target * 100))
    for trial in range(6):
        n_vocab = int([40, 300, 2000][trial % 3])
        decay = float([0.0, 0.5, 0.9, 0.99][trial % 4])
        stage = AdaptiveP(target, decay)
        state: dict[str, object] | None = None
        averages = []
        with llama_sampler(llama_cpp.llama_sampler_init_adaptive_p, target, decay, 99 + trial) as sampler:
            for step in range(12):
                logits = random_logits(rng, n_vocab)
                if step % 3 == 2:  # an earlier cut: removed tokens stay -inf and count for nothing
                    logits[rng.random(n_vocab) < 0.6] = -np.inf
                    logits[int(np.argmax(rng.random(n_vocab)))] = 1.0
                tokens = TokenArray(logits)
                tokens.apply(sampler)
                theirs = softmax_of(tokens.survivors())
                ids, _ = survivors_array(tokens)
                chosen = int(ids[tokens.array.selected])
                llama_cpp.llama_sampler_accept(sampler, chosen)

                report = run_stage(stage, logits, state)
                ours = ours_as_dict(report)
                assert ours.keys() == theirs.keys()  # nothing removed, nothing revived
                for token, prob in ours.items():
                    assert prob == pytest.approx(theirs[token], rel=PROB_RTOL, abs=PROB_ATOL)
                averages.append(report.params["average"])
                state = report_next_state(stage, report, chosen)
                original = float(softmax_of({i: float(v) for i, v in enumerate(logits) if v > -np.inf})[chosen])
                weighted_sum = report.params["weighted_sum"]
                total_weight = report.params["total_weight"]
                assert isinstance(weighted_sum, float) and isinstance(total_weight, float)
                assert state[ADAPTIVE_WEIGHTED_SUM] == pytest.approx(original + decay * weighted_sum)
                assert state[ADAPTIVE_TOTAL_WEIGHT] == pytest.approx(1.0 + decay * total_weight)
        assert averages[0] == pytest.approx(target)
        assert len(set(averages)) > 1  # the average moved: the state really was carried
