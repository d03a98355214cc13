"""A/B comparison: two knob sets on one step, and two generations from one prompt with one seed.

On a step, both knob sets run on the same logits row: which tokens each lets through, their final
probabilities, and which tokens only one of them can draw. On a prompt, both generations decode as two
sequences of one llama.cpp context (the prompt is decoded once and shared, as rollouts do; B's sequence
forks from A's where their tokens first differ), and each step draws from the same random stream
(seed, step index) the lab and `generate` use, so until the two part they see the same logits and the
same random numbers: the first difference is the knobs'.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenlab.engine import Engine, Utf8Stream
from tokenlab.engine.batch import BatchDecoder
from tokenlab.lab.step import DEFAULT_TOP_N, Frontier
from tokenlab.sampling import Pipeline, SamplerParams
from tokenlab.sampling.candidates import top_k_dense
from tokenlab.sampling.constraint import constraint_of


@dataclass(frozen=True)
class ComparedToken:
    """One candidate of a compared step: its raw probability and what each knob set made of it."""

    id: int
    text: str
    prob: float
    """Raw probability (softmax of the untouched logits)."""
    final_a: float
    final_b: float
    removed_by_a: str | None
    removed_by_b: str | None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values."""
        return {"id": self.id, "text": self.text, "prob": self.prob, "final_a": self.final_a,
                "final_b": self.final_b, "removed_by_a": self.removed_by_a, "removed_by_b": self.removed_by_b}


@dataclass(frozen=True)
class StepComparison:
    """Two knob sets on one step's logits."""

    rows: tuple[ComparedToken, ...]
    """The top candidates by raw probability."""
    survivors_a: int
    survivors_b: int
    entropy_a: float
    """Entropy of A's final distribution, in bits."""
    entropy_b: float
    only_a: tuple[ComparedToken, ...]
    """Tokens A can draw and B cannot, most likely (under A) first."""
    only_b: tuple[ComparedToken, ...]
    """Tokens B can draw and A cannot, most likely (under B) first."""
    only_a_mass: float
    """A's final probability on the tokens only A can draw."""
    only_b_mass: float

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values."""
        return {
            "survivors": {"a": self.survivors_a, "b": self.survivors_b},
            "final_entropy": {"a": self.entropy_a, "b": self.entropy_b},
            "only_a": {"mass": self.only_a_mass, "tokens": [row.to_json() for row in self.only_a]},
            "only_b": {"mass": self.only_b_mass, "tokens": [row.to_json() for row in self.only_b]},
            "candidates": [row.to_json() for row in self.rows],
        }


def compare_frontier(
    frontier: Frontier,
    params_b: SamplerParams,
    token_text: Callable[[int], str],
    *,
    top_n: int = DEFAULT_TOP_N,
    only_n: int = 8,
) -> StepComparison:
    """The frontier's own knobs (A) against `params_b` on the same row, state and random stream."""
    # B runs under the same constraint (a grammar is the run's, not a knob set's)
    other = Frontier(logits=frontier.logits, history=frontier.history, params=params_b, rng_key=frontier.rng_key,
                     state=frontier.state, step_index=frontier.step_index, rest_mass=frontier.rest_mass,
                     negative_logits=frontier.negative_logits, constraint=frontier.constraint)
    a, b = frontier.result, other.result
    ids = frontier.top_ids(top_n).astype(np.int64)
    raw = frontier.raw

    def rows_for(id_array: np.ndarray) -> tuple[ComparedToken, ...]:
        if id_array.shape[0] == 0:
            return ()
        raw_probs = raw.probs(id_array).tolist()
        final_a, final_b = a.probs_of(id_array).tolist(), b.probs_of(id_array).tolist()
        removed_a, removed_b = a.removed_by_many(id_array), b.removed_by_many(id_array)
        return tuple(
            ComparedToken(int(token_id), token_text(int(token_id)), raw_probs[i], final_a[i], final_b[i],
                          removed_a[i], removed_b[i])
            for i, token_id in enumerate(id_array.tolist())
        )

    def only(mine: Any, theirs: Any) -> tuple[np.ndarray, float]:
        # survivor masks, not final_ids: a dense final row need not be ranked for this
        ids_only = np.flatnonzero(mine.final.alive_mask() & ~theirs.final.alive_mask())  # ascending ids
        probs = mine.probs_of(ids_only) if ids_only.shape[0] else np.zeros(0)
        best, _ = top_k_dense(probs, only_n)  # most likely first, ties: the lower id
        return ids_only[best], float(probs.sum())

    only_a_ids, only_a_mass = only(a, b)
    only_b_ids, only_b_mass = only(b, a)
    return StepComparison(
        rows=rows_for(ids),
        survivors_a=a.n_final,
        survivors_b=b.n_final,
        entropy_a=max(0.0, a.final_entropy_bits),
        entropy_b=max(0.0, b.final_entropy_bits),
        only_a=rows_for(only_a_ids),
        only_b=rows_for(only_b_ids),
        only_a_mass=only_a_mass,
        only_b_mass=only_b_mass,
    )


@dataclass(frozen=True)
class ComparedStep:
    """One token of a compared generation."""

    id: int
    text: str
    """The text it added ("" while a UTF-8 character is incomplete)."""
    prob: float
    """Raw probability of the token."""
    final_prob: float
    """The probability its knob set gave it."""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values."""
        return {"id": self.id, "text": self.text, "prob": self.prob, "final_prob": self.final_prob}


@dataclass(frozen=True)
class GenerationComparison:
    """Two generations from one prompt and seed with two knob sets."""

    a: tuple[ComparedStep, ...]
    b: tuple[ComparedStep, ...]
    stop_a: str
    stop_b: str
    seed: int

    @property
    def first_difference(self) -> int | None:
        """The first step where the two chose different tokens (None: they agree throughout)."""
        for index, (step_a, step_b) in enumerate(zip(self.a, self.b)):
            if step_a.id != step_b.id:
                return index
        return None if len(self.a) == len(self.b) else min(len(self.a), len(self.b))

    def text(self, side: str) -> str:
        """The generated text of side "a" or "b"."""
        return "".join(step.text for step in (self.a if side == "a" else self.b))

    @staticmethod
    def mean_logprob(steps: Sequence[ComparedStep]) -> float:
        """Mean raw log-probability (nats) of a side's tokens: how typical the model finds that text."""
        values = [math.log(step.prob) for step in steps if step.prob > 0]
        return sum(values) / len(values) if values else math.nan

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values."""
        return {
            "seed": self.seed,
            "first_difference": self.first_difference,
            "a": {"text": self.text("a"), "stop_reason": self.stop_a, "tokens": [s.to_json() for s in self.a],
                  "mean_logprob": self.mean_logprob(self.a)},
            "b": {"text": self.text("b"), "stop_reason": self.stop_b, "tokens": [s.to_json() for s in self.b],
                  "mean_logprob": self.mean_logprob(self.b)},
        }


def compare_generations(
    engine: Engine,
    prompt_tokens: Sequence[int],
    params_a: SamplerParams,
    params_b: SamplerParams,
    *,
    seed: int,
    max_tokens: int,
    start_index: int = 0,
    state: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> GenerationComparison:
    """Generate with both knob sets as two sequences of one llama.cpp context (prompt decoded once).

    `start_index` is the number of tokens already generated before `prompt_tokens` ends (the lab
    compares from an inspected step): step i of the comparison is that run's step start_index + i,
    with its random stream, its temperature schedule and the stateful samplers' `state` before it.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    if any(p.guidance_scale != 1.0 or p.ban_phrases for p in (params_a, params_b)):
        # each side would need its own negative sequence and its own rewinds: say so, never ignore them
        raise ValueError("compare generates without guidance and phrase bans; leave out --guidance-scale and "
                         "--ban-phrase (on both sides)")
    if constraint_of(params_a) is not None or constraint_of(params_b) is not None:
        raise ValueError("comparing generations does not support a grammar, regex or JSON schema constraint yet; "
                         "compare the step instead, or leave the constraint out")
    prompt = [int(t) for t in prompt_tokens]
    room = engine.n_ctx - len(prompt)
    if room < 1:
        raise ValueError(f"the prompt is {len(prompt)} tokens but the context holds {engine.n_ctx}; "
                         "shorten it or raise --ctx-size")
    max_tokens = min(max_tokens, room)
    params = (params_a, params_b)
    pipelines = (Pipeline(params_a), Pipeline(params_b))
    steps: tuple[list[ComparedStep], list[ComparedStep]] = ([], [])
    history: tuple[list[int], list[int]] = (list(prompt), list(prompt))
    states: list[Any] = [state, state]
    streams = (Utf8Stream(), Utf8Stream())
    stops = ["max_tokens", "max_tokens"]
    with BatchDecoder(engine, n_seq=2, n_cells=len(prompt) + 2 * max_tokens + 2) as decoder:
        first = decoder.decode_prefix(prompt)
        rows: dict[int, np.ndarray] = {0: first, 1: first}
        active = [0, 1]
        # while both sides chose the same tokens, B reads A's logits row: one sequence is decoded, and the
        # two see bit-identical rows (two sequences of one batch differ in the last digits)
        shared = True
        for index in range(max_tokens):
            for side in active:
                frontier = Frontier(logits=rows[side], history=tuple(history[side]), params=params[side],
                                    pipeline=pipelines[side], rng_key=(seed, start_index + index),
                                    state=states[side], step_index=start_index + index)
                token_id = frontier.draw()
                states[side] = frontier.result.next_state(token_id) or None
                eog = engine.is_eog(token_id)
                text = "" if eog else streams[side].push(engine.piece(token_id))
                prob = float(frontier.raw.probs(np.asarray([token_id]))[0])
                steps[side].append(ComparedStep(token_id, text, prob, frontier.result.prob_of(token_id)))
                history[side].append(token_id)
                if eog:
                    stops[side] = "eos"
            if progress is not None:
                progress(index + 1, max_tokens)
            active = [side for side in active if stops[side] != "eos"]
            if not active or index + 1 == max_tokens:
                break
            if shared and history[0] == history[1]:
                row = decoder.step([0], [history[0][-1]])[0]
                rows = {0: row, 1: row}
                continue
            if shared:  # the sides just parted: B's sequence starts as a copy of the common prefix
                shared = False
                decoder.fork(0, 1)
            new_rows = decoder.step(active, [history[side][-1] for side in active])
            rows = {side: new_rows[i] for i, side in enumerate(active)}
    for side in (0, 1):
        tail = streams[side].flush()
        if tail and steps[side]:
            last = steps[side][-1]
            steps[side][-1] = ComparedStep(last.id, last.text + tail, last.prob, last.final_prob)
    return GenerationComparison(a=tuple(steps[0]), b=tuple(steps[1]), stop_a=stops[0], stop_b=stops[1], seed=seed)
