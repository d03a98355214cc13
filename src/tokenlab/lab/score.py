"""Score an existing text (GLTR-style): how likely the model found each of its tokens.

The text is decoded in chunks with logits for every position (one llama_decode per chunk, not per
token). A text longer than the context slides across it: each new window keeps the second half of the
previous one as context, so every token after the first is predicted from at least half a context.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenlab.engine import Engine, EngineError
from tokenlab.lab.step import Candidate, Step
from tokenlab.sampling import raw_stats, truncated_raw_stats
from tokenlab.sampling.watermark import WatermarkDetection, detect_watermark

RANK_BUCKETS: tuple[tuple[int, str], ...] = ((10, "top-10"), (100, "top-100"), (1000, "top-1000"), (2**62, "rest"))
"""GLTR's rank buckets: a token's rank falls in the first bucket whose limit it does not exceed."""


def file_text(text: str) -> str:
    """A text read from a file or a pipe without the newline that ends its last line (not part of the text)."""
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith("\n") else text


def rank_bucket(rank: int) -> str:
    """The GLTR bucket of a 1-based rank."""
    return next(label for limit, label in RANK_BUCKETS if rank <= limit)


@dataclass(frozen=True)
class WatermarkTest:
    """Which watermark to test a scored text for: the key, gamma and scheme it was generated with."""

    key: int
    gamma: float = 0.25
    scheme: str = "lefthash"


@dataclass(frozen=True)
class ScoredCandidate:
    """A token the model expected at a position."""

    id: int
    text: str
    prob: float


@dataclass(frozen=True)
class ScoredToken:
    """One token of the scored text and what the model thought of it."""

    index: int
    id: int
    text: str
    """The text this token adds (UTF-8 held across split characters, as in generation)."""
    piece: str
    prob: float | None
    """Probability the model gave this token, from the tokens before it; None for the very first token."""
    logprob: float | None
    rank: int | None
    """1 = the model's most likely token."""
    entropy: float | None
    """Entropy of the model's distribution at this position, in bits."""
    top: tuple[ScoredCandidate, ...]
    """What the model expected here, most likely first."""
    expected_logprob: float | None = None
    """Mean of log p over the model's own distribution here (minus the entropy, in nats)."""
    logprob_variance: float | None = None
    """Variance of log p over the model's own distribution here (nats²)."""

    def to_json(self) -> dict[str, Any]:
        """The token as the JSON object `tokenlab score --format jsonl` prints."""
        return {
            "index": self.index,
            "id": self.id,
            "text": self.text,
            "piece": self.piece,
            "prob": self.prob,
            "logprob": self.logprob,
            "rank": self.rank,
            "bucket": rank_bucket(self.rank) if self.rank is not None else None,
            "entropy": self.entropy,
            "top": [{"id": c.id, "text": c.text, "prob": c.prob} for c in self.top],
        }


@dataclass(frozen=True)
class ScoreResult:
    """Every token of a text with its probability, rank and entropy, and a summary."""

    tokens: tuple[ScoredToken, ...]
    model: str
    windows: int
    """How many context windows the text needed."""
    watermark: WatermarkDetection | None = None
    """The watermark test over the text's tokens, when a key was given."""

    @property
    def scored(self) -> list[ScoredToken]:
        """The tokens that have a prediction (all but the first when there is no BOS)."""
        return [token for token in self.tokens if token.logprob is not None]

    @property
    def mean_logprob(self) -> float:
        """Mean natural-log probability per scored token."""
        scored = self.scored
        return sum(t.logprob for t in scored) / len(scored) if scored else math.nan  # type: ignore[misc]

    @property
    def perplexity(self) -> float:
        """exp(-mean log-probability)."""
        return math.exp(-self.mean_logprob) if self.scored else math.nan

    @property
    def fast_detectgpt(self) -> float:
        """Fast-DetectGPT's analytic criterion with the scoring model as its own reference.

        d = (sum log p(x_t) - sum mu_t) / sqrt(sum sigma_t²), mu_t and sigma_t² the mean and
        variance of log p under the model's distribution at position t (Bao et al. 2024): how much
        likelier the text is than what the model itself would typically sample.  NaN when nothing
        was scored or every position was certain.
        """
        scored = [t for t in self.scored if t.expected_logprob is not None and t.logprob_variance is not None]
        variance = sum(t.logprob_variance for t in scored)  # type: ignore[misc]
        if not scored or variance <= 0 or any(t.logprob == -math.inf for t in scored):
            return math.nan
        excess = sum(t.logprob - t.expected_logprob for t in scored)  # type: ignore[operator]
        return excess / math.sqrt(variance)

    @property
    def outside_top_k(self) -> int:
        """Tokens a server left out of its top K (no probability or rank is known for them)."""
        return sum(1 for token in self.tokens if token.logprob is None and token.entropy is not None)

    def histogram(self) -> dict[str, int]:
        """How many scored tokens fall in each GLTR rank bucket."""
        counts = {label: 0 for _, label in RANK_BUCKETS}
        for token in self.scored:
            counts[rank_bucket(token.rank or 1)] += 1
        return counts

    def summary(self) -> dict[str, Any]:
        """The summary as plain JSON values."""
        detectgpt = self.fast_detectgpt
        summary = {
            "done": True,
            "model": self.model,
            "tokens": len(self.tokens),
            "scored": len(self.scored),
            "mean_logprob": self.mean_logprob,
            "perplexity": self.perplexity,
            "ranks": self.histogram(),
            "fast_detectgpt": None if math.isnan(detectgpt) else detectgpt,
            "windows": self.windows,
            **({"outside_top_k": self.outside_top_k} if self.outside_top_k else {}),
        }
        if self.watermark is not None:
            summary["watermark"] = self.watermark.summary()
        return summary

    def token_json(self, index: int) -> dict[str, Any]:
        """Token `index` as `score --format jsonl` prints it (with its watermark test when there is one)."""
        record = self.tokens[index].to_json()
        if self.watermark is not None:
            record["green"] = self.watermark.green[index]
            record["counted"] = self.watermark.counted[index]
        return record


def score_tokens(
    engine: Engine,
    token_ids: list[int],
    *,
    context: list[int] | None = None,
    top_n: int = 5,
    progress: Callable[[int, int], None] | None = None,
    watermark: WatermarkTest | None = None,
) -> ScoreResult:
    """Score `token_ids` (after the optional `context` ids, e.g. a BOS) in chunks, sliding if needed.

    With `watermark`, the tokens are also tested for that watermark (see sampling/watermark.py).
    """
    from tokenlab.engine.text import Utf8Stream

    if not token_ids:
        raise EngineError("the text is empty: nothing to score")
    if top_n < 0:
        raise ValueError(f"top_n must be >= 0, got {top_n}")
    context = list(context or [])
    full = context + list(token_ids)
    n_ctx = engine.n_ctx
    predictions: dict[int, tuple[float | None, int | None, float, tuple[ScoredCandidate, ...], tuple[float, float]]] = {}

    def on_row(position: int, logits: np.ndarray, offset: int) -> None:
        target_index = offset + position + 1  # this row predicts the next token of `full`
        if target_index >= len(full) or target_index < len(context) or target_index in predictions:
            return
        target = full[target_index]
        rest_mass = getattr(engine, "last_rest_mass", None)
        stats = raw_stats(logits, moments=True) if rest_mass is None else truncated_raw_stats(logits, rest_mass)
        top_ids = stats.top_ids(top_n) if top_n else np.empty(0, dtype=np.int64)
        if rest_mass is not None:
            top_ids = top_ids[np.isfinite(logits[top_ids])]
        top_probs = stats.probs(top_ids) if top_n else np.empty(0)
        top = tuple(ScoredCandidate(int(i), engine.token_text(int(i)), float(p)) for i, p in zip(top_ids, top_probs))
        if rest_mass is not None and not np.isfinite(logits[target]):
            # a server's row names only its top K: this token's probability and rank are unknown
            predictions[target_index] = (None, None, stats.entropy_bits, top, stats.logprob_moments())
        else:
            predictions[target_index] = (stats.logprob(target), stats.rank(target) + 1, stats.entropy_bits, top,
                                         stats.logprob_moments())
        if progress is not None:
            progress(len(predictions), len(full) - max(1, len(context)))

    # windows over `full`: each predicts the tokens after its first half (all of them for the first)
    windows = 0
    start = 0
    while True:
        window = full[start:start + n_ctx]
        first_row = 0 if start == 0 else n_ctx // 2 - 1
        if len(window) < 2:
            break
        windows += 1
        engine.evaluate_rows(window, min(first_row, len(window) - 1),
                             lambda position, logits, offset=start: on_row(position, logits, offset))
        if start + n_ctx >= len(full):
            break
        start += n_ctx - n_ctx // 2

    stream = Utf8Stream()
    scored: list[ScoredToken] = []
    for index, token_id in enumerate(token_ids):
        prediction = predictions.get(len(context) + index)
        piece = engine.piece(token_id)
        text = stream.push(piece)
        if prediction is None:
            scored.append(ScoredToken(index, token_id, text, engine.token_text(token_id), None, None, None, None, ()))
        else:
            logprob, rank, entropy, top, (mean, variance) = prediction
            scored.append(ScoredToken(index, token_id, text, engine.token_text(token_id),
                                      math.exp(logprob) if logprob is not None else None, logprob, rank, entropy,
                                      top, mean, variance))
    if not predictions:
        raise EngineError(
            "the text is a single token for this model, and nothing comes before it to predict it from; "
            "give at least two tokens"
        )
    tail = stream.flush()
    if tail and scored:
        last = scored[-1]
        scored[-1] = ScoredToken(last.index, last.id, last.text + tail, last.piece, last.prob, last.logprob,
                                 last.rank, last.entropy, last.top, last.expected_logprob, last.logprob_variance)
    detection = None
    if watermark is not None:
        detection = detect_watermark(token_ids, key=watermark.key, n_vocab=engine.n_vocab, gamma=watermark.gamma,
                                     scheme=watermark.scheme)
    return ScoreResult(tuple(scored), engine.name, windows, detection)


def score_text(
    engine: Engine,
    text: str,
    *,
    top_n: int = 5,
    progress: Callable[[int, int], None] | None = None,
    watermark: WatermarkTest | None = None,
) -> ScoreResult:
    """Score a text as the model reads it raw (with its BOS when it uses one), and test it for `watermark`."""
    if not text.strip():
        raise EngineError("the text is empty: nothing to score")
    with_bos = engine.tokenize(text)
    without_bos = engine.tokenize(text, add_bos=False)
    context = with_bos[: len(with_bos) - len(without_bos)]
    return score_tokens(engine, without_bos, context=context, top_n=top_n, progress=progress, watermark=watermark)


def scored_steps(result: ScoreResult) -> tuple[Step, ...]:
    """The scored tokens as Step records (raw and final probability alike), for views made for steps."""
    steps = []
    for token in result.tokens:
        prob = token.prob if token.prob is not None else math.nan
        top = tuple(Candidate(c.id, c.text, math.nan, c.prob, c.prob, None) for c in token.top)
        steps.append(Step(index=token.index, id=token.id, piece=token.piece, text=token.text, logit=math.nan,
                          prob=prob, final_prob=prob, rank=token.rank or 0,
                          entropy=token.entropy if token.entropy is not None else math.nan,
                          final_entropy=token.entropy if token.entropy is not None else math.nan, top=top))
    return tuple(steps)
