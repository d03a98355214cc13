"""The sampler stages: small classes registered by name, with llama.cpp's semantics.

A stage validates its parameters in `__init__` (ValueError naming the parameter), builds itself from
`SamplerParams` in `from_params` (returning None when the parameters make it a no-op, so a disabled
stage costs nothing), and maps candidates to candidates without mutating its input: `apply` returns
the new candidates, `outcome` the same plus what a UI shows about this one run (the cut-off it drew,
run-dependent values such as the temperature actually applied).  A stage overrides one of the two.

Stages never keep state between runs.  What a stage needs from earlier steps comes in the
`StepContext`: the token history, an explicit immutable `state` mapping (mirostat's mu), the 0-based
`step_index` (temperature schedules) and a numpy Generator for stochastic stages (xtc).  A stateful
stage says in `next_state` how its part of the state changes once a token is appended, so the lab
can rewind and branch by keeping old states.  This module holds the framework and llama.cpp's core
stages; `filters.py`, `history.py`, `mirostat.py`, `shaping.py` and `watermark.py` register the rest
of the catalogue.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, NamedTuple, Protocol

import numpy as np

from tokenlab.sampling._validate import check_bias, check_float, check_int, check_token_id
from tokenlab.sampling.candidates import FMAX, Candidates, guard_overflow, locate, softmax

if TYPE_CHECKING:
    from tokenlab.sampling.constraint import TokenConstraint
    from tokenlab.sampling.params import SamplerParams

# Dense top-p first sorts only this many of the best tokens and sorts the rest only when they do not
# reach p (llama.cpp uses the same 256 heuristic).
_TOP_P_PARTIAL = 256


EMPTY_STATE: Mapping[str, object] = types.MappingProxyType({})
"""The initial sampler state: every stateful stage starts from its documented default."""


@dataclass(frozen=True)
class StepContext:
    """What a stage may consult besides its candidates: vocabulary, history, state, step and rng."""

    n_vocab: int
    history: Sequence[int] | np.ndarray
    """Token ids of the context so far (prompt and generated text), oldest first."""
    rng: np.random.Generator | None = None
    """Randomness for stochastic stages (set by the pipeline whenever one is configured)."""
    state: Mapping[str, object] = field(default_factory=lambda: EMPTY_STATE)
    """Sampler state carried between steps (see `PipelineResult.next_state`)."""
    step_index: int = 0
    """0-based index of the token being generated (drives temperature schedules)."""
    negative_logits: np.ndarray | None = None
    """The negative context's raw row at this step, for classifier-free guidance (see guidance.py)."""
    constraint: TokenConstraint | None = None
    """Which tokens a grammar allows at this step (see `constraint.py`); None without a constraint."""


class Cutoff(NamedTuple):
    """Where a filtering stage drew its line this run: a value, its scale, and what it kept."""

    value: float
    """The threshold itself."""
    scale: str
    """What `value` measures: "logit", "probability", "mass", "surprise_bits" or "entropy_nats"."""
    rule: str
    """What the stage kept relative to `value`, for a UI, e.g. "kept logit >= max - 2·σ"."""


class StageOutcome(NamedTuple):
    """One stage's result on one run: the surviving candidates and what a report should show."""

    candidates: Candidates
    cutoff: Cutoff | None = None
    details: Mapping[str, object] | None = None
    """Run-dependent values merged into the report's params (e.g. the temperature applied)."""


class Stage:
    """One sampler stage: validated parameters, and `apply`/`outcome` mapping candidates onward."""

    name: ClassVar[str]
    """Canonical name, as used in `SamplerParams.samplers` and in stage reports."""
    orderable: ClassVar[bool] = True
    """False for stages that always run first (logit_bias, ban) and cannot appear in `samplers`."""
    stochastic: ClassVar[bool] = False
    """True for stages that draw from `StepContext.rng`."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.apply is Stage.apply and cls.outcome is Stage.outcome:
            raise TypeError(f"stage {cls.__name__} must override apply or outcome")

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        """The stage configured by `params`, or None when those parameters make it a no-op."""
        raise NotImplementedError

    def apply(self, candidates: Candidates, context: StepContext) -> Candidates:
        """Candidates after this stage; `candidates` is left untouched."""
        return self.outcome(candidates, context).candidates

    def outcome(self, candidates: Candidates, context: StepContext) -> StageOutcome:
        """`apply` plus the cut-off and run-dependent values a report shows."""
        return StageOutcome(self.apply(candidates, context))

    def describe(self) -> dict[str, object]:
        """The stage's parameters as plain values, for reports and UIs."""
        return {}

    def next_state(self, report: StageReportLike, token_id: int) -> Mapping[str, object]:
        """State entries this stage changes once `token_id` is appended (none by default)."""
        return EMPTY_STATE

    def accept(self, token_id: int) -> None:
        """A no-op hook: stages keep no state between runs (see `next_state`)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.describe().items())
        return f"{type(self).__name__}({args})"


class StageReportLike(Protocol):
    """What `Stage.next_state` reads of the stage's report (pipeline.StageReport provides it)."""

    params: dict[str, object]

    @property
    def input_candidates(self) -> Candidates:
        """The stage's input (the previous stage's output)."""

    def prob_of(self, token_id: int) -> float:
        """Probability of `token_id` after the stage (0.0 when removed)."""

    def input_prob_of(self, token_id: int) -> float:
        """Probability of `token_id` in the stage's input (0.0 when not alive there)."""


STAGES: dict[str, type[Stage]] = {}
"""Every stage class by canonical name, in registration order."""


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator adding a stage to the registry under its `name`."""
    if cls.name in STAGES:
        raise ValueError(f"a sampler stage named {cls.name!r} is already registered")
    STAGES[cls.name] = cls
    return cls


def window_counts(
    history: Sequence[int] | np.ndarray, last_n: int, n_vocab: int
) -> tuple[np.ndarray, np.ndarray]:
    """Ids in the last `last_n` history tokens (-1: all) inside the vocabulary, and their counts."""
    window = history if last_n < 0 else history[-last_n:] if last_n > 0 else ()
    if len(window) == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    tokens = np.asarray(window, dtype=np.int64)
    # Ids outside the vocabulary match no candidate, as in llama.cpp.
    tokens = tokens[(tokens >= 0) & (tokens < n_vocab)]
    ids, counts = np.unique(tokens, return_counts=True)
    return ids, counts


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
        return window_counts(history, self.last_n, n_vocab)

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
        self._rule = f"kept the {max(self.k, self.min_keep)} highest logits"

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        return cls(params.top_k, params.min_keep) if params.top_k > 0 else None

    def outcome(self, candidates: Candidates, context: StepContext) -> StageOutcome:
        keep = max(self.k, self.min_keep)
        if candidates.ids is None and keep >= candidates.n_vocab:
            return StageOutcome(candidates)
        kept = candidates.top(keep)
        if kept.count() == 0:
            return StageOutcome(kept)
        return StageOutcome(kept, Cutoff(float(kept.logits[-1]), "logit", self._rule))

    def describe(self) -> dict[str, object]:
        return {"k": self.k, "min_keep": self.min_keep}


@register_stage
class TypicalP(Stage):
    """Locally typical sampling: keep tokens with surprisal closest to the entropy, up to mass p."""

    name = "typical_p"

    def __init__(self, p: float, min_keep: int = 1) -> None:
        self.p = check_float("typical_p", p, low=0.0, high=1.0)
        self.min_keep = check_int("min_keep", min_keep, low=1)
        self._cutoff = Cutoff(
            self.p, "mass", "kept the most typical tokens until their mass exceeds p"
        )

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        return cls(params.typical_p, params.min_keep) if params.typical_p < 1.0 else None

    def outcome(self, candidates: Candidates, context: StepContext) -> StageOutcome:
        return StageOutcome(self._cut(candidates), self._cutoff)

    def _cut(self, candidates: Candidates) -> Candidates:
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
        self._cutoff = Cutoff(
            self.p, "mass", "kept the most likely tokens until their mass reaches p"
        )

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        return cls(params.top_p, params.min_keep) if params.top_p < 1.0 else None

    def _prefix(self, ranked: Candidates, probs: np.ndarray) -> Candidates | None:
        """The kept prefix of `ranked` (probs aligned), or None when it never reaches p."""
        cumulative = np.cumsum(probs)
        first = int(np.searchsorted(cumulative, self.p, side="left"))  # first cum >= p
        keep = max(first + 1, self.min_keep)
        return ranked.head(keep) if keep <= ranked.count() else None

    def outcome(self, candidates: Candidates, context: StepContext) -> StageOutcome:
        return StageOutcome(self._cut(candidates), self._cutoff)

    def _cut(self, candidates: Candidates) -> Candidates:
        if candidates.ids is not None:
            cut = self._prefix(candidates, softmax(candidates.logits))
            return candidates if cut is None else cut
        dense_probs = softmax(candidates.logits)
        # Rank the best few hundred first: flat distributions alone need a full sort.
        partial = candidates.top(max(_TOP_P_PARTIAL, self.min_keep))
        cut = self._prefix(partial, dense_probs[partial.ids])
        if cut is not None:
            return cut
        if partial.count() >= candidates.count():
            return partial  # every alive token, and still short of p: keep them all
        keep = self._keep_count(dense_probs, partial.count())
        if keep is not None and keep < candidates.count():
            return candidates.top(keep)
        return candidates.sorted_sparse()  # rounding kept the mass short of p: every alive token

    def _keep_count(self, probs: np.ndarray, start: int) -> int | None:
        """How many ranked tokens the nucleus keeps, without ranking the row by id.

        The ranked row's probabilities are the row's largest values in non-increasing order, so their
        running sums are the running sums of the values sorted alone. Those are taken over the
        largest k values only (a partition, then a sort of k values), k growing fourfold from `start`
        until the sums reach p. A full argsort of a flat 262,144-token row cost ~40 ms.
        """
        size = probs.shape[0]
        k = start
        while True:
            k = min(size, 4 * k)
            largest = np.sort(np.partition(probs, size - k)[size - k:] if k < size else probs)[::-1]
            cumulative = np.cumsum(largest)
            first = int(np.searchsorted(cumulative, self.p, side="left"))  # first cum >= p
            if first < k:
                return max(first + 1, self.min_keep)
            if k == size:
                return None

    def describe(self) -> dict[str, object]:
        return {"p": self.p, "min_keep": self.min_keep}


@register_stage
class MinP(Stage):
    """Keep tokens with p >= min_p * p_max, i.e. logit >= max_logit + log(min_p)."""

    name = "min_p"

    def __init__(self, p: float, min_keep: int = 1) -> None:
        self.p = check_float("min_p", p, low=0.0, high=1.0)
        self.min_keep = check_int("min_keep", min_keep, low=1)
        self._rule = f"kept p >= {self.p:g}·p_max (logit >= max + log {self.p:g})"

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        return cls(params.min_p, params.min_keep) if params.min_p > 0.0 else None

    def outcome(self, candidates: Candidates, context: StepContext) -> StageOutcome:
        # A float64 scalar, so a float32 row is compared in float64 as the sparse path is.
        threshold = np.float64(candidates.max_logit() + math.log(self.p))
        cutoff = Cutoff(float(threshold), "logit", self._rule)
        logits = candidates.logits
        if candidates.ids is not None:
            kept_count = max(int(np.count_nonzero(logits >= threshold)), self.min_keep)
            return StageOutcome(candidates.head(kept_count), cutoff)
        ids = np.flatnonzero(logits >= threshold)
        if ids.shape[0] >= self.min_keep:
            return StageOutcome(Candidates.sparse(candidates.n_vocab, ids, logits[ids]), cutoff)
        return StageOutcome(candidates.top(self.min_keep), cutoff)

    def describe(self) -> dict[str, object]:
        return {"p": self.p, "min_keep": self.min_keep}


TEMPERATURE_CURVES: tuple[str, ...] = ("linear", "exponential")
"""How a temperature schedule moves from `temperature` to `temperature_end`."""


def scheduled_temperature(
    start: float, end: float | None, steps: int, curve: str, step_index: int
) -> float:
    """The temperature at 0-based `step_index` of a schedule from `start` to `end` over `steps`.

    Linear: start + (end - start)·i/N; exponential (geometric, as in simulated annealing):
    start·(end/start)^(i/N), which needs both ends > 0.  From step N on it stays at `end`; with
    `end` None there is no schedule.
    """
    if end is None or end == start:
        return start
    if step_index >= steps:
        return end
    fraction = step_index / steps
    if curve == "exponential":  # in log space: end / start may overflow
        return math.exp(math.log(start) + (math.log(end) - math.log(start)) * fraction)
    return start + (end - start) * fraction


def check_schedule(
    temperature: float, end: object, steps: object, curve: object
) -> tuple[float | None, int, str]:
    """Validated (temperature_end, temperature_steps, temperature_curve), or a ValueError."""
    checked_end = (
        None
        if end is None
        else check_float("temperature_end", end, low=0.0, note=" (or None for no schedule)")
    )
    checked_steps = check_int("temperature_steps", steps, low=0)
    if curve not in TEMPERATURE_CURVES:
        raise ValueError(
            f"temperature_curve must be one of {', '.join(TEMPERATURE_CURVES)}, got {curve!r}"
        )
    if curve == "exponential" and checked_end is not None and min(temperature, checked_end) <= 0:
        raise ValueError(
            "temperature_curve 'exponential' needs temperature > 0 and temperature_end > 0, "
            f"got temperature={temperature!r}, temperature_end={checked_end!r}; "
            "use 'linear' to reach 0"
        )
    return checked_end, checked_steps, str(curve)


@register_stage
class Temperature(Stage):
    """Divide the logits by T; T = 0 is greedy: only the largest logit survives (lowest id).

    Like llama.cpp's temp_ext it also does dynamic temperature: with `dynatemp_range` > 0 the
    temperature is min_t + (max_t - min_t)·(H/H_max)^exponent, where min_t = max(0, T - range),
    max_t = T + range, H is the entropy of the candidates and H_max = log(number of candidates);
    a single candidate is left alone.  H_max counts the alive candidates: llama.cpp counts its
    array, which still holds tokens an earlier top_n_sigma or logit_bias set to -inf when no
    truncating stage ran in between.  T itself may follow a schedule over the generated tokens
    (see `scheduled_temperature`).  Reports show the temperature actually applied as
    `effective_temperature`.
    """

    name = "temperature"

    def __init__(
        self,
        temperature: float,
        dynatemp_range: float = 0.0,
        dynatemp_exponent: float = 1.0,
        *,
        temperature_end: float | None = None,
        temperature_steps: int = 100,
        temperature_curve: str = "linear",
    ) -> None:
        self.temperature = check_float("temperature", temperature, low=0.0, note=" (0 = greedy)")
        self.dynatemp_range = check_float(
            "dynatemp_range", dynatemp_range, low=0.0, note=" (0 = off)"
        )
        self.dynatemp_exponent = check_float("dynatemp_exponent", dynatemp_exponent, low=0.0)
        self.temperature_end, self.temperature_steps, self.temperature_curve = check_schedule(
            self.temperature, temperature_end, temperature_steps, temperature_curve
        )

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        scheduled = (
            params.temperature_end is not None and params.temperature_end != params.temperature
        )
        if params.temperature == 1.0 and params.dynatemp_range == 0.0 and not scheduled:
            return None
        return cls(
            params.temperature,
            params.dynatemp_range,
            params.dynatemp_exponent,
            temperature_end=params.temperature_end,
            temperature_steps=params.temperature_steps,
            temperature_curve=params.temperature_curve,
        )

    @property
    def scheduled(self) -> bool:
        """Whether the temperature changes with the step index."""
        return self.temperature_end is not None and self.temperature_end != self.temperature

    def temperature_at(self, step_index: int) -> float:
        """The scheduled temperature at 0-based `step_index` (before dynamic temperature)."""
        return scheduled_temperature(
            self.temperature,
            self.temperature_end,
            self.temperature_steps,
            self.temperature_curve,
            step_index,
        )

    def outcome(self, candidates: Candidates, context: StepContext) -> StageOutcome:
        base = self.temperature_at(context.step_index) if self.scheduled else self.temperature
        details: dict[str, object] = {"effective_temperature": base}
        if self.scheduled:
            details["scheduled_temperature"] = base
        applied = base
        if self.dynatemp_range > 0:
            count = candidates.count()
            if count <= 1:
                return StageOutcome(candidates, None, details)  # as llama.cpp: nothing to do
            applied, normalized_entropy = self._dynamic(candidates, base, count)
            details["effective_temperature"] = applied
            details["normalized_entropy"] = normalized_entropy
        after = scale_by_temperature(candidates, applied)
        if applied == 0.0:
            best = float(after.logits[0])
            return StageOutcome(
                after, Cutoff(best, "logit", "greedy: kept the most likely token"), details
            )
        return StageOutcome(after, None, details)

    def _dynamic(self, candidates: Candidates, base: float, count: int) -> tuple[float, float]:
        """The entropy-based temperature (llama.cpp's temp_ext) and the normalised entropy."""
        probs = softmax(candidates.logits)
        positive = probs[probs > 0]
        entropy = float(-(positive * np.log(positive)).sum())
        # rounding can put the ratio a hair outside [0, 1]; above 1, a huge exponent would overflow
        normalized = min(1.0, max(0.0, entropy / math.log(count)))
        low = max(0.0, base - self.dynatemp_range)
        high = base + self.dynatemp_range
        return low + (high - low) * normalized**self.dynatemp_exponent, normalized

    def describe(self) -> dict[str, object]:
        described: dict[str, object] = {"temperature": self.temperature}
        if self.dynatemp_range > 0:
            described["dynatemp_range"] = self.dynatemp_range
            described["dynatemp_exponent"] = self.dynatemp_exponent
        if self.scheduled:
            described["temperature_end"] = self.temperature_end
            described["temperature_steps"] = self.temperature_steps
            described["temperature_curve"] = self.temperature_curve
        return described


def scale_by_temperature(candidates: Candidates, temperature: float) -> Candidates:
    """Candidates with logits divided by `temperature`; 0 keeps only the largest (lowest id)."""
    logits = candidates.logits
    if temperature == 0.0:
        if candidates.ids is not None:
            return candidates.head(1)
        best = int(np.argmax(logits))  # the first maximum: the lowest id among ties
        return Candidates(
            candidates.n_vocab,
            np.array([best], dtype=np.int64),
            logits[[best]].astype(np.float64),
        )
    if temperature == 1.0:
        return candidates
    with np.errstate(over="ignore"):
        scaled = np.divide(logits, temperature, dtype=np.float64)
    overflowed = temperature < 1.0 and (
        np.count_nonzero(np.isinf(scaled)) != np.count_nonzero(np.isinf(logits))
    )
    if overflowed:
        return candidates.with_logits(
            _scaled_without_overflow(logits, temperature), order_kept=False
        )
    return candidates.with_logits(scaled)


def _scaled_without_overflow(logits: np.ndarray, temperature: float) -> np.ndarray:
    """(logits - max finite logit) / T clipped to FMAX (softmax is shift-invariant)."""
    logits = logits.astype(np.float64)  # float32 arithmetic would underflow T to 0
    finite = np.isfinite(logits)
    shift = float(logits[finite].max())
    with np.errstate(over="ignore"):
        shifted = np.clip((logits - shift) / temperature, -FMAX, FMAX)
    return np.where(finite, shifted, logits)
