"""Rollouts: N continuations of L tokens from one point, sampled in parallel, and an empirical check.

All N sequences share the context: it is decoded once, then every step advances the live sequences
together in one batched llama_decode (`tokenlab.engine.batch`). Sequence j draws its token at step t
from its own generator, `rollout_rng(seed, j, t)`, so a run is reproducible for a seed whatever the
batch it ran in. Each draw runs the numpy sampler pipeline on that sequence's own logits row, with
the context plus the sequence's own tokens as history.

The empirical check compares how often each first token came out against the final probability the
pipeline gave it, with a chi-square goodness-of-fit test: a sampler that keeps its promise gives a
p-value that is not tiny (below `CHECK_ALPHA` it fails). The first tokens are N independent draws
from the same row, so the test is exact in its assumptions; later tokens depend on earlier ones.

When N sequences do not fit at once (llama.cpp's parallel-sequence limit, or the KV cells of
--ctx-size) they run in waves that reuse the decoded context; each wave is one batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenlab.engine import Engine, EngineError
from tokenlab.engine.batch import BatchDecoder, max_parallel_sequences
from tokenlab.lab.step import DEFAULT_TOP_N
from tokenlab.sampling import Pipeline, PipelineResult, SamplerParams, raw_stats, truncated_raw_stats
from tokenlab.sampling.constraint import constraint_of

CHECK_ALPHA = 1e-3
"""The empirical check fails when its p-value is below this."""

MIN_EXPECTED = 5.0
"""Categories expected fewer times than this are pooled into "other" for the chi-square test."""

SamplerState = Mapping[str, object] | None


def rollout_rng(seed: int, sequence: int, step: int) -> np.random.Generator:
    """The random generator of sequence `sequence` at rollout step `step` (0-based) of a run with `seed`."""
    return np.random.default_rng((seed, sequence, step))


def sample_step(
    pipeline: Pipeline,
    logits: np.ndarray,
    history: np.ndarray,
    *,
    rng: np.random.Generator,
    state: SamplerState,
    step_index: int,
) -> tuple[PipelineResult, int, SamplerState]:
    """The one place rollouts call the sampler: (pipeline result, drawn token, state for the next step)."""
    result = pipeline.run(logits, history, rng=rng, state=state, step_index=step_index)
    token_id = result.draw(rng)
    return result, token_id, result.next_state(token_id)


# -- chi-square ----------------------------------------------------------------------------------

_EPS = 1e-15
_TINY = 1e-300
_MAX_ITERATIONS = 10_000


def regularized_gamma_p(a: float, x: float) -> float:
    """The regularized lower incomplete gamma function P(a, x) = γ(a, x) / Γ(a)."""
    return 1.0 - regularized_gamma_q(a, x)


def regularized_gamma_q(a: float, x: float) -> float:
    """The regularized upper incomplete gamma function Q(a, x) = Γ(a, x) / Γ(a).

    Series for x < a + 1, where it converges fast; otherwise the continued fraction (modified
    Lentz), which keeps full relative precision in the far tail where 1 - P would round to 0.
    """
    if not a > 0:
        raise ValueError(f"a must be positive, got {a}")
    if math.isnan(x) or x < 0:
        raise ValueError(f"x must be >= 0, got {x}")
    if x == 0:
        return 1.0
    if math.isinf(x):
        return 0.0
    log_prefactor = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        denominator = a
        for _ in range(_MAX_ITERATIONS):
            denominator += 1.0
            term *= x / denominator
            total += term
            if abs(term) < abs(total) * _EPS:
                break
        return min(1.0, max(0.0, 1.0 - total * math.exp(log_prefactor)))
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITERATIONS):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return min(1.0, max(0.0, math.exp(log_prefactor) * h))


def chi2_sf(statistic: float, dof: int) -> float:
    """The chi-square survival function: P(X >= statistic) for X ~ chi-square with `dof` degrees of freedom.

    Q(dof / 2, statistic / 2), the regularized upper incomplete gamma function (no scipy needed).
    """
    if dof < 1:
        raise ValueError(f"dof must be at least 1, got {dof}")
    if math.isinf(statistic):
        return 0.0
    return regularized_gamma_q(dof / 2.0, max(0.0, statistic) / 2.0)


# -- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rollout:
    """One sampled continuation, token by token."""

    index: int
    """Which of the N sequences (its random streams are rollout_rng(seed, index, t))."""
    ids: tuple[int, ...]
    final_probs: tuple[float, ...]
    """The final probability the pipeline gave each drawn token."""
    eog: bool
    """True when it ended with an end-of-generation token (and so may be shorter than L)."""

    @property
    def logprob(self) -> float:
        """Natural log of the product of the final probabilities."""
        return float(sum(math.log(p) if p > 0 else -math.inf for p in self.final_probs))


@dataclass(frozen=True)
class Continuation:
    """A distinct continuation and how many of the N rollouts produced it."""

    ids: tuple[int, ...]
    text: str
    """Its text (an end-of-generation token adds none)."""
    count: int
    frequency: float
    """count / number of rollouts."""
    prob: float
    """Product of the final probabilities along it: the chance the sampler produces exactly this."""
    logprob: float
    eog: bool

    def to_json(self) -> dict[str, Any]:
        """The continuation as plain JSON values."""
        return {
            "text": self.text,
            "ids": list(self.ids),
            "count": self.count,
            "frequency": self.frequency,
            "prob": self.prob,
            "logprob": self.logprob,
            "eog": self.eog,
        }


@dataclass(frozen=True)
class FirstTokenGroup:
    """The continuations that start with one token."""

    id: int
    text: str
    """The token's text (escaped like Step.piece)."""
    count: int
    frequency: float
    predicted: float
    """The final probability the pipeline gave this first token."""
    continuations: tuple[Continuation, ...]
    """Most frequent first (ties: most probable first)."""


@dataclass(frozen=True)
class CheckRow:
    """One first-token candidate: how often it came out against how often the pipeline predicted."""

    id: int
    text: str
    raw_prob: float
    """Softmax of the untouched logits (T = 1)."""
    predicted: float
    """The final probability (averaged over sequences; equal for all unless a stage is random)."""
    expected: float
    """predicted x number of rollouts."""
    observed: int
    frequency: float
    """observed / number of rollouts."""

    def to_json(self) -> dict[str, Any]:
        """The row as plain JSON values."""
        return {
            "id": self.id,
            "text": self.text,
            "raw_prob": self.raw_prob,
            "predicted": self.predicted,
            "expected": self.expected,
            "observed": self.observed,
            "frequency": self.frequency,
        }


@dataclass(frozen=True)
class EmpiricalCheck:
    """Observed first-token counts against the pipeline's final probabilities, with a chi-square test."""

    n: int
    """Rollouts that drew a first token."""
    rows: tuple[CheckRow, ...]
    """The top-N candidates by predicted probability, then any other token that was drawn."""
    rest_expected: float
    """Expected count of every candidate not in `rows`."""
    rest_observed: int
    categories: tuple[tuple[str, float, int], ...]
    """The test's categories after pooling: (label, expected, observed)."""
    statistic: float
    """Pearson's chi-square statistic (inf when a token with probability 0 was drawn)."""
    dof: int
    p_value: float | None
    """None when there is nothing to test (fewer than two categories: too few rollouts, or greedy)."""

    @property
    def impossible(self) -> int:
        """Draws of tokens the pipeline gave probability 0 (a broken sampler)."""
        return sum(row.observed for row in self.rows if row.expected == 0)

    @property
    def passed(self) -> bool:
        """Whether the sampler kept its promise: nothing impossible drawn, and p not tiny (or nothing to test)."""
        return self.impossible == 0 and (self.p_value is None or self.p_value >= CHECK_ALPHA)

    def to_json(self) -> dict[str, Any]:
        """The check as plain JSON values."""
        return {
            "n": self.n,
            "statistic": self.statistic if math.isfinite(self.statistic) else None,
            "dof": self.dof,
            "p_value": self.p_value,
            "alpha": CHECK_ALPHA,
            "passed": self.passed,
            "impossible": self.impossible,
            "rows": [row.to_json() for row in self.rows],
            "rest": {"expected": self.rest_expected, "observed": self.rest_observed},
            "categories": [
                {"label": label, "expected": expected, "observed": observed}
                for label, expected, observed in self.categories
            ],
        }


def chi_square_check(
    expected: Mapping[int, float], observed: Mapping[int, int], *, label: Callable[[int], str] = str
) -> tuple[tuple[tuple[str, float, int], ...], float, int, float | None]:
    """Pooled categories, statistic, dof and p-value of observed counts against expected counts.

    Tokens expected fewer than MIN_EXPECTED times go into one "other" category; when "other" is
    itself expected fewer than MIN_EXPECTED times it joins the smallest remaining category. A draw
    of a token with expected count 0 makes the statistic infinite (p = 0).
    """
    big = sorted((t for t, e in expected.items() if e >= MIN_EXPECTED), key=lambda t: -expected[t])
    big_set = set(big)
    categories: list[tuple[str, float, int]] = [
        (label(t), float(expected[t]), int(observed.get(t, 0))) for t in big
    ]
    other_expected = float(sum(e for t, e in expected.items() if t not in big_set))
    other_observed = int(sum(c for t, c in observed.items() if t not in big_set))
    impossible = any(c > 0 and expected.get(t, 0.0) <= 0 for t, c in observed.items())
    if other_expected > 0 or other_observed > 0:
        if other_expected >= MIN_EXPECTED or not categories:
            categories.append(("other", other_expected, other_observed))
        else:
            smallest_label, smallest_expected, smallest_observed = categories.pop()
            categories.append((f"{smallest_label} + other", smallest_expected + other_expected,
                               smallest_observed + other_observed))
    dof = len(categories) - 1
    if impossible:
        return tuple(categories), math.inf, max(dof, 1), 0.0
    if dof < 1:
        return tuple(categories), 0.0, 0, None
    statistic = float(sum((o - e) ** 2 / e for _, e, o in categories))
    return tuple(categories), statistic, dof, chi2_sf(statistic, dof)


@dataclass(frozen=True)
class RolloutResult:
    """N rollouts from one point: the sequences, their distinct continuations, the check, and speed."""

    context_len: int
    """Tokens of the shared context (decoded once)."""
    n: int
    """Rollouts asked for."""
    length: int
    """Tokens per rollout asked for (L)."""
    seed: int
    params: SamplerParams
    rollouts: tuple[Rollout, ...]
    """The sequences that drew at least one token, by index."""
    groups: tuple[FirstTokenGroup, ...]
    """Distinct continuations grouped by first token, most frequent group first."""
    check: EmpiricalCheck
    cancelled: bool
    tokens: int
    """Tokens drawn over all rollouts."""
    seconds: float
    """Wall-clock time of the whole run: context set-up, shared prefix, every step."""
    prefix_seconds: float
    """Of which: creating the batch context and decoding the shared prefix."""
    parallel: int
    """Sequences decoded together in one batch."""
    waves: int
    """Batches of `parallel` sequences run one after another."""
    decoded_tokens: int
    """Batch entries passed to llama_decode (the prefix counts once)."""
    decode_calls: int

    @property
    def tokens_per_second(self) -> float:
        """Tokens drawn per wall-clock second of the whole run."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def step_tokens_per_second(self) -> float:
        """Tokens drawn per second after the shared prefix was decoded (the batched steps alone)."""
        seconds = self.seconds - self.prefix_seconds
        return self.tokens / seconds if seconds > 0 else 0.0

    @property
    def continuations(self) -> tuple[Continuation, ...]:
        """Every distinct continuation, most frequent first."""
        flat = [c for group in self.groups for c in group.continuations]
        return tuple(sorted(flat, key=lambda c: (-c.count, -c.prob, c.ids)))

    def summary(self) -> dict[str, Any]:
        """The run as the summary object `tokenlab rollouts --format jsonl` prints last."""
        return {
            "done": True,
            "rollouts": len(self.rollouts),
            "n": self.n,
            "length": self.length,
            "seed": self.seed,
            "context_tokens": self.context_len,
            "distinct": sum(len(group.continuations) for group in self.groups),
            "tokens": self.tokens,
            "seconds": round(self.seconds, 4),
            "tokens_per_second": round(self.tokens_per_second, 2),
            "parallel": self.parallel,
            "waves": self.waves,
            "cancelled": self.cancelled,
            "check": self.check.to_json(),
        }


# -- the run -------------------------------------------------------------------------------------


def run_rollouts(
    engine: Engine,
    context_tokens: Sequence[int],
    params: SamplerParams | None = None,
    *,
    n: int,
    length: int,
    seed: int,
    top_n: int = DEFAULT_TOP_N,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    parallel: int | None = None,
    first_step: int = 0,
    state: SamplerState = None,
) -> RolloutResult:
    """Sample `n` continuations of up to `length` tokens after `context_tokens` with `params`.

    `progress(done, total)` is called after each step (total = n x length; a sequence that ends
    early counts its remaining steps as done); `cancel()` is asked before each step, and when it
    answers True the run returns what it has, marked cancelled. `parallel` caps the sequences per
    batch (default: as many as fit). `first_step` is the index of the first rollout token in its
    run and `state` the sampler state there (both for stages that depend on them), so rollouts from
    step i of a generation sample as the generation would. Decodes on the calling thread only.
    """
    context = [int(t) for t in context_tokens]
    if not context:
        raise EngineError("the context is empty; give some text to continue")
    if n < 1:
        raise ValueError(f"the number of rollouts must be at least 1, got {n}")
    if length < 1:
        raise ValueError(f"the rollout length must be at least 1, got {length}")
    if top_n < 1:
        raise ValueError(f"top_n must be at least 1, got {top_n}")
    if first_step < 0:
        raise ValueError(f"first_step must be >= 0, got {first_step}")
    if parallel is not None and parallel < 1:
        raise ValueError(f"parallel must be at least 1, got {parallel}")
    params = params or SamplerParams()
    if params.guidance_scale != 1.0 or params.ban_phrases:
        # each rollout would need its own negative sequence and its own rewinds: say so, never ignore them
        raise ValueError("rollouts sample without guidance and phrase bans; set the guidance scale to 1 "
                         "and clear the banned phrases to sample rollouts")
    if constraint_of(params) is not None:
        raise ValueError("rollouts do not support a grammar, regex or JSON schema constraint yet; "
                         "run them without --grammar, --regex and --json-schema")
    budget = engine.n_ctx
    if len(context) + length > budget:
        raise EngineError(
            f"the context ({len(context)} tokens) plus a rollout of {length} does not fit the "
            f"context size of {budget}; shorten --length or raise --ctx-size"
        )
    # Each sequence needs KV cells for every token but its last (whose logits nobody asks for).
    cells_per_sequence = length - 1
    if cells_per_sequence:
        width = min(n, max_parallel_sequences(), (budget - len(context)) // cells_per_sequence)
        if parallel is not None:
            width = min(width, parallel)
        width = max(1, width)
    else:
        width = n  # one token each: every draw comes from the prefix row, nothing else is decoded
    waves = -(-n // width)
    decoder_sequences = width if cells_per_sequence else 1

    pipeline = Pipeline(params)
    total_steps = n * length
    done_steps = 0
    cancelled = False
    sequences: list[list[int]] = []
    sequence_probs: list[list[float]] = []
    sequence_eog: list[bool] = []
    # expected first-token counts: every sequence's own prediction summed (the predictions differ
    # only when a stage draws random numbers)
    first_expected = np.zeros(engine.n_vocab)
    started = time.perf_counter()
    n_cells = len(context) + width * cells_per_sequence
    # a remote engine has no batch: its decoder sends one request per sequence and step
    open_decoder = getattr(engine, "batch_decoder", None)
    decoder_context = (open_decoder(n_seq=decoder_sequences, n_cells=n_cells) if open_decoder is not None
                       else BatchDecoder(engine, n_seq=decoder_sequences, n_cells=n_cells))
    with decoder_context as decoder:
        prefix_logits = decoder.decode_prefix(context)
        prefix_rest_mass = getattr(engine, "last_rest_mass", None)
        prefix_seconds = time.perf_counter() - started
        # every first draw sees just the context; later ones read one buffer per slot holding the
        # context and then the sequence's tokens (views, no copies per step)
        context_history = np.asarray(context, dtype=np.int64)
        histories = np.empty((decoder_sequences, len(context) + length), dtype=np.int64)
        histories[:, : len(context)] = context_history
        for wave_start in range(0, n, width):
            if cancel is not None and cancel():
                cancelled = True
                break
            if wave_start:
                decoder.rewind()
            members = range(wave_start, min(n, wave_start + width))
            states: list[SamplerState] = [state] * len(members)
            live: list[int] = []  # slots still sampling
            for slot, index in enumerate(members):
                result, token_id, states[slot] = sample_step(
                    pipeline, prefix_logits, context_history,
                    rng=rollout_rng(seed, index, 0), state=state, step_index=first_step,
                )
                first_expected += result.dense_probs()
                sequences.append([token_id])
                sequence_probs.append([result.prob_of(token_id)])
                eog = engine.is_eog(token_id)
                sequence_eog.append(eog)
                if eog or length == 1:
                    done_steps += length
                else:
                    histories[slot, len(context)] = token_id
                    done_steps += 1
                    live.append(slot)
            if progress is not None:
                progress(done_steps, total_steps)
            for t in range(1, length):
                if not live:
                    break
                if cancel is not None and cancel():
                    cancelled = True
                    break
                rows = decoder.step(live, [sequences[wave_start + slot][-1] for slot in live])
                still_live: list[int] = []
                for row, slot in zip(rows, live):
                    index = wave_start + slot
                    result, token_id, states[slot] = sample_step(
                        pipeline, row, histories[slot, : len(context) + t],
                        rng=rollout_rng(seed, index, t), state=states[slot], step_index=first_step + t,
                    )
                    sequences[index].append(token_id)
                    sequence_probs[index].append(result.prob_of(token_id))
                    histories[slot, len(context) + t] = token_id
                    if engine.is_eog(token_id):
                        sequence_eog[index] = True
                        done_steps += length - t
                    elif t == length - 1:
                        done_steps += 1
                    else:
                        done_steps += 1
                        still_live.append(slot)
                live = still_live
                if progress is not None:
                    progress(done_steps, total_steps)
            if cancelled:
                break
        decoded_tokens, decode_calls = decoder.decoded_tokens, decoder.decode_calls
    seconds = time.perf_counter() - started

    rollouts = tuple(
        Rollout(index=i, ids=tuple(ids), final_probs=tuple(probs), eog=eog)
        for i, (ids, probs, eog) in enumerate(zip(sequences, sequence_probs, sequence_eog))
    )
    return RolloutResult(
        context_len=len(context),
        n=n,
        length=length,
        seed=int(seed),
        params=params,
        rollouts=rollouts,
        groups=_group(engine, rollouts),
        check=_check(engine, prefix_logits, rollouts, first_expected, top_n, prefix_rest_mass),
        cancelled=cancelled,
        tokens=sum(len(r.ids) for r in rollouts),
        seconds=seconds,
        prefix_seconds=prefix_seconds,
        parallel=width,
        waves=waves,
        decoded_tokens=decoded_tokens,
        decode_calls=decode_calls,
    )


def _text(engine: Engine, ids: Sequence[int]) -> str:
    return engine.detokenize([t for t in ids if not engine.is_eog(t)])


def _group(engine: Engine, rollouts: Sequence[Rollout]) -> tuple[FirstTokenGroup, ...]:
    total = len(rollouts)
    by_ids: dict[tuple[int, ...], list[Rollout]] = {}
    for rollout in rollouts:
        by_ids.setdefault(rollout.ids, []).append(rollout)
    # Equal ids get equal probabilities only up to llama.cpp's batch arithmetic (a sequence's logits
    # depend slightly on what else shares its batch), so the first occurrence speaks for all.
    continuations: dict[int, list[Continuation]] = {}
    for ids, members in by_ids.items():
        first = members[0]
        logprob = first.logprob
        continuations.setdefault(ids[0], []).append(
            Continuation(
                ids=ids,
                text=_text(engine, ids),
                count=len(members),
                frequency=len(members) / total,
                prob=math.exp(logprob),
                logprob=logprob,
                eog=first.eog,
            )
        )
    predicted: dict[int, float] = {}
    for rollout in rollouts:
        predicted[rollout.ids[0]] = predicted.get(rollout.ids[0], 0.0) + rollout.final_probs[0]
    groups = []
    for first_id, members in continuations.items():
        members.sort(key=lambda c: (-c.count, -c.prob, c.ids))
        count = sum(c.count for c in members)
        groups.append(
            FirstTokenGroup(
                id=first_id,
                text=engine.token_text(first_id),
                count=count,
                frequency=count / total,
                predicted=predicted[first_id] / count,
                continuations=tuple(members),
            )
        )
    groups.sort(key=lambda g: (-g.count, -g.predicted, g.id))
    return tuple(groups)


def _check(
    engine: Engine,
    prefix_logits: np.ndarray,
    rollouts: Sequence[Rollout],
    expected_by_id: np.ndarray,
    top_n: int,
    rest_mass: float | None = None,
) -> EmpiricalCheck:
    n = len(rollouts)
    observed: dict[int, int] = {}
    for rollout in rollouts:
        observed[rollout.ids[0]] = observed.get(rollout.ids[0], 0) + 1
    candidate_ids = np.flatnonzero(expected_by_id)
    expected = {int(t): float(e) for t, e in zip(candidate_ids, expected_by_id[candidate_ids])}
    for token_id in observed:
        expected.setdefault(token_id, 0.0)
    categories, statistic, dof, p_value = chi_square_check(expected, observed, label=engine.token_text)

    order = candidate_ids[np.argsort(-expected_by_id[candidate_ids], kind="stable")]
    shown = [int(t) for t in order[:top_n]]
    shown += sorted(t for t in observed if t not in set(shown))
    raw = raw_stats(prefix_logits) if rest_mass is None else truncated_raw_stats(prefix_logits, rest_mass)
    raw_probs = raw.probs(np.asarray(shown, dtype=np.int64)).tolist() if shown else []
    rows = tuple(
        CheckRow(
            id=token_id,
            text=engine.token_text(token_id),
            raw_prob=float(raw_probs[i]),
            predicted=expected[token_id] / n if n else 0.0,
            expected=expected[token_id],
            observed=observed.get(token_id, 0),
            frequency=observed.get(token_id, 0) / n,
        )
        for i, token_id in enumerate(shown)
    )
    shown_set = set(shown)
    return EmpiricalCheck(
        n=n,
        rows=rows,
        rest_expected=float(sum(e for t, e in expected.items() if t not in shown_set)),
        rest_observed=int(sum(c for t, c in observed.items() if t not in shown_set)),
        categories=categories,
        statistic=statistic,
        dof=dof,
        p_value=p_value,
    )


__all__ = [
    "CHECK_ALPHA",
    "CheckRow",
    "Continuation",
    "EmpiricalCheck",
    "FirstTokenGroup",
    "Rollout",
    "RolloutResult",
    "chi2_sf",
    "chi_square_check",
    "regularized_gamma_p",
    "regularized_gamma_q",
    "rollout_rng",
    "run_rollouts",
    "sample_step",
]
