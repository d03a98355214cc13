"""The pipeline: raw logits and history in; a report per stage and a final distribution out.

Degenerate rows never raise and never produce NaN:

- NaN logits count as -inf (the token is removed; `removed_by` says "input").
- +inf logits share the probability mass equally among themselves.
- When no token is left with a logit above -inf after logit_bias and ban (an all -inf or all-NaN
  row, or a row whose only finite tokens were banned), the row says nothing about the allowed
  tokens, so the ordered stages are skipped and the distribution is uniform over the allowed tokens
  (those not banned and without a -inf bias), or over the whole vocabulary when nothing is allowed.
  `PipelineResult.uniform_fallback` is then True.

Filters (every stage that removes tokens) never leave fewer than `min_keep` tokens when they
received at least that many.  The exceptions choose by design: greedy decoding (an effective
temperature of 0) keeps exactly the most likely token, and mirostat_v2 may keep a single one, as in
llama.cpp.

A grammar (`constraint.py`) runs right after logit_bias and ban: it keeps the tokens the run's
`constraint` allows; the uniform fallback is then over the allowed tokens the constraint allows too.

A run is a pure function of (logits, history, rng, state, step_index, constraint): stochastic stages (xtc) draw
from `rng` (a fixed-seed generator when None, so `distribution()` is deterministic), stateful ones
(mirostat_v2) read `state`, and `PipelineResult.next_state(token_id)` gives the state for the next
step.  Nothing is kept between runs, so a rewound or branched generation just reuses old states.
"""

from __future__ import annotations

import math
import types
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np

from tokenlab.sampling._validate import check_int
from tokenlab.sampling.guidance import Guidance
from tokenlab.sampling.candidates import (
    Candidates,
    as_row,
    locate,
    softmax,
    sort_dense,
    workspace_candidates,
)
from tokenlab.sampling.constraint import Grammar, TokenConstraint
from tokenlab.sampling.params import SamplerParams
from tokenlab.sampling.stages import (
    EMPTY_STATE,
    STAGES,
    Ban,
    Cutoff,
    LogitBias,
    Stage,
    StageOutcome,
    StepContext,
)

REMOVED_BY_INPUT = "input"
"""What `removed_by` answers for a token whose raw logit was already -inf or NaN."""

# A draw from a dense final distribution first ranks only this many tokens.
_DRAW_PARTIAL = 256

# Membership in sparse survivors up to this many is tested with a Python set.
_SET_LOOKUP = 512
_FEW_IDS = 64
"""Up to this many ids, removed_by_many looks them up one by one in Python (see _removed_by_few)."""


def _checked_state(state: Mapping[str, object] | None) -> Mapping[str, object]:
    if state is None:
        return EMPTY_STATE
    if not isinstance(state, Mapping):
        raise ValueError(
            f"state must be a mapping (from PipelineResult.next_state) or None, got {state!r}"
        )
    for key in state:
        if not isinstance(key, str):
            raise ValueError(f"state keys must be strings, got {key!r}")
    return state


def _as_history(history: Iterable[int] | np.ndarray) -> Sequence[int] | np.ndarray:
    if isinstance(history, (np.ndarray, Sequence)):
        return history
    return tuple(history)


class StageReport:
    """What one stage did: which tokens survived it, and their logits afterwards."""

    __slots__ = ("_after", "_before", "_input_probs", "_probs", "cutoff", "name", "params")

    def __init__(
        self,
        name: str,
        params: dict[str, object],
        before: Candidates,
        after: Candidates,
        cutoff: Cutoff | None = None,
    ) -> None:
        self.name = name
        """Canonical stage name."""
        self.params = params
        """The stage's parameters as plain values, plus what it decided this run (the temperature
        applied, mirostat's mu, whether xtc fired)."""
        self.cutoff = cutoff
        """Where the stage drew its line this run (value, scale, rule), or None."""
        self._before = before
        self._after = after
        self._probs: np.ndarray | None = None
        self._input_probs: np.ndarray | None = None

    @property
    def kept_ids(self) -> np.ndarray | None:
        """Survivor ids by descending logit (ties: ascending id); None when the row is dense."""
        return self._after.ids

    @property
    def logits(self) -> np.ndarray:
        """Logits after the stage, aligned with `kept_ids` (or by id, -inf = removed, if None)."""
        return self._after.logits

    @property
    def n_kept(self) -> int:
        """Number of tokens alive after the stage."""
        return self._after.count()

    @property
    def n_in(self) -> int:
        """Number of tokens alive before the stage."""
        return self._before.count()

    @property
    def n_removed(self) -> int:
        """Number of tokens this stage removed."""
        return self.n_in - self.n_kept

    @property
    def candidates(self) -> Candidates:
        """The stage's output as candidates (dense or sparse)."""
        return self._after

    @property
    def input_candidates(self) -> Candidates:
        """The stage's input as candidates (the previous stage's output)."""
        return self._before

    def probs(self) -> np.ndarray:
        """Float64 softmax over the survivors, aligned with `logits` (0 where removed)."""
        if self._probs is None:
            self._probs = softmax(self._after.logits)
        return self._probs

    @property
    def mass_kept(self) -> float:
        """Probability mass, under the stage's input distribution, of the tokens that survived."""
        if self.n_kept == self.n_in:
            return 1.0
        input_probs = self._input_distribution()
        if self._after.ids is None:
            return float(input_probs[self._after.logits > -np.inf].sum())
        if self._before.ids is None:
            return float(input_probs[self._after.ids].sum())
        found, positions = locate(self._before.ids, self._after.ids)
        return float(input_probs[positions[found]].sum())

    def _input_distribution(self) -> np.ndarray:
        if self._input_probs is None:
            self._input_probs = softmax(self._before.logits)
        return self._input_probs

    def input_prob_of(self, token_id: int) -> float:
        """Probability of `token_id` in the stage's input (0.0 when it was not alive there)."""
        if self._before.ids is None:
            return float(self._input_distribution()[token_id])
        found, positions = locate(self._before.ids, np.array([token_id], dtype=np.int64))
        return float(self._input_distribution()[positions[0]]) if found[0] else 0.0

    def contains(self, token_id: int) -> bool:
        """Whether `token_id` survived this stage."""
        return self._after.contains(token_id)

    def prob_of(self, token_id: int) -> float:
        """Probability of `token_id` after this stage (0.0 when removed)."""
        if self._after.ids is None:
            return float(self.probs()[token_id])
        found, positions = locate(self._after.ids, np.array([token_id], dtype=np.int64))
        return float(self.probs()[positions[0]]) if found[0] else 0.0

    def top(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids and probabilities of the n most likely survivors, most likely first."""
        if self._after.ids is not None:
            return self._after.ids[:n], self.probs()[:n]
        best = self._after.top(n)
        assert best.ids is not None
        return best.ids, self.probs()[best.ids]

    def __repr__(self) -> str:
        return (
            f"StageReport(name={self.name!r}, n_in={self.n_in}, n_kept={self.n_kept}, "
            f"params={self.params!r}, cutoff={self.cutoff!r})"
        )


class PipelineResult:
    """One pipeline run: per-stage reports, the final distribution, and seeded draws from it."""

    def __init__(
        self,
        *,
        params: SamplerParams,
        raw: np.ndarray,
        stages: tuple[StageReport, ...],
        final: Candidates,
        uniform_fallback: bool,
        state: Mapping[str, object] = EMPTY_STATE,
        step_index: int = 0,
        stateful: tuple[tuple[Stage, StageReport], ...] = (),
    ) -> None:
        self.params = params
        """The parameters the pipeline ran with."""
        self.n_vocab = int(raw.shape[0])
        """Length of the logits row."""
        self.stages = stages
        """One report per stage that ran, in order (logit_bias/ban only when they had work)."""
        self.uniform_fallback = uniform_fallback
        """True when nothing finite was left after logit_bias and ban (uniform over allowed)."""
        self.final = final
        """The surviving candidates and their final logits."""
        self.state = state
        """The sampler state this run started from (empty: every stage's initial state)."""
        self.step_index = step_index
        """The 0-based generated-token index this run was for."""
        self._raw = raw
        self._stateful = stateful

    def next_state(self, token_id: int) -> Mapping[str, object]:
        """The state after `token_id` is appended (pass it to the next step's run).

        A read-only mapping: this run's state with the entries of the stateful stages that ran
        updated (mirostat_v2's "mirostat_mu"); entries of stages that did not run pass through.
        """
        token_id = self._check_id(token_id)
        if not self._stateful:
            return self.state
        updated = dict(self.state)
        for stage, report in self._stateful:
            updated.update(stage.next_state(report, token_id))
        return types.MappingProxyType(updated)

    # -- the final distribution --------------------------------------------------------------------

    @cached_property
    def _dense_final(self) -> np.ndarray:
        assert self.final.ids is None
        return softmax(self.final.logits)

    @cached_property
    def _ranked(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.final.ids is not None:
            return self.final.ids, self.final.logits, softmax(self.final.logits)
        ids, logits = sort_dense(self.final.logits)
        return ids, logits, self._dense_final[ids]

    @property
    def final_ids(self) -> np.ndarray:
        """Int64 ids of the survivors, by descending final probability (ties: ascending id)."""
        return self._ranked[0]

    @property
    def final_logits(self) -> np.ndarray:
        """Float logits of the survivors after the last stage, aligned with `final_ids`."""
        return self._ranked[1]

    @property
    def final_probs(self) -> np.ndarray:
        """Float64 final probabilities aligned with `final_ids`; they sum to 1."""
        return self._ranked[2]

    @property
    def n_final(self) -> int:
        """Number of survivors."""
        return self.final.count()

    @cached_property
    def final_entropy_bits(self) -> float:
        """Shannon entropy of the final distribution, in bits."""
        probs = self._dense_final if self.final.ids is None else self.final_probs
        positive = probs[probs > 0]
        return float(-(positive * np.log2(positive)).sum()) if positive.shape[0] else 0.0

    def sorted_final_probs(self) -> np.ndarray:
        """The survivors' final probabilities, largest first, without ranking their ids (a dense final
        distribution sorts its values only: a few ms at 262,144 tokens where `final_ids` takes tens)."""
        if self.final.ids is not None or "_ranked" in self.__dict__:
            return np.sort(self.final_probs)[::-1]
        probs = np.sort(self._dense_final)[::-1]
        return probs[: self.n_final]  # the removed tokens' zeros come last

    def dense_probs(self) -> np.ndarray:
        """A new full-length float64 vector of final probabilities by token id (0 where removed)."""
        if self.final.ids is None:
            return self._dense_final.copy()
        probs = np.zeros(self.n_vocab)
        probs[self.final_ids] = self.final_probs
        return probs

    def _check_id(self, token_id: int) -> int:
        token_id = int(token_id)
        if not 0 <= token_id < self.n_vocab:
            raise ValueError(
                f"token id {token_id} is outside the vocabulary (n_vocab={self.n_vocab})"
            )
        return token_id

    def prob_of(self, token_id: int) -> float:
        """Final probability of `token_id` (0.0 when removed)."""
        token_id = self._check_id(token_id)
        if self.final.ids is None:
            return float(self._dense_final[token_id])
        # the survivors are few: one comparison beats sorting them to search
        hits = np.flatnonzero(self.final.ids == token_id)
        return float(self.final_probs[hits[0]]) if hits.shape[0] else 0.0

    @cached_property
    def final_lookup(self) -> dict[int, float] | None:
        """Survivor id → final probability when the survivors are few and sparse (None otherwise):
        a step's record looks up a couple of dozen ids, which a dict answers fastest."""
        if self.final.ids is None or self.final.ids.shape[0] > _SET_LOOKUP:
            return None
        return dict(zip(self.final_ids.tolist(), self.final_probs.tolist()))

    def probs_of(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Final probabilities of several ids at once (0.0 where removed)."""
        ids = np.asarray(ids, dtype=np.int64)
        for token_id in ids[(ids < 0) | (ids >= self.n_vocab)][:1]:
            self._check_id(int(token_id))
        lookup = self.final_lookup if ids.shape[0] <= _FEW_IDS else None
        if lookup is not None:
            return np.array([lookup.get(token_id, 0.0) for token_id in ids.tolist()], dtype=np.float64)
        if self.final.ids is None:
            dense: np.ndarray = self._dense_final[ids]
            return dense
        found, positions = locate(self.final.ids, ids)
        return np.where(found, self.final_probs[positions], 0.0)

    def removed_by_many(self, ids: Sequence[int] | np.ndarray) -> list[str | None]:
        """`removed_by` for several ids, with one vectorised membership test per stage."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.uniform_fallback:
            return [self.removed_by(int(token_id)) for token_id in ids]
        if ids.shape[0] <= _FEW_IDS and self.final.ids is not None:
            return self._removed_by_few(ids.tolist())
        answers: list[str | None] = [None] * ids.shape[0]
        pending = ~self.final.contains_many(ids)
        if not pending.any():
            return answers
        raw_dead = ~(self._raw[ids] > -np.inf)
        for index in np.flatnonzero(pending & raw_dead):
            answers[index] = REMOVED_BY_INPUT
        pending &= ~raw_dead
        wanted = ids.tolist()
        for report in self.stages:
            if not pending.any():
                break
            after = report._after
            if after.ids is not None and after.ids.shape[0] <= _SET_LOOKUP:
                # a few survivors: a set answers faster than sorting them to search
                alive = set(after.ids.tolist())
                kept = np.fromiter((token_id in alive for token_id in wanted), dtype=bool, count=len(wanted))
            else:
                kept = after.contains_many(ids)
            gone = pending & ~kept
            for index in np.flatnonzero(gone):
                answers[index] = report.name
            pending &= ~gone
        return answers

    def _removed_by_few(self, wanted: list[int]) -> list[str | None]:
        """`removed_by_many` for a few ids (a step's candidates) after a sparse final stage: Python sets
        and scalar reads cost less than a dozen small numpy calls per stage."""
        for token_id in wanted:
            self._check_id(token_id)
        answers: list[str | None] = [None] * len(wanted)
        lookup = self.final_lookup
        if lookup is not None:
            pending = [i for i, token_id in enumerate(wanted) if token_id not in lookup]
        else:
            survived = self.final.contains_many(np.asarray(wanted, dtype=np.int64)).tolist()
            pending = [i for i, alive in enumerate(survived) if not alive]
        if not pending:
            return answers
        raw = self._raw[wanted].tolist()
        for i in pending:
            if not raw[i] > -math.inf:  # -inf or NaN
                answers[i] = REMOVED_BY_INPUT
        pending = [i for i in pending if answers[i] is None]
        for report in self.stages:
            if not pending:
                break
            after = report._after
            if after.ids is None:
                logits = after.logits[[wanted[i] for i in pending]].tolist()
                gone = [i for i, logit in zip(pending, logits) if not logit > -math.inf]
            elif after.ids.shape[0] <= _SET_LOOKUP:
                alive = set(after.ids.tolist())
                gone = [i for i in pending if wanted[i] not in alive]
            else:
                kept = after.contains_many(np.asarray([wanted[i] for i in pending], dtype=np.int64)).tolist()
                gone = [i for i, alive_here in zip(pending, kept) if not alive_here]
            for i in gone:
                answers[i] = report.name
            if gone:
                pending = [i for i in pending if answers[i] is None]
        return answers

    def removed_by(self, token_id: int) -> str | None:
        """First stage that removed `token_id`: None if it survived, "input" if raw -inf/NaN."""
        token_id = self._check_id(token_id)
        if self.final.contains(token_id):
            return None
        if self.uniform_fallback:
            if token_id in self.params.ban:
                return Ban.name
            if self.params.logit_bias.get(token_id) == -np.inf:
                return LogitBias.name
            if any(report.name == Grammar.name for report in self.stages):
                return Grammar.name  # the fallback is uniform over what bans and the grammar allow
        raw_logit = self._raw[token_id]
        if not raw_logit > -np.inf:  # -inf or NaN
            return REMOVED_BY_INPUT
        for report in self.stages:
            if not report.contains(token_id):
                return report.name
        return None

    def draw(self, rng: np.random.Generator | None, u: float | None = None) -> int:
        """One token id by inverse CDF over `final_probs` using exactly one `rng.random()` call
        (or the uniform number `u` in [0, 1) already taken from it)."""
        if u is None:
            assert rng is not None
            u = rng.random()
        if self.final.ids is None and "_ranked" not in self.__dict__:
            # Rank only the best few hundred, then eight times as many while u falls past their mass:
            # the ranked prefix's running sums are the first ones of the full ranking's, so the token is
            # the same. Sort fully only when u falls past the mass of all but the last few.
            size = _DRAW_PARTIAL
            count = self.final.count()
            while size < count:
                best = self.final.top(size)
                assert best.ids is not None
                cumulative = np.cumsum(self._dense_final[best.ids])
                if u < cumulative[-1]:
                    return int(best.ids[int(np.searchsorted(cumulative, u, side="right"))])
                size *= 8
        probs = self.final_probs
        cumulative = np.cumsum(probs)
        index = int(np.searchsorted(cumulative, u, side="right"))
        # Rounding can put u past the float sum: fall back to the last token with p > 0.
        last_positive = int(np.count_nonzero(probs > 0)) - 1
        return int(self.final_ids[min(index, last_positive)])

    def __repr__(self) -> str:
        stages = ", ".join(f"{r.name}:{r.n_kept}" for r in self.stages)
        return f"PipelineResult(n_vocab={self.n_vocab}, n_final={self.n_final}, stages=[{stages}])"


class Pipeline:
    """The stages configured by one SamplerParams, ready to run on any number of rows."""

    def __init__(self, params: SamplerParams | None = None) -> None:
        self.params = params if params is not None else SamplerParams()
        if not isinstance(self.params, SamplerParams):
            raise ValueError(f"Pipeline needs a SamplerParams, got {type(self.params).__name__}")
        # guidance first: it rebuilds the row from two distributions, and the user's biases and bans
        # (phrase bans too) and the grammar must then act on the guided row, unscaled, whatever the scale
        first = (Guidance.from_params(self.params), LogitBias.from_params(self.params), Ban.from_params(self.params),
                 Grammar.from_params(self.params))
        self._first: tuple[Stage, ...] = tuple(stage for stage in first if stage is not None)
        ordered = (STAGES[name].from_params(self.params) for name in self.params.samplers)
        self._ordered: tuple[Stage, ...] = tuple(stage for stage in ordered if stage is not None)
        self._stochastic = any(stage.stochastic for stage in self._ordered)
        self._has_state = tuple(
            type(stage).next_state is not Stage.next_state for stage in self._ordered
        )

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The stages that will run, in order (no-op stages are left out)."""
        return self._first + self._ordered

    def accept(self, token_id: int) -> None:
        """A no-op hook for stages: state lives in `PipelineResult.next_state`, not in stages."""
        for stage in self.stages:
            stage.accept(token_id)

    def run(
        self,
        logits: object,
        history: Iterable[int] | np.ndarray = (),
        *,
        rng: np.random.Generator | None = None,
        state: Mapping[str, object] | None = None,
        step_index: int = 0,
        negative_logits: np.ndarray | None = None,
        constraint: TokenConstraint | None = None,
    ) -> PipelineResult:
        """Apply every stage to one raw logits row (never modified; reports may reference it).

        `rng` feeds stochastic stages (default: a generator seeded with `step_index`), `state` is
        the mapping a previous `next_state` returned (None: the initial state), `step_index`
        the 0-based index of the token being generated (temperature schedules), `negative_logits`
        the negative context's row at this step (classifier-free guidance), and `constraint` says
        which tokens the params' grammar allows at this step (needed when they set one).
        """
        row = as_row(logits)
        checked_state = _checked_state(state)
        if type(step_index) is not int or step_index < 0:
            step_index = check_int("step_index", step_index, low=0)
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy Generator or None, got {type(rng).__name__}")
        if rng is None and self._stochastic:
            rng = np.random.default_rng(step_index)
        context = StepContext(
            n_vocab=int(row.shape[0]),
            history=_as_history(history),
            rng=rng,
            state=checked_state,
            step_index=step_index,
            negative_logits=None if negative_logits is None else as_row(negative_logits),
            constraint=constraint,
        )
        top = row.max()
        if np.isnan(top):
            clean = row.astype(np.float64)  # a copy
            clean[np.isnan(clean)] = -np.inf
            candidates = workspace_candidates(clean)
            top = clean.max()
        else:
            candidates = Candidates.dense(row)

        reports: list[StageReport] = []
        for stage in self._first:
            first_outcome = stage.outcome(candidates, context)
            params = stage.describe()
            if first_outcome.details:
                params.update(first_outcome.details)
            reports.append(StageReport(stage.name, params, candidates, first_outcome.candidates))
            candidates = first_outcome.candidates
        if self._first:
            top = candidates.max_logit()
        if top == -np.inf:
            return PipelineResult(
                params=self.params,
                raw=row,
                stages=tuple(reports),
                final=self._uniform_over_allowed(context),
                uniform_fallback=True,
                state=checked_state,
                step_index=step_index,
            )

        stateful: list[tuple[Stage, StageReport]] = []
        for stage, has_state in zip(self._ordered, self._has_state, strict=True):
            outcome: StageOutcome = stage.outcome(candidates, context)
            params = stage.describe()
            if outcome.details:
                params.update(outcome.details)
            report = StageReport(stage.name, params, candidates, outcome.candidates, outcome.cutoff)
            reports.append(report)
            if has_state:
                stateful.append((stage, report))
            candidates = outcome.candidates
        return PipelineResult(
            params=self.params,
            raw=row,
            stages=tuple(reports),
            final=candidates,
            uniform_fallback=False,
            state=checked_state,
            step_index=step_index,
            stateful=tuple(stateful),
        )

    def _grammar(self) -> Grammar | None:
        return next((stage for stage in self._first if isinstance(stage, Grammar)), None)

    def _uniform_over_allowed(self, context: StepContext) -> Candidates:
        n_vocab = context.n_vocab
        allowed = np.ones(n_vocab, dtype=bool)
        banned = [i for i in self.params.ban if i < n_vocab]
        banned += [
            i for i, bias in self.params.logit_bias.items() if bias == -np.inf and i < n_vocab
        ]
        allowed[banned] = False
        grammar = self._grammar()
        if grammar is not None:
            # a hard constraint outranks the bans: with nothing both allowed and unbanned, keep its tokens
            grammar_mask = grammar.mask(context)
            allowed = allowed & grammar_mask if (allowed & grammar_mask).any() else grammar_mask.copy()
        if not allowed.any():
            allowed[:] = True
        return Candidates.dense(np.where(allowed, 0.0, -np.inf))


def distribution(
    logits: object,
    history: Iterable[int] | np.ndarray = (),
    *,
    rng: np.random.Generator | None = None,
    state: Mapping[str, object] | None = None,
    step_index: int = 0,
    negative_logits: np.ndarray | None = None,
    **params: Any,
) -> np.ndarray:
    """Full-length float64 final probabilities of `logits` under SamplerParams(**params)."""
    result = Pipeline(SamplerParams.from_dict(params)).run(
        logits, history, rng=rng, state=state, step_index=step_index, negative_logits=negative_logits
    )
    return result.dense_probs()
