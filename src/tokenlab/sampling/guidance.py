"""Classifier-free guidance (CFG): the raw row pushed away from a negative context's row.

transformers' UnbatchedClassifierFreeGuidanceLogitsProcessor semantics: with both rows turned into
log-probabilities,

    scores = log_softmax(negative) + scale · (log_softmax(positive) − log_softmax(negative))

so scale 1 is the positive row itself (the stage is then off), 0 is the negative context's
distribution, and scale > 1 moves away from what the negative context predicts. The negative row
comes with the step (`StepContext.negative_logits`): decoding it is the generation loop's job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tokenlab.sampling.candidates import Candidates, workspace_candidates
from tokenlab.sampling.stages import Stage, StepContext, register_stage

if TYPE_CHECKING:
    from tokenlab.sampling.params import SamplerParams


def log_softmax(row: np.ndarray) -> np.ndarray:
    """Float64 log-probabilities of a logits row, with the pipeline's rules for degenerate rows.

    NaN counts as -inf; +inf logits share the mass equally (the rest get -inf); a row with nothing
    above -inf stays all -inf.
    """
    values = np.asarray(row, dtype=np.float64)
    values = np.where(np.isnan(values), -np.inf, values)
    infinite = values == np.inf
    if infinite.any():
        return np.where(infinite, -np.log(np.count_nonzero(infinite)), -np.inf)
    if not (values > -np.inf).any():
        return np.full(values.shape[0], -np.inf)
    with np.errstate(over="ignore"):  # a spread beyond float64 (1e308 and -1e308) is -inf: probability 0
        shifted = values - values.max()
    return shifted - np.log(np.exp(shifted).sum())


def guided_scores(positive: np.ndarray, negative: np.ndarray, scale: float) -> np.ndarray:
    """log_softmax(negative) + scale·(log_softmax(positive) − log_softmax(negative)), float64.

    A token that either row rules out (-inf) stays out, whatever the scale: the formula has no
    finite answer for it once scale leaves [0, 1].
    """
    if positive.shape != negative.shape:
        raise ValueError(
            f"the negative row has {negative.shape[0]} logits but the positive row {positive.shape[0]}"
        )
    log_positive = log_softmax(positive)
    log_negative = log_softmax(negative)
    both = (log_positive > -np.inf) & (log_negative > -np.inf)
    with np.errstate(invalid="ignore", over="ignore"):
        scores = log_negative + scale * (log_positive - log_negative)
    return np.where(both, scores, -np.inf)


@register_stage
class Guidance(Stage):
    """CFG against the negative context's row; runs first, on the raw row (before logit_bias and ban)."""

    name = "guidance"
    orderable = False

    def __init__(self, scale: float) -> None:
        self.scale = float(scale)

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        return cls(params.guidance_scale) if params.guidance_scale != 1.0 else None

    def apply(self, candidates: Candidates, context: StepContext) -> Candidates:
        negative = context.negative_logits
        if negative is None:
            raise ValueError(
                f"guidance_scale {self.scale} needs the negative context's logits (negative_logits=...); "
                "set guidance_scale to 1 to turn guidance off"
            )
        return workspace_candidates(guided_scores(candidates.logits, np.asarray(negative), self.scale))

    def describe(self) -> dict[str, object]:
        return {"scale": self.scale}


__all__ = ["Guidance", "guided_scores", "log_softmax"]
