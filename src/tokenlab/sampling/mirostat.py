"""Mirostat 1.0 and 2.0 (llama.cpp's mirostat and mirostat_v2) with their state made explicit.

llama.cpp keeps mu inside the sampler and updates it right after drawing.  Here the stage reads mu
from the run's `state` (2·tau when absent), truncates, and `next_state` returns the mu that follows
once a token is appended: mu - eta·(surprise - tau), the surprise taken under the distribution the
stage produced.  The lab keeps one state per position, so rewinding and branching are free.  Both
versions share the state key: `SamplerParams.mirostat` runs one of them at a time.
"""

from __future__ import annotations

import math
import numbers
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from tokenlab.sampling._validate import check_float, check_int
from tokenlab.sampling.candidates import Candidates, softmax
from tokenlab.sampling.stages import (
    Cutoff,
    Stage,
    StageOutcome,
    StageReportLike,
    StepContext,
    register_stage,
)

if TYPE_CHECKING:
    from tokenlab.sampling.params import SamplerParams

MIROSTAT_MU = "mirostat_mu"
"""State key holding Mirostat's mu (in bits)."""

MIROSTAT_VERSIONS: tuple[int, ...] = (0, 1, 2)
"""Values `SamplerParams.mirostat` accepts: 0 = off, 1 = Mirostat 1.0, 2 = Mirostat 2.0."""

MIROSTAT_M = 100
"""Mirostat 1.0 estimates the Zipf exponent from this many of the most likely tokens (llama.cpp's m)."""


def mu_from_state(state: Mapping[str, object], tau: float) -> float:
    """Mirostat's mu in `state`, or its initial value 2·tau; ValueError when it is not a number."""
    value = state.get(MIROSTAT_MU)
    if value is None:
        return 2.0 * tau
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"state[{MIROSTAT_MU!r}] must be a finite number, got {value!r}")
    return float(value)


@register_stage
class MirostatV2(Stage):
    """Mirostat 2.0: keep the tokens whose surprise -log2 p is at most mu (at least the best one).

    It chooses rather than filters, so it ignores min_keep (as llama.cpp does) and belongs at the
    end of the chain: llama.cpp's --mirostat 2 runs temperature then this stage and nothing else
    (order_preset("mirostat")).  The report's params show the mu used.
    """

    name = "mirostat_v2"

    def __init__(self, tau: float = 5.0, eta: float = 0.1) -> None:
        self.tau = check_float("mirostat_tau", tau, low=0.0)
        self.eta = check_float("mirostat_eta", eta, low=0.0)

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        if params.mirostat != 2:
            return None
        return cls(params.mirostat_tau, params.mirostat_eta)

    def outcome(self, candidates: Candidates, context: StepContext) -> StageOutcome:
        mu = mu_from_state(context.state, self.tau)
        logits = candidates.logits
        top = candidates.max_logit()
        if top == math.inf:  # the +inf tokens share all the mass
            with np.errstate(divide="ignore"):
                surprise = -np.log2(softmax(logits))
            keep = surprise <= mu
        else:
            # -log2 p = (log Z - logit) / ln 2, so surprise <= mu is a logit threshold; this
            # spares a log over a full row.
            shifted = logits.astype(np.float64)  # a copy
            with np.errstate(over="ignore"):  # -1e308 - 1e308 is -inf: a weight of 0
                shifted -= top
            log_total = top + math.log(float(np.exp(shifted, out=shifted).sum()))
            keep = logits >= np.float64(log_total - mu * math.log(2.0))
        after = candidates.keep_where(keep)
        if after.count() == 0:
            after = candidates.top(1)
        cutoff = Cutoff(mu, "surprise_bits", "kept tokens with surprise -log2 p <= mu")
        return StageOutcome(after, cutoff, {"mu": mu})

    def next_state(self, report: StageReportLike, token_id: int) -> Mapping[str, object]:
        """mu after `token_id`: mu - eta·(surprise - tau) under this stage's output."""
        return next_mu(report, token_id, self.tau, self.eta)

    def describe(self) -> dict[str, object]:
        return {"tau": self.tau, "eta": self.eta}


def next_mu(
    report: StageReportLike, token_id: int, tau: float, eta: float
) -> Mapping[str, object]:
    """The state after `token_id`: mu - eta·(surprise - tau), the surprise under the stage's output.

    A token the stage removed (the user forced it) is measured under the stage's input; a token
    with no probability there either leaves mu unchanged.
    """
    mu = report.params["mu"]
    assert isinstance(mu, float)
    prob = report.prob_of(token_id)
    if prob <= 0.0:
        prob = report.input_prob_of(token_id)
    if prob <= 0.0:
        return types.MappingProxyType({MIROSTAT_MU: mu})
    surprise = -math.log2(prob)
    return types.MappingProxyType({MIROSTAT_MU: mu - eta * (surprise - tau)})


@register_stage
class MirostatV1(Stage):
    """Mirostat 1.0 (llama.cpp's mirostat, m = 100): top-k with a k chosen to reach surprise mu.

    From the m most likely tokens it estimates the Zipf exponent s = Σ t_i·b_i / Σ t_i²
    (t_i = ln((i+2)/(i+1)), b_i = ln(p_i/p_{i+1})), then keeps the k = ((ε·2^mu)/(1 - N^-ε))^(1/s)
    most likely tokens, ε = s - 1 and N the vocabulary size, k truncated to an integer and at least 1.
    When k is NaN (no estimate: one candidate, or s = 1) one token is kept; an infinite k keeps all
    (llama.cpp converts those to int, which is undefined).  It ignores min_keep, as llama.cpp does.
    The report's params show the mu used, s and k.
    """

    name = "mirostat_v1"

    def __init__(self, tau: float = 5.0, eta: float = 0.1, m: int = MIROSTAT_M) -> None:
        self.tau = check_float("mirostat_tau", tau, low=0.0)
        self.eta = check_float("mirostat_eta", eta, low=0.0)
        self.m = check_int("mirostat_m", m, low=2)

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        if params.mirostat != 1:
            return None
        return cls(params.mirostat_tau, params.mirostat_eta)

    def outcome(self, candidates: Candidates, context: StepContext) -> StageOutcome:
        mu = mu_from_state(context.state, self.tau)
        count = candidates.count()
        best_logits = candidates.top(min(self.m, count)).logits
        pairs = min(self.m - 1, count - 1)
        steps = np.arange(pairs, dtype=np.float64)
        t = np.log((steps + 2.0) / (steps + 1.0))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            b = -np.diff(best_logits)  # ln(p_i / p_{i+1}), which needs no normalisation
            s_hat = np.float64((t * b).sum() / (t * t).sum()) if pairs else np.float64(math.nan)
            epsilon = s_hat - 1.0
            # k in log space: (ε·2^mu)/(1 - N^-ε) overflows for very peaked rows (huge s), ln k doesn't
            log_numerator = np.log(np.abs(epsilon)) + mu * math.log(2.0)
            log_denominator = np.log(np.abs(np.expm1(-epsilon * math.log(context.n_vocab))))
            k = float(np.exp((log_numerator - log_denominator) / s_hat))
            s_hat = float(s_hat)
        if math.isnan(k):
            keep = 1
        elif k >= count:
            keep = count
        else:
            keep = max(int(k), 1)
        after = candidates if keep >= count else candidates.top(keep)
        cutoff = Cutoff(mu, "surprise_bits", "kept the k most likely, k from s and mu (Zipf)")
        return StageOutcome(after, cutoff, {"mu": mu, "s_hat": s_hat, "k": k})

    def next_state(self, report: StageReportLike, token_id: int) -> Mapping[str, object]:
        """mu after `token_id`: mu - eta·(surprise - tau) under this stage's output."""
        return next_mu(report, token_id, self.tau, self.eta)

    def describe(self) -> dict[str, object]:
        return {"tau": self.tau, "eta": self.eta, "m": self.m}


def check_mirostat(value: object) -> int:
    """`SamplerParams.mirostat` as 0, 1 or 2, or a ValueError."""
    version = check_int(
        "mirostat", value, low=0, note=" (0 = off, 1 = Mirostat 1.0, 2 = Mirostat 2.0)"
    )
    if version not in MIROSTAT_VERSIONS:
        raise ValueError(
            f"mirostat must be 0 (off), 1 (Mirostat 1.0) or 2 (Mirostat 2.0), got {version!r}"
        )
    return version
