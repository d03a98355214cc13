"""Stages that reshape the logits instead of cutting them: quadratic smoothing and adaptive-p.

`smoothing` follows text-generation-webui's QuadraticSamplingLogitsWarper.  `adaptive_p` follows
llama.cpp's adaptive-p sampler (src/llama-sampler.cpp, PR #17927): it keeps an exponential moving
average of the probabilities of the chosen tokens, which, like mirostat's mu, lives in the run's
`state` (see `AdaptiveP.next_state`), so the lab can rewind and branch by keeping old states.
"""

from __future__ import annotations

import math
import numbers
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from tokenlab.sampling._validate import check_float
from tokenlab.sampling.candidates import FMAX, Candidates, softmax
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


@register_stage
class QuadraticSmoothing(Stage):
    """Quadratic smoothing (text-generation-webui's QuadraticSamplingLogitsWarper).

    Every alive logit l becomes -k·f·d² + s·f·d³ + max, with d = l - max, f the smoothing factor,
    k = (3 - curve)/2 and s = (curve - 1)/2: curve 1 is the plain quadratic, which flattens the
    top tokens and sharpens the tail.  Nothing is removed: a logit the formula drives past float
    range stays alive at -FMAX.  With +inf logits (which hold all the mass) the stage changes nothing.
    """

    name = "smoothing"

    def __init__(self, factor: float, curve: float = 1.0) -> None:
        self.factor = check_float("smoothing_factor", factor, low=0.0, low_open=True, note=" (0 = off)")
        self.curve = check_float("smoothing_curve", curve, low=1.0, high=10.0)

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        if params.smoothing_factor <= 0:
            return None
        return cls(params.smoothing_factor, params.smoothing_curve)

    def outcome(self, candidates: Candidates, context: StepContext) -> StageOutcome:
        top = candidates.max_logit()
        if not math.isfinite(top):
            return StageOutcome(candidates)
        logits = candidates.logits
        alive = logits > -np.inf
        k = (3.0 - self.curve) / 2.0
        s = (self.curve - 1.0) / 2.0
        with np.errstate(over="ignore", invalid="ignore"):
            diff = np.where(alive, logits - np.float64(top), 0.0)
            smoothed = -(k * self.factor) * diff * diff + top
            if s:
                smoothed += (s * self.factor) * diff * diff * diff
        # The formula sends far tokens towards -inf; past float range they stay alive at -FMAX.
        smoothed = np.where(np.isnan(smoothed), -FMAX, np.clip(smoothed, -FMAX, FMAX))
        smoothed[~alive] = -np.inf
        return StageOutcome(candidates.with_logits(smoothed, order_kept=False))

    def describe(self) -> dict[str, object]:
        return {"factor": self.factor, "curve": self.curve}


ADAPTIVE_WEIGHTED_SUM = "adaptive_p_weighted_sum"
"""State key: Σ decay^i·p_i over the chosen tokens' original probabilities, newest first."""
ADAPTIVE_TOTAL_WEIGHT = "adaptive_p_total_weight"
"""State key: Σ decay^i, so that the moving average is weighted_sum / total_weight."""

# llama.cpp's transform: logit = PEAK - SHARPNESS·d²/(1 + d), d = |p - target| / WIDTH.
_WIDTH = 0.3
_PEAK = 5.0
_SHARPNESS = 10.0


def _state_number(state: Mapping[str, object], key: str, default: float) -> float:
    value = state.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"state[{key!r}] must be a finite number, got {value!r}")
    return float(value)


@register_stage
class AdaptiveP(Stage):
    """Adaptive-p (llama.cpp): favour tokens whose probability is near a target that adapts over time.

    The stage keeps a moving average of the original probabilities of the tokens chosen so far
    (weights decay^i, newest first) and aims this step at adapted = clamp(2·target - average, 0, 1),
    so a run of likely tokens pulls the next choices towards less likely ones.  Every alive token's
    logit becomes 5 - 10·d²/(1 + d), d = |p - adapted| / 0.3, p its probability on entry.  It
    chooses rather than filters (nothing is removed) and belongs at the end of the chain, where
    llama.cpp puts it instead of its final draw.  The average starts at the target (weighted_sum =
    target/(1 - decay), total_weight = 1/(1 - decay)).  The report's params show the average and
    the adapted target.
    """

    name = "adaptive_p"

    def __init__(self, target: float, decay: float = 0.9) -> None:
        self.target = check_float("adaptive_target", target, low=0.0, high=1.0, note=" (< 0 = off)")
        self.decay = check_float("adaptive_decay", decay, low=0.0, high=0.99)

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        if params.adaptive_target < 0:
            return None
        return cls(params.adaptive_target, params.adaptive_decay)

    def initial_state(self) -> tuple[float, float]:
        """(weighted_sum, total_weight) before any token: an average equal to the target."""
        return self.target / (1.0 - self.decay), 1.0 / (1.0 - self.decay)

    def outcome(self, candidates: Candidates, context: StepContext) -> StageOutcome:
        start_sum, start_weight = self.initial_state()
        weighted_sum = _state_number(context.state, ADAPTIVE_WEIGHTED_SUM, start_sum)
        total_weight = _state_number(context.state, ADAPTIVE_TOTAL_WEIGHT, start_weight)
        average = weighted_sum / total_weight if total_weight != 0.0 else self.target
        adapted = min(1.0, max(0.0, 2.0 * self.target - average))
        logits = candidates.logits
        probs = softmax(logits)
        distance = np.abs(probs - adapted) / _WIDTH
        shaped = _PEAK - _SHARPNESS * distance * distance / (1.0 + distance)
        shaped[~(logits > -np.inf)] = -np.inf
        details = {
            "weighted_sum": weighted_sum,
            "total_weight": total_weight,
            "average": average,
            "adapted_target": adapted,
        }
        cutoff = Cutoff(adapted, "probability", "favoured tokens with p near the adapted target")
        return StageOutcome(candidates.with_logits(shaped, order_kept=False), cutoff, details)

    def next_state(self, report: StageReportLike, token_id: int) -> Mapping[str, object]:
        """The moving average after `token_id`, counted with its probability on entry to the stage.

        llama.cpp updates only when the appended token is the one it drew; here any token alive on
        entry counts (a token the user forced is treated as chosen), and a token that was not alive
        there leaves the state unchanged.
        """
        weighted_sum = report.params["weighted_sum"]
        total_weight = report.params["total_weight"]
        assert isinstance(weighted_sum, float) and isinstance(total_weight, float)
        if report.input_candidates.contains(token_id):
            weighted_sum = report.input_prob_of(token_id) + self.decay * weighted_sum
            total_weight = 1.0 + self.decay * total_weight
        return types.MappingProxyType(
            {ADAPTIVE_WEIGHTED_SUM: weighted_sum, ADAPTIVE_TOTAL_WEIGHT: total_weight}
        )

    def describe(self) -> dict[str, object]:
        return {"target": self.target, "decay": self.decay}
