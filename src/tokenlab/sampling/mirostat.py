"""Mirostat 2.0 (llama.cpp's mirostat_v2) with its state made explicit.

llama.cpp keeps mu inside the sampler and updates it right after drawing.  Here the stage reads mu
from the run's `state` (2·tau when absent), truncates, and `next_state` returns the mu that follows
once a token is appended: mu - eta·(surprise - tau), the surprise taken under the distribution the
stage produced.  The lab keeps one state per position, so rewinding and branching are free.
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

MIROSTAT_VERSIONS: tuple[int, ...] = (0, 2)
"""Values `SamplerParams.mirostat` accepts: 0 = off, 2 = Mirostat 2.0 (1.0 is not implemented)."""


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
        """mu after `token_id`: mu - eta·(surprise - tau) under this stage's output.

        A token the stage removed (the user forced it) is measured under the stage's input; a
        token with no probability there either leaves mu unchanged.
        """
        mu = report.params["mu"]
        assert isinstance(mu, float)
        prob = report.prob_of(token_id)
        if prob <= 0.0:
            prob = report.input_prob_of(token_id)
        if prob <= 0.0:
            return types.MappingProxyType({MIROSTAT_MU: mu})
        surprise = -math.log2(prob)
        return types.MappingProxyType({MIROSTAT_MU: mu - self.eta * (surprise - self.tau)})

    def describe(self) -> dict[str, object]:
        return {"tau": self.tau, "eta": self.eta}


def check_mirostat(value: object) -> int:
    """`SamplerParams.mirostat` as 0 or 2, or a ValueError."""
    version = check_int("mirostat", value, low=0, note=" (0 = off, 2 = Mirostat 2.0)")
    if version not in MIROSTAT_VERSIONS:
        raise ValueError(
            f"mirostat must be 0 (off) or 2 (Mirostat 2.0), got {version!r}"
            + ("; Mirostat 1.0 is not implemented" if version == 1 else "")
        )
    return version
