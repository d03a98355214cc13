"""The sampler stages: small classes registered by name, with llama.cpp's semantics.

A stage validates its parameters in `__init__` (ValueError naming the parameter), builds itself from
`SamplerParams` in `from_params` (returning None when the parameters make it a no-op, so a disabled
stage costs nothing), and maps candidates to candidates in `apply` without mutating its input.
Stateful stages (mirostat and the like) keep their state on the instance and update it in `accept`,
which the pipeline calls with each token that is actually appended to the text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from tokenlab.sampling._validate import check_bias, check_float, check_int, check_token_id
from tokenlab.sampling.candidates import FMAX, Candidates, guard_overflow, locate, softmax

if TYPE_CHECKING:
    from tokenlab.sampling.params import SamplerParams

# Dense top-p first sorts only this many of the best tokens and sorts the rest only when they do not
# reach p (llama.cpp uses the same 256 heuristic).
_TOP_P_PARTIAL = 256


@dataclass(frozen=True)
class StepContext:
    """What a stage may consult besides its candidates: vocabulary size and token history."""

    n_vocab: int
    history: Sequence[int] | np.ndarray
    """Token ids of the context so far (prompt and generated text), oldest first."""


class Stage:
    """One sampler stage: validated parameters, and one `apply` mapping candidates to candidates."""

    name: ClassVar[str]
    """Canonical name, as used in `SamplerParams.samplers` and in stage reports."""
    orderable: ClassVar[bool] = True
    """False for stages that always run first (logit_bias, ban) and cannot appear in `samplers`."""

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        """The stage configured by `params`, or None when those parameters make it a no-op."""
        raise NotImplementedError

    def apply(self, candidates: Candidates, context: StepContext) -> Candidates:
        """Candidates after this stage; `candidates` is left untouched."""
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        """The stage's parameters as plain values, for reports and UIs."""
        return {}

    def accept(self, token_id: int) -> None:
        """Note that `token_id` was appended to the text (a hook for stateful stages)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.describe().items())
        return f"{type(self).__name__}({args})"


STAGES: dict[str, type[Stage]] = {}
"""Every stage class by canonical name, in registration order."""


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator adding a stage to the registry under its `name`."""
    if cls.name in STAGES:
        raise ValueError(f"a sampler stage named {cls.name!r} is already registered")
    STAGES[cls.name] = cls
    return cls


def _check_ids_in_vocab(stage: str, ids: np.ndarray, n_vocab: int) -> None:
    if ids.shape[0] and int(ids[-1]) >= n_vocab:  # ids are sorted
        raise ValueError(
            f"{stage}: token id {int(ids[-1])} is outside the vocabulary "
            f"(n_vocab={n_vocab}, ids 0..{n_vocab - 1})"
        )


# -- always first, not orderable -------------------------------------------------------------------


@register_stage
class LogitBias(Stage):
    """Add a per-token bias to the logits; a bias of -inf bans the token."""

    name = "logit_bias"
    orderable = False

    def __init__(self, bias: Mapping[int, float]) -> None:
        items = sorted(
            (check_token_id("logit_bias", key), check_bias(key, value))
            for key, value in bias.items()
        )
        self.ids = np.array([key for key, _ in items], dtype=np.int64)
        self.biases = np.array([value for _, value in items], dtype=np.float64)

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        return cls(params.logit_bias) if params.logit_bias else None

    def apply(self, candidates: Candidates, context: StepContext) -> Candidates:
        _check_ids_in_vocab(self.name, self.ids, context.n_vocab)
        before = candidates.values_at(self.ids)
        banned = self.biases == -np.inf
        finite_bias = np.where(banned, 0.0, self.biases)
        with np.errstate(over="ignore"):
            after = guard_overflow(before, before + finite_bias)
        after[banned] = -np.inf
        return candidates.with_edits(self.ids, after)

    def describe(self) -> dict[str, object]:
        return {"bias": {int(i): float(b) for i, b in zip(self.ids, self.biases, strict=True)}}


@register_stage
class Ban(Stage):
    """Remove the listed tokens (their logits become -inf)."""

    name = "ban"
    orderable = False

    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = np.unique(np.array([check_token_id("ban", i) for i in ids], dtype=np.int64))

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        return cls(params.ban) if params.ban else None

    def apply(self, candidates: Candidates, context: StepContext) -> Candidates:
        _check_ids_in_vocab(self.name, self.ids, context.n_vocab)
        return candidates.with_edits(self.ids, np.full(self.ids.shape[0], -np.inf))

    def describe(self) -> dict[str, object]:
        return {"ids": [int(i) for i in self.ids]}


# -- orderable, in llama.cpp's default order -------------------------------------------------------


@register_stage
class Penalties(Stage):
    """Repetition, frequency and presence penalties over the last `last_n` history tokens."""

    name = "penalties"

    def __init__(self, last_n: int, repeat: float, frequency: float, presence: float) -> None:
        self.last_n = check_int(
            "penalty_last_n", last_n, low=-1, note=" (-1 = whole history, 0 = off)"
        )
        self.repeat = check_float("repeat_penalty", repeat, low=0.0, low_open=True)
        self.frequency = check_float("frequency_penalty", frequency)
        self.presence = check_float("presence_penalty", presence)

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        neutral = (
            params.repeat_penalty == 1.0
            and params.frequency_penalty == 0.0
            and params.presence_penalty == 0.0
        )
        if params.penalty_last_n == 0 or neutral:
            return None
        return cls(
            params.penalty_last_n,
            params.repeat_penalty,
            params.frequency_penalty,
            params.presence_penalty,
        )

    def counts(
        self, history: Sequence[int] | np.ndarray, n_vocab: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Ids seen in the penalty window (inside the vocabulary) and how often each was seen."""
        window = history if self.last_n < 0 else history[-self.last_n :]
        if len(window) == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        tokens = np.asarray(window, dtype=np.int64)
        # Ids outside the vocabulary match no candidate, as in llama.cpp.
        tokens = tokens[(tokens >= 0) & (tokens < n_vocab)]
        ids, counts = np.unique(tokens, return_counts=True)
        return ids, counts

    def apply(self, candidates: Candidates, context: StepContext) -> Candidates:
        ids, counts = self.counts(context.history, context.n_vocab)
        if candidates.ids is not None:
            found, _ = locate(candidates.ids, ids)
            ids, counts = ids[found], counts[found]
        if ids.shape[0] == 0:
            return candidates
        before = candidates.values_at(ids)
        # Multiply non-positive logits rather than divide, or the penalty would raise them.
        with np.errstate(over="ignore"):
            scaled = np.where(before <= 0, before * self.repeat, before / self.repeat)
            after = scaled - (counts * self.frequency + self.presence)
        return candidates.with_edits(ids, guard_overflow(before, after))

    def describe(self) -> dict[str, object]:
        return {
            "last_n": self.last_n,
            "repeat": self.repeat,
            "frequency": self.frequency,
            "presence": self.presence,
        }


@register_stage
class TopK(Stage):
    """Keep the k largest logits (at least `min_keep`); ties at the cut go to the lowest ids."""

    name = "top_k"

    def __init__(self, k: int, min_keep: int = 1) -> None:
        self.k = check_int("top_k", k, low=1)
        self.min_keep = check_int("min_keep", min_keep, low=1)

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        return cls(params.top_k, params.min_keep) if params.top_k > 0 else None

    def apply(self, candidates: Candidates, context: StepContext) -> Candidates:
        keep = max(self.k, self.min_keep)
        if candidates.ids is None and keep >= candidates.n_vocab:
            return candidates
        return candidates.top(keep)

    def describe(self) -> dict[str, object]:
        return {"k": self.k, "min_keep": self.min_keep}


@register_stage
class TypicalP(Stage):
    """Locally typical sampling: keep tokens with surprisal closest to the entropy, up to mass p."""

    name = "typical_p"

    def __init__(self, p: float, min_keep: int = 1) -> None:
        self.p = check_float("typical_p", p, low=0.0, high=1.0)
        self.min_keep = check_int("min_keep", min_keep, low=1)

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        return cls(params.typical_p, params.min_keep) if params.typical_p < 1.0 else None

    def apply(self, candidates: Candidates, context: StepContext) -> Candidates:
        ranked = candidates.sorted_sparse()
        size = ranked.count()
        probs = softmax(ranked.logits)
        with np.errstate(divide="ignore"):
            surprisal = -np.log(probs)  # inf where p underflowed to 0
        positive = probs > 0
        entropy = float((probs[positive] * surprisal[positive]).sum())  # no BLAS threads
        # Stable: equal scores keep the logit order (then ascending ids), so ties are fixed.
        order = np.argsort(np.abs(surprisal - entropy), kind="stable")
        cumulative = np.cumsum(probs[order])
        first = int(np.searchsorted(cumulative, self.p, side="right"))  # first cum > p (strict)
        if first >= size:
            return ranked
        keep = max(first, self.min_keep - 1) + 1
        if keep >= size:
            return ranked
        return ranked.take(np.sort(order[:keep]))

    def describe(self) -> dict[str, object]:
        return {"p": self.p, "min_keep": self.min_keep}


@register_stage
class TopP(Stage):
    """Nucleus sampling: keep the most likely tokens until their mass reaches p."""

    name = "top_p"

    def __init__(self, p: float, min_keep: int = 1) -> None:
        self.p = check_float("top_p", p, low=0.0, high=1.0)
        self.min_keep = check_int("min_keep", min_keep, low=1)

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        return cls(params.top_p, params.min_keep) if params.top_p < 1.0 else None

    def _cut(self, ranked: Candidates, probs: np.ndarray) -> Candidates | None:
        """The kept prefix of `ranked` (probs aligned), or None when it never reaches p."""
        cumulative = np.cumsum(probs)
        first = int(np.searchsorted(cumulative, self.p, side="left"))  # first cum >= p
        keep = max(first + 1, self.min_keep)
        return ranked.head(keep) if keep <= ranked.count() else None

    def apply(self, candidates: Candidates, context: StepContext) -> Candidates:
        if candidates.ids is not None:
            cut = self._cut(candidates, softmax(candidates.logits))
            return candidates if cut is None else cut
        dense_probs = softmax(candidates.logits)
        # Rank the best few hundred first: flat distributions alone need a full sort.
        partial = candidates.top(max(_TOP_P_PARTIAL, self.min_keep))
        cut = self._cut(partial, dense_probs[partial.ids])
        if cut is not None:
            return cut
        if partial.count() >= candidates.count():
            return partial  # every alive token, and still short of p: keep them all
        ranked = candidates.sorted_sparse()
        cut = self._cut(ranked, dense_probs[ranked.ids])
        return ranked if cut is None else cut

    def describe(self) -> dict[str, object]:
        return {"p": self.p, "min_keep": self.min_keep}


@register_stage
class MinP(Stage):
    """Keep tokens with p >= min_p * p_max, i.e. logit >= max_logit + log(min_p)."""

    name = "min_p"

    def __init__(self, p: float, min_keep: int = 1) -> None:
        self.p = check_float("min_p", p, low=0.0, high=1.0)
        self.min_keep = check_int("min_keep", min_keep, low=1)

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        return cls(params.min_p, params.min_keep) if params.min_p > 0.0 else None

    def apply(self, candidates: Candidates, context: StepContext) -> Candidates:
        # A float64 scalar, so a float32 row is compared in float64 as the sparse path is.
        threshold = np.float64(candidates.max_logit() + math.log(self.p))
        logits = candidates.logits
        if candidates.ids is not None:
            return candidates.head(max(int(np.count_nonzero(logits >= threshold)), self.min_keep))
        ids = np.flatnonzero(logits >= threshold)
        if ids.shape[0] >= self.min_keep:
            return Candidates.sparse(candidates.n_vocab, ids, logits[ids])
        return candidates.top(self.min_keep)

    def describe(self) -> dict[str, object]:
        return {"p": self.p, "min_keep": self.min_keep}


@register_stage
class Temperature(Stage):
    """Divide the logits by T; T = 0 is greedy: only the largest logit survives (lowest id)."""

    name = "temperature"

    def __init__(self, temperature: float) -> None:
        self.temperature = check_float("temperature", temperature, low=0.0, note=" (0 = greedy)")

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        return cls(params.temperature) if params.temperature != 1.0 else None

    def apply(self, candidates: Candidates, context: StepContext) -> Candidates:
        logits = candidates.logits
        if self.temperature == 0.0:
            if candidates.ids is not None:
                return candidates.head(1)
            best = int(np.argmax(logits))  # the first maximum: the lowest id among ties
            return Candidates(
                candidates.n_vocab,
                np.array([best], dtype=np.int64),
                logits[[best]].astype(np.float64),
            )
        with np.errstate(over="ignore"):
            scaled = np.divide(logits, self.temperature, dtype=np.float64)
        overflowed = self.temperature < 1.0 and (
            np.count_nonzero(np.isinf(scaled)) != np.count_nonzero(np.isinf(logits))
        )
        if overflowed:
            return candidates.with_logits(self._scaled_without_overflow(logits), order_kept=False)
        return candidates.with_logits(scaled)

    def _scaled_without_overflow(self, logits: np.ndarray) -> np.ndarray:
        """(logits - max finite logit) / T clipped to FMAX (softmax is shift-invariant)."""
        logits = logits.astype(np.float64)  # float32 arithmetic would underflow T to 0
        finite = np.isfinite(logits)
        shift = float(logits[finite].max())
        with np.errstate(over="ignore"):
            shifted = np.clip((logits - shift) / self.temperature, -FMAX, FMAX)
        return np.where(finite, shifted, logits)

    def describe(self) -> dict[str, object]:
        return {"temperature": self.temperature}
