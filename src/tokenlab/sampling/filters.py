"""Truncation filters beyond llama.cpp's core chain: top-n-sigma, XTC, epsilon, eta, top-a, tail-free,
top-H and p-less.

top_n_sigma and xtc follow llama.cpp (src/llama-sampler.cpp); epsilon, eta and top_h follow Hugging
Face transformers' EpsilonLogitsWarper, EtaLogitsWarper and TopHLogitsWarper; top_a follows
text-generation-webui's TopALogitsWarper; tail_free follows KoboldCpp's sample_tail_free; p_less
follows the p-less paper (llama.cpp PR #26035).  Every filter here keeps at least `min_keep` tokens
when it received that many (XTC by skipping a removal that would leave fewer, as llama.cpp does).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from tokenlab.sampling._validate import check_float, check_int
from tokenlab.sampling.candidates import Candidates, softmax, top_k_dense
from tokenlab.sampling.stages import (
    Cutoff,
    Stage,
    StageOutcome,
    StepContext,
    register_stage,
)

if TYPE_CHECKING:
    from tokenlab.sampling.params import SamplerParams

# Finite logits beyond this magnitude are scaled down before a standard deviation is taken, so
# that squaring them cannot overflow float64.
_STD_SAFE = 1e150


def finite_std(values: np.ndarray) -> float:
    """Population standard deviation (in float64) of the finite entries (0.0 when none are)."""
    low, high = float(values.min()), float(values.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        values = values[np.isfinite(values)]
        if values.shape[0] == 0:
            return 0.0
        low, high = float(values.min()), float(values.max())
    scale = max(abs(low), abs(high))
    if scale > _STD_SAFE:
        return scale * float((values / scale).std(dtype=np.float64))
    return float(values.std(dtype=np.float64))


def kth_largest(candidates: Candidates, k: int) -> float:
    """The k-th largest alive logit (k <= number alive)."""
    if candidates.ids is not None:
        return float(candidates.logits[k - 1])
    _, values = top_k_dense(candidates.logits, k)
    return float(values[-1])


def keep_with_min_keep(candidates: Candidates, keep: np.ndarray, min_keep: int) -> Candidates:
    """`candidates` where `keep`, plus every token with a logit >= the `min_keep`-th largest.

    This is transformers' rule (`scores < topk(scores, min_tokens_to_keep)[-1]` may be removed), so
    tokens tied with the min_keep-th largest logit stay as well.
    """
    alive = candidates.count()
    if min_keep >= alive:
        return candidates
    logits = candidates.logits
    keep = keep | (logits >= kth_largest(candidates, min_keep))
    return candidates.keep_where(keep)


@register_stage
class TopNSigma(Stage):
    """Keep logits >= max - n·σ, σ the standard deviation of the finite logits (llama.cpp).

    llama.cpp averages every logit above -inf, so one +inf logit makes its σ NaN and the stage a
    no-op; here σ comes from the finite logits and +inf tokens alone survive (they hold all the
    mass either way).  llama.cpp ignores min_keep here; tokenlab keeps at least min_keep tokens
    (the same whenever min_keep is 1, since the maximum always survives).
    """

    name = "top_n_sigma"

    def __init__(self, n: float, min_keep: int = 1) -> None:
        self.n = check_float("top_n_sigma", n, low=0.0, low_open=True, note=" (<= 0 is off)")
        self.min_keep = check_int("min_keep", min_keep, low=1)
        self._rule = f"kept logit >= max - {self.n:g}·σ"

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        return cls(params.top_n_sigma, params.min_keep) if params.top_n_sigma > 0 else None

    def outcome(self, candidates: Candidates, context: StepContext) -> StageOutcome:
        alive = candidates.count()
        if alive <= 1:
            return StageOutcome(candidates)
        logits = candidates.logits
        sigma = finite_std(logits)
        top = candidates.max_logit()
        spread = self.n * sigma
        if top == math.inf:
            threshold = math.inf  # only the +inf tokens survive (they hold all the mass anyway)
        elif not math.isfinite(spread):
            threshold = -math.inf  # a spread past float range keeps everything
        else:
            threshold = top - spread
        after = candidates.keep_where(logits >= np.float64(threshold))
        if after.count() < min(self.min_keep, alive):
            after = candidates.top(self.min_keep)
        return StageOutcome(after, Cutoff(threshold, "logit", self._rule), {"sigma": sigma})

    def describe(self) -> dict[str, object]:
        return {"n": self.n, "min_keep": self.min_keep}


@register_stage
class XTC(Stage):
    """Exclude Top Choices (llama.cpp): with probability `probability`, remove every token with
    p >= `threshold` except the least likely of them.

    One `rng.random()` is drawn per run when at least two tokens are alive; the stage fires when
    the draw is <= probability.  Nothing is removed when fewer than two tokens reach the threshold
    or when the removal would leave fewer than `min_keep`.  A threshold above 0.5 turns the stage
    off (at most one token can reach it), as in llama.cpp.
    """

    name = "xtc"
    stochastic = True

    def __init__(self, probability: float, threshold: float, min_keep: int = 1) -> None:
        self.probability = check_float("xtc_probability", probability, low=0.0, high=1.0)
        self.threshold = check_float(
            "xtc_threshold", threshold, low=0.0, high=1.0, note=" (> 0.5 is off)"
        )
        self.min_keep = check_int("min_keep", min_keep, low=1)

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        if params.xtc_probability <= 0.0 or params.xtc_threshold > 0.5:
            return None
        return cls(params.xtc_probability, params.xtc_threshold, params.min_keep)

    def outcome(self, candidates: Candidates, context: StepContext) -> StageOutcome:
        alive = candidates.count()
        if alive < 2:
            return StageOutcome(candidates, None, {"fired": False, "removed": 0})
        rng = context.rng if context.rng is not None else np.random.default_rng(context.step_index)
        chance = float(rng.random())
        if chance > self.probability:
            return StageOutcome(candidates, None, {"fired": False, "chance": chance, "removed": 0})
        logits = candidates.logits
        probs = softmax(logits)
        above = (probs >= self.threshold) & (logits > -np.inf)
        n_above = int(np.count_nonzero(above))
        removed = n_above - 1
        cutoff = Cutoff(
            self.threshold, "probability", "removed tokens with p >= threshold but the least likely"
        )
        details: dict[str, object] = {"fired": True, "chance": chance, "removed": 0}
        if n_above < 2 or alive - removed < self.min_keep:
            return StageOutcome(candidates, cutoff, details)
        details["removed"] = removed
        if candidates.ids is not None:  # sorted: the tokens above the threshold are a prefix
            return StageOutcome(candidates.take(np.arange(removed, alive)), cutoff, details)
        above_ids = np.flatnonzero(above)
        # Rank them like sparse candidates (by logit, ties by id) and spare the last one.
        ranked = above_ids[np.lexsort((above_ids, -logits[above_ids].astype(np.float64)))]
        removed_ids = np.sort(ranked[:-1])
        after = candidates.with_edits(removed_ids, np.full(removed_ids.shape[0], -np.inf))
        return StageOutcome(after, cutoff, details)

    def describe(self) -> dict[str, object]:
        return {
            "probability": self.probability,
            "threshold": self.threshold,
            "min_keep": self.min_keep,
        }


@register_stage
class Epsilon(Stage):
    """Epsilon sampling (transformers' EpsilonLogitsWarper): keep tokens with p >= epsilon.

    The `min_keep` most likely tokens (and any tied with the last of them) always stay.
    The paper suggests epsilon between 3e-4 and 9e-4.
    """

    name = "epsilon"

    def __init__(self, epsilon: float, min_keep: int = 1) -> None:
        self.epsilon = check_float(
            "epsilon_cutoff", epsilon, low=0.0, high=1.0, low_open=True, high_open=True
        )
        self.min_keep = check_int("min_keep", min_keep, low=1)

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        return cls(params.epsilon_cutoff, params.min_keep) if params.epsilon_cutoff > 0 else None

    def outcome(self, candidates: Candidates, context: StepContext) -> StageOutcome:
        probs = softmax(candidates.logits)
        after = keep_with_min_keep(candidates, probs >= self.epsilon, self.min_keep)
        return StageOutcome(after, Cutoff(self.epsilon, "probability", "kept p >= epsilon"))

    def describe(self) -> dict[str, object]:
        return {"epsilon": self.epsilon, "min_keep": self.min_keep}


@register_stage
class Eta(Stage):
    """Eta sampling (transformers' EtaLogitsWarper): keep p >= min(ε, √ε·e^-H), H in nats.

    ε is `eta_cutoff` (the paper suggests 3e-4 to 4e-3); H is the entropy of the candidates.
    The `min_keep` most likely tokens (and any tied with the last of them) always stay.
    """

    name = "eta"

    def __init__(self, epsilon: float, min_keep: int = 1) -> None:
        self.epsilon = check_float(
            "eta_cutoff", epsilon, low=0.0, high=1.0, low_open=True, high_open=True
        )
        self.min_keep = check_int("min_keep", min_keep, low=1)

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        return cls(params.eta_cutoff, params.min_keep) if params.eta_cutoff > 0 else None

    def outcome(self, candidates: Candidates, context: StepContext) -> StageOutcome:
        probs = softmax(candidates.logits)
        positive = probs[probs > 0]
        entropy = float(-(positive * np.log(positive)).sum())
        eta = min(self.epsilon, math.sqrt(self.epsilon) * math.exp(-entropy))
        after = keep_with_min_keep(candidates, probs >= eta, self.min_keep)
        cutoff = Cutoff(eta, "probability", "kept p >= min(ε, √ε·e^-H)")
        return StageOutcome(after, cutoff, {"eta": eta, "entropy": entropy})

    def describe(self) -> dict[str, object]:
        return {"epsilon": self.epsilon, "min_keep": self.min_keep}


@register_stage
class TopA(Stage):
    """Top-a (text-generation-webui's TopALogitsWarper): remove tokens with p < a·p_max².

    The `min_keep` most likely tokens always stay (ties: lowest ids first).
    """

    name = "top_a"

    def __init__(self, a: float, min_keep: int = 1) -> None:
        self.a = check_float("top_a", a, low=0.0, high=1.0, note=" (0 = off)")
        self.min_keep = check_int("min_keep", min_keep, low=1)

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        return cls(params.top_a, params.min_keep) if params.top_a > 0 else None

    def outcome(self, candidates: Candidates, context: StepContext) -> StageOutcome:
        probs = softmax(candidates.logits)
        p_max = float(probs.max())
        limit = self.a * p_max * p_max
        keep = probs >= limit
        cutoff = Cutoff(limit, "probability", f"kept p >= {self.a:g}·p_max²")
        if self.min_keep > 1:
            if candidates.ids is not None:
                keep[: self.min_keep] = True
            else:
                keep[candidates.top(self.min_keep).ids] = True
        return StageOutcome(candidates.keep_where(keep), cutoff)

    def describe(self) -> dict[str, object]:
        return {"a": self.a, "min_keep": self.min_keep}


@register_stage
class TailFree(Stage):
    """Tail-free sampling (KoboldCpp's sample_tail_free, llama.cpp's former tail_free): cut the tail
    where the curvature of the sorted probabilities is spent.

    With p sorted in descending order, d_i = |p_i - 2·p_{i+1} + p_{i+2}| (i = 0 .. n-3) is normalised
    to sum 1 (uniform 1/(n-2) when the sum is below 1e-6); the stage keeps the first i tokens, i the
    first index >= min_keep where the running sum of d exceeds z.  Two or fewer tokens are left alone.
    text-generation-webui's TailFreeLogitsWarper reads the same sums but keeps one token more
    (position i as well) and always drops the last token; tokenlab follows KoboldCpp.
    """

    name = "tail_free"

    def __init__(self, z: float, min_keep: int = 1) -> None:
        self.z = check_float("tfs_z", z, low=0.0, high=1.0, note=" (1 = off)")
        self.min_keep = check_int("min_keep", min_keep, low=1)
        self._cutoff = Cutoff(
            self.z, "mass", "kept tokens until the normalised curvature of the sorted p passes z"
        )

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        return cls(params.tfs_z, params.min_keep) if params.tfs_z < 1.0 else None

    def outcome(self, candidates: Candidates, context: StepContext) -> StageOutcome:
        if candidates.count() <= 2:
            return StageOutcome(candidates, self._cutoff)
        ranked = candidates.sorted_sparse()
        probs = softmax(ranked.logits)
        curvature = np.abs(np.diff(probs, 2))
        total = float(curvature.sum())
        if total > 1e-6:
            curvature /= total
        else:  # a (nearly) straight line: every step counts the same
            curvature[:] = 1.0 / curvature.shape[0]
        cumulative = np.cumsum(curvature)
        past = np.flatnonzero(cumulative > self.z)
        past = past[past >= self.min_keep]
        if past.shape[0] == 0:
            return StageOutcome(ranked, self._cutoff)
        return StageOutcome(ranked.head(int(past[0])), self._cutoff)

    def describe(self) -> dict[str, object]:
        return {"z": self.z, "min_keep": self.min_keep}


TOP_H_CANDIDATES = 100
"""Top-H looks at this many of the most likely tokens and removes the rest (transformers' top_n)."""


@register_stage
class TopH(Stage):
    """Top-H (transformers' TopHLogitsWarper): keep the most likely tokens while their entropy terms
    add up to at most top_h·H.

    Only the 100 most likely tokens take part (the rest are removed): p is renormalised over them,
    H = -Σ p·ln p, and tokens are added in order while the running sum of -p·ln p stays <= top_h·H.
    The most likely token (and the `min_keep` most likely) always stay.  H is the running sum's last
    value, so top_h = 1 keeps all 100 exactly.
    """

    name = "top_h"

    def __init__(self, top_h: float, min_keep: int = 1) -> None:
        self.top_h = check_float("top_h", top_h, low=0.0, high=1.0, low_open=True, note=" (0 = off)")
        self.min_keep = check_int("min_keep", min_keep, low=1)
        self._rule = f"kept the top tokens while their entropy stays <= {self.top_h:g}·H"

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        return cls(params.top_h, params.min_keep) if params.top_h > 0 else None

    def outcome(self, candidates: Candidates, context: StepContext) -> StageOutcome:
        alive = candidates.count()
        considered = candidates.top(min(TOP_H_CANDIDATES, alive))
        probs = softmax(considered.logits)
        positive = probs > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(positive, -probs * np.log(np.where(positive, probs, 1.0)), 0.0)
        cumulative = np.cumsum(terms)
        entropy = float(cumulative[-1])
        tau = self.top_h * entropy
        # transformers' -0·log 0 is NaN, which removes an underflowed token and every one after it
        keep = (cumulative <= tau) & positive
        keep[0] = True
        kept = int(np.argmin(keep)) if not keep.all() else keep.shape[0]  # keep is a prefix
        kept = max(kept, min(self.min_keep, alive))
        after = considered.head(kept) if kept <= considered.count() else candidates.top(kept)
        cutoff = Cutoff(tau, "entropy_nats", self._rule)
        return StageOutcome(after, cutoff, {"entropy": entropy, "tau": tau})

    def describe(self) -> dict[str, object]:
        return {"top_h": self.top_h, "min_keep": self.min_keep}


@register_stage
class PLess(Stage):
    """p-less sampling (llama.cpp PR #26035, Tan et al. 2025): keep tokens with p >= strength·Σp².

    Σp² is the chance that two draws from the distribution agree, so the cut follows the whole
    distribution and needs no parameter: strength 1 is the paper's rule, lower values cut less,
    0 turns the stage off.  The most likely token always passes (Σp² <= p_max), and so do the
    `min_keep` most likely (and any tied with the last of them).
    """

    name = "p_less"

    def __init__(self, strength: float = 1.0, min_keep: int = 1) -> None:
        self.strength = check_float(
            "p_less", strength, low=0.0, high=1.0, low_open=True, note=" (0 = off, 1 = the paper)"
        )
        self.min_keep = check_int("min_keep", min_keep, low=1)
        self._rule = "kept p >= Σp²" if self.strength == 1.0 else f"kept p >= {self.strength:g}·Σp²"

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        return cls(params.p_less, params.min_keep) if params.p_less > 0 else None

    def outcome(self, candidates: Candidates, context: StepContext) -> StageOutcome:
        probs = softmax(candidates.logits)
        collision = float((probs * probs).sum())  # no BLAS threads
        threshold = self.strength * collision
        after = keep_with_min_keep(candidates, probs >= threshold, self.min_keep)
        cutoff = Cutoff(threshold, "probability", self._rule)
        return StageOutcome(after, cutoff, {"sum_p_squared": collision})

    def describe(self) -> dict[str, object]:
        return {"strength": self.strength, "min_keep": self.min_keep}
