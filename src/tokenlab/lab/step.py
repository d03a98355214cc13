"""The compact record of one generation step, and the frontier step that can be re-sampled live."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tokenlab.sampling import Pipeline, PipelineResult, RawStats, SamplerParams, raw_stats, truncated_raw_stats
from tokenlab.sampling.constraint import TokenConstraint

DEFAULT_TOP_N = 20
"""Candidates kept in a step's record."""
NEGATIVE_TOP_N = 5
"""Candidates of the negative context kept in a guided step's record."""

_encode_json = json.JSONEncoder(ensure_ascii=False, check_circular=False).encode
"""json.dumps(..., ensure_ascii=False) without building an encoder per call or checking for cycles
(a step's JSON is a fresh tree)."""


@dataclass(frozen=True, slots=True)  # slots: a long session holds hundreds of thousands of these
class Candidate:
    """One token the model weighed at a step."""

    id: int
    text: str
    """The token's text, with bytes that are not valid UTF-8 on their own shown as \\xNN."""
    logit: float
    prob: float
    """Softmax of the untouched logits (T = 1)."""
    final_prob: float
    """Probability after the sampler pipeline; 0 when a stage removed the token."""
    removed_by: str | None
    """Name of the stage that removed the token, None if it survived."""

    def to_json(self) -> dict[str, Any]:
        """The candidate as plain JSON values."""
        return {
            "id": self.id,
            "text": self.text,
            "logit": self.logit,
            "prob": self.prob,
            "final_prob": self.final_prob,
            "removed_by": self.removed_by,
        }


@dataclass(frozen=True, slots=True)
class Rewind:
    """Tokens a phrase ban took back: the run went back to the first of them and banned it there."""

    phrase: str
    """The banned phrase the text came to contain."""
    ids: tuple[int, ...]
    """The rewound tokens, in order; ids[0] is the token banned at the step the run restarted from."""
    texts: tuple[str, ...]
    """What each rewound token had added to the text."""

    @property
    def text(self) -> str:
        """The rewound text."""
        return "".join(self.texts)

    def to_json(self) -> dict[str, Any]:
        """The rewind as plain JSON values."""
        return {"phrase": self.phrase, "tokens": [{"id": i, "text": t} for i, t in zip(self.ids, self.texts)]}


@dataclass(frozen=True, slots=True)
class Step:
    """What happened at one position: the token chosen and the candidates it beat."""

    index: int
    """0-based position in the generated text."""
    id: int
    piece: str
    """The chosen token's own text (escaped like Candidate.text)."""
    text: str
    """Text this token added to the output: "" while a UTF-8 character is incomplete, and for end-of-generation."""
    logit: float
    prob: float
    """Raw probability of the chosen token (softmax of the untouched logits, T = 1)."""
    final_prob: float
    """Probability the sampler pipeline gave the chosen token."""
    rank: int
    """Raw rank of the chosen token: 1 is the model's most likely token."""
    entropy: float
    """Entropy of the raw distribution, in bits."""
    final_entropy: float
    """Entropy of the final distribution, in bits."""
    top: tuple[Candidate, ...]
    """The top-N candidates by raw probability (plus the chosen token when it ranks lower)."""
    forced: bool = False
    """True when the user chose this token instead of the sampler."""
    eog: bool = False
    """True when the token ends generation (EOS, EOT)."""
    sampler_state: Mapping[str, object] | None = None
    """The stateful samplers' state after this token (mirostat's mu), for the next step and for rewinds."""
    dice: tuple[float, float] | None = None
    """The draw: (u, mass before the token). The uniform number u in [0, 1) fell in the chosen token's
    slice [before, before + final_prob) of the cumulative final distribution (most likely token first).
    None when the token was forced, when it was the only one left, or for a step not recorded in full."""
    rest_mass: float | None = None
    """With a remote engine: the probability of the tokens outside the server's top K (None: full vocabulary)."""
    allowed: int | None = None
    """With a grammar, regex or JSON schema: how many tokens it let through at this step (1: the constraint
    forced the token); None without a constraint."""
    rewound: tuple[Rewind, ...] = ()
    """Phrase-ban rewinds that restarted the run at this step, oldest first (their tokens came before this one)."""
    negative: tuple[tuple[int, str, float], ...] = ()
    """With guidance: the negative context's most likely tokens here, (id, text, raw probability)."""

    def to_json_line(self) -> str:
        """The step as one line of `tokenlab generate --format jsonl` (without the newline)."""
        return _encode_json(self.to_json())

    def slim(self) -> Step:
        """This step with only the chosen token among its candidates (what loop mode keeps past its cap)."""
        return dataclasses.replace(self, top=tuple(c for c in self.top if c.id == self.id))

    def to_json(self) -> dict[str, Any]:
        """The step as the JSON object `tokenlab generate --format jsonl` prints."""
        return {
            "step": self.index,
            "id": self.id,
            "text": self.text,
            "piece": self.piece,
            "prob": self.prob,
            "final_prob": self.final_prob,
            "rank": self.rank,
            "entropy": self.entropy,
            "final_entropy": self.final_entropy,
            "forced": self.forced,
            "eog": self.eog,
            **({"sampler_state": dict(self.sampler_state)} if self.sampler_state else {}),
            **({"dice": {"u": self.dice[0], "before": self.dice[1]}} if self.dice is not None else {}),
            **({"rest_mass": self.rest_mass} if self.rest_mass is not None else {}),
            **({"allowed": self.allowed} if self.allowed is not None else {}),
            **({"rewound": [rewind.to_json() for rewind in self.rewound]} if self.rewound else {}),
            **({"negative": [{"id": i, "text": t, "prob": p} for i, t, p in self.negative]} if self.negative else {}),
            "top": [
                {"id": c.id, "text": c.text, "prob": c.prob, "final_prob": c.final_prob,
                 "removed_by": c.removed_by}
                for c in self.top
            ],
        }


def mass_before(result: PipelineResult, token_id: int) -> float:
    """The final probability of every token the draw's cumulative order puts before `token_id`.

    The draw walks the survivors by descending final probability (ties: ascending id); this sums the
    same tokens with one vectorised pass instead of sorting the whole vocabulary.  When the survivors
    are already ranked (after a cut such as top-k), it sums the ones ranked before the token instead.
    """
    if result.final.ids is not None or "_ranked" in result.__dict__:
        ranked = result.final_ids
        position = np.flatnonzero(ranked == token_id)
        if position.shape[0]:
            return float(result.final_probs[: int(position[0])].sum())
    probs = result.dense_probs()
    prob = probs[token_id]
    ties = np.flatnonzero(probs[:token_id] == prob)
    return float(probs[probs > prob].sum() + probs[ties].sum())


@dataclass
class Frontier:
    """The step about to be sampled: its full logits row is kept so knobs can re-sample it live."""

    logits: np.ndarray
    """float32 logits of the next position, one per vocabulary entry."""
    history: tuple[int, ...]
    """Token ids of the context (prompt and generated text) the penalties look at."""
    params: SamplerParams
    pipeline: Pipeline | None = None
    """A Pipeline built from `params` to reuse (building one per step costs more than running it)."""
    rng_key: tuple[int, ...] = (0,)
    """Seed of this step's random stream: stochastic stages (XTC) and the draw both use it, afresh on
    every (re-)run, so re-sampling with the same knobs always decides the same way."""
    state: Mapping[str, object] | None = None
    """Stateful samplers' state before this step (None: the initial state)."""
    step_index: int = 0
    """Generated tokens before this step (temperature schedules count from here)."""
    rest_mass: float | None = None
    """For a remote row (a server's top K log-probabilities, -inf elsewhere): the probability of the rest of
    the vocabulary. Raw probabilities are then the server's own, and the candidates are the K it named."""
    constraint: TokenConstraint | None = None
    """The grammar at this step (which tokens it allows), when the params carry one."""
    negative_logits: np.ndarray | None = None
    """The negative context's float32 row at this step, when classifier-free guidance decoded one."""
    result: PipelineResult = field(init=False)
    rng: np.random.Generator = field(init=False, repr=False)
    drawn_u: float | None = field(init=False, default=None)
    """The uniform number the last draw took (see Step.dice)."""
    _raw: RawStats | None = field(init=False, default=None, repr=False)
    _raw_ranked: np.ndarray | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if self.pipeline is None or self.pipeline.params is not self.params:
            self.pipeline = Pipeline(self.params)
        self._run()

    def _run(self) -> None:
        assert self.pipeline is not None
        self.rng = np.random.default_rng(self.rng_key)
        self.result = self.pipeline.run(self.logits, self.history, rng=self.rng, state=self.state,
                                        step_index=self.step_index, negative_logits=self.negative_logits,
                                        constraint=self.constraint)

    @property
    def raw(self) -> RawStats:
        """Statistics of the untouched distribution (computed on first use: lean runs never need them)."""
        if self._raw is None:
            self._raw = raw_stats(self.logits) if self.rest_mass is None else truncated_raw_stats(self.logits, self.rest_mass)
        return self._raw

    def raw_curve(self, ranks: np.ndarray) -> np.ndarray:
        """Raw probabilities of the tokens at 0-based `ranks` of the raw ranking (0 past the alive ones).

        The ranking is made once per frontier (knob turns re-run only the pipeline).
        """
        if self._raw_ranked is None:
            self._raw_ranked = self.raw.ranked_ids()
        ranked = self._raw_ranked
        curve = np.zeros(ranks.shape[0])
        inside = ranks < ranked.shape[0]
        curve[inside] = self.raw.probs(ranked[ranks[inside]])
        return curve

    @property
    def seen(self) -> int | None:
        """For a remote row: how many candidates the server named (None for a full-vocabulary row)."""
        return None if self.rest_mass is None else int(np.isfinite(self.logits).sum())

    def resample(self, params: SamplerParams) -> PipelineResult:
        """Re-run the pipeline on the retained logits with new params (no model call)."""
        if params != self.params:
            self.params = params
            self.pipeline = Pipeline(params)
            self._run()
        return self.result

    def draw(self) -> int:
        """Draw this step's token from the final distribution with the step's random stream."""
        u = float(self.rng.random())  # the one number the draw takes, kept to show the dice
        token_id = self.result.draw(None, u=u)
        self.drawn_u = u
        return token_id

    def negative_top(self, n: int) -> list[tuple[int, float]]:
        """(id, probability) of the negative context's n most likely tokens (softmax of its raw row, T = 1)."""
        if self.negative_logits is None:
            return []
        row = self.negative_logits.astype(np.float64)
        n = min(n, row.shape[0])
        best = np.argpartition(-row, n - 1)[:n]
        best = best[np.lexsort((best, -row[best]))]
        probs = np.exp(row[best] - row.max()) / np.exp(row - row.max()).sum()
        return [(int(i), float(p)) for i, p in zip(best, probs)]

    def top_ids(self, n: int) -> np.ndarray:
        """Ids of the n most likely tokens by raw logit, most likely first (for a remote row: among the server's K)."""
        if self.rest_mass is not None:
            ids = self.raw.top_ids(n).astype(np.int64)
            return ids[np.isfinite(self.logits[ids])]  # the unseen ids are not candidates, only rest mass
        stages = self.result.stages
        if stages and stages[0].name == "top_k":
            # top-k ran first, on this very row: its survivors are the raw ranking (same tie rule)
            report = stages[0]
            before = report.input_candidates
            kept = report.kept_ids
            if before.is_dense and before.logits is self.logits and kept is not None and kept.shape[0] >= n:
                return kept[:n]
        return self.raw.top_ids(n).astype(np.int64)

    def candidates(self, token_text, n: int = DEFAULT_TOP_N, extra: tuple[int, ...] = ()) -> tuple[Candidate, ...]:  # noqa: ANN001
        """The top-n raw candidates (and any `extra` ids) with raw and final probability and who removed them."""
        ids: list[int] = self.top_ids(n).tolist()
        for token_id in extra:
            if token_id not in ids:
                ids.append(int(token_id))
        id_array = np.asarray(ids, dtype=np.int64)
        raw_probs = self.raw.probs(id_array).tolist()
        final_probs = self.result.probs_of(id_array).tolist()
        removed = self.result.removed_by_many(id_array)
        logits = self.logits[id_array].tolist()
        return tuple(
            Candidate(
                id=token_id,
                text=token_text(token_id),
                logit=logits[i],
                prob=raw_probs[i],
                final_prob=final_probs[i],
                removed_by=removed[i],
            )
            for i, token_id in enumerate(ids)
        )
