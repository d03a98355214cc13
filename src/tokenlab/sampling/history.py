"""Stages that read the token history: scaled penalties, no-repeat n-grams and DRY.

DRY follows llama.cpp's sampler (itself ported from KoboldCpp) on token ids: the pipeline never
sees text, so sequence breakers arrive as token-id sequences.  `dry_breaker_sequences` turns
breaker strings into those sequences the way llama.cpp does, given the model's tokenizer (and,
for llama.cpp's full treatment, every token's text).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from tokenlab.sampling._validate import check_float, check_int, check_token_id
from tokenlab.sampling.candidates import Candidates, guard_overflow, locate
from tokenlab.sampling.stages import (
    Stage,
    StageOutcome,
    StepContext,
    register_stage,
    window_counts,
)

if TYPE_CHECKING:
    from tokenlab.sampling.params import SamplerParams

DRY_DEFAULT_BREAKERS: tuple[str, ...] = ("\n", ":", '"', "*")
"""llama.cpp's default DRY sequence breakers (common/common.h), as text."""

# llama.cpp truncates breaker strings to 40 bytes and their token tails to 20 tokens.
_DRY_MAX_CHAR_LEN = 40
_DRY_MAX_SEQ_LEN = 20
# llama.cpp clamps the DRY exponent so that base**exponent stays below float32's maximum.
_FLOAT_MAX_LOG = np.float32(88.7228391)


def _history_array(history: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.asarray(history, dtype=np.int64).reshape(-1)


@register_stage
class ScaledPenalties(Stage):
    """Frequency and presence penalties as a per-token temperature (tokenlab's own).

    Each token seen in the penalty window (`penalty_last_n`, the same window as `penalties`) gets
    k = 1 + (frequency - 1)·count + (presence - 1)·[count > 0] and its logit is divided by k, after
    subtracting the minimum logit when any logit is negative so that dividing can only lower a
    logit.  Reported logits are shifted back by that minimum (the distribution is the same), so
    tokens never seen keep their logits.  1 turns either knob off.
    """

    name = "scaled_penalties"

    def __init__(self, last_n: int, frequency: float, presence: float) -> None:
        self.last_n = check_int(
            "penalty_last_n", last_n, low=-1, note=" (-1 = whole history, 0 = off)"
        )
        self.frequency = check_float("scaled_frequency", frequency, low=1.0, note=" (1 = off)")
        self.presence = check_float("scaled_presence", presence, low=1.0, note=" (1 = off)")

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        neutral = params.scaled_frequency == 1.0 and params.scaled_presence == 1.0
        if params.penalty_last_n == 0 or neutral:
            return None
        return cls(params.penalty_last_n, params.scaled_frequency, params.scaled_presence)

    def apply(self, candidates: Candidates, context: StepContext) -> Candidates:
        ids, counts = window_counts(context.history, self.last_n, context.n_vocab)
        if candidates.ids is not None:
            found, _ = locate(candidates.ids, ids)
            ids, counts = ids[found], counts[found]
        before = candidates.values_at(ids)
        penalized = np.isfinite(before)  # -inf stays removed, +inf stays on top
        ids, counts, before = ids[penalized], counts[penalized], before[penalized]
        if ids.shape[0] == 0:
            return candidates
        factors = 1.0 + (self.frequency - 1.0) * counts + (self.presence - 1.0)
        logits = candidates.logits
        lowest = float(logits.min())
        if lowest == -np.inf:
            lowest = float(logits[logits > -np.inf].min())
        floor = min(lowest, 0.0)
        with np.errstate(over="ignore"):
            after = floor + (before - floor) / factors
        return candidates.with_edits(ids, guard_overflow(before, after))

    def describe(self) -> dict[str, object]:
        return {"last_n": self.last_n, "frequency": self.frequency, "presence": self.presence}


def banned_by_ngrams(history: np.ndarray, size: int) -> np.ndarray:
    """Sorted unique ids that would repeat an n-gram of `size` already in `history`.

    As transformers' NoRepeatNGramLogitsProcessor: the last size-1 tokens are the prefix; every
    token that followed the same prefix earlier is banned (size 1 bans every token seen).
    """
    length = history.shape[0]
    if length < size:  # no complete n-gram yet
        return np.empty(0, dtype=np.int64)
    if size == 1:
        return np.unique(history)
    prefix = history[length - size + 1 :]
    starts = np.flatnonzero(history[: length - size + 1] == prefix[0])
    for offset in range(1, size - 1):
        starts = starts[history[starts + offset] == prefix[offset]]
    return np.unique(history[starts + size - 1])


@register_stage
class NoRepeatNGram(Stage):
    """Ban tokens that would repeat an n-gram of the history (transformers' no_repeat_ngram_size).

    The history includes the prompt, as it does for transformers' decoder-only models.  Unlike
    transformers (which can ban every token), at least `min_keep` tokens survive: when the bans
    would leave fewer, the most likely banned tokens are spared.
    """

    name = "no_repeat_ngram"

    def __init__(self, size: int, min_keep: int = 1) -> None:
        self.size = check_int("no_repeat_ngram_size", size, low=1, note=" (0 = off)")
        self.min_keep = check_int("min_keep", min_keep, low=1)

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        if params.no_repeat_ngram_size <= 0:
            return None
        return cls(params.no_repeat_ngram_size, params.min_keep)

    def outcome(self, candidates: Candidates, context: StepContext) -> StageOutcome:
        banned = banned_by_ngrams(_history_array(context.history), self.size)
        banned = banned[(banned >= 0) & (banned < context.n_vocab)]
        banned = banned[candidates.contains_many(banned)]
        if banned.shape[0] == 0:
            return StageOutcome(candidates, None, {"banned": 0})
        alive = candidates.count()
        shortfall = min(self.min_keep, alive) - (alive - banned.shape[0])
        if shortfall > 0:  # spare the most likely banned tokens (ties: lowest id)
            values = candidates.values_at(banned)
            spared = np.lexsort((banned, -values))[:shortfall]
            banned = np.delete(banned, spared)
        after = candidates.with_edits(banned, np.full(banned.shape[0], -np.inf))
        return StageOutcome(after, None, {"banned": int(banned.shape[0])})

    def describe(self) -> dict[str, object]:
        return {"size": self.size, "min_keep": self.min_keep}


def check_breakers(breakers: object) -> tuple[tuple[int, ...], ...]:
    """DRY sequence breakers as a tuple of non-empty token-id tuples, or a ValueError."""
    hint = "tokenize strings with tokenlab.sampling.dry_breaker_sequences"
    if isinstance(breakers, (str, bytes)) or not isinstance(breakers, Iterable):
        raise ValueError(
            f"dry_sequence_breakers must be a sequence of token-id sequences ({hint}), "
            f"got {breakers!r}"
        )
    checked: list[tuple[int, ...]] = []
    for breaker in breakers:
        if isinstance(breaker, (str, bytes)) or not isinstance(breaker, Iterable):
            raise ValueError(
                f"dry_sequence_breakers: each breaker must be a sequence of token ids ({hint}), "
                f"got {breaker!r}"
            )
        ids = tuple(check_token_id("dry_sequence_breakers", token_id) for token_id in breaker)
        if not ids:
            raise ValueError(
                "dry_sequence_breakers: a breaker must hold at least one token id, got an empty one"
            )
        checked.append(ids)
    return tuple(checked)


def dry_breaker_sequences(
    breakers: Iterable[str],
    tokenize: Callable[[str], Sequence[int]],
    token_pieces: Sequence[bytes | str] | None = None,
) -> tuple[tuple[int, ...], ...]:
    """Token-id sequences for DRY breaker strings, for `SamplerParams.dry_sequence_breakers`.

    `tokenize(text)` must return the ids of `text` without BOS or parsed special tokens (llama.cpp
    calls its tokenizer with add_special=False, parse_special=False).  With `token_pieces` (every
    token's text by id, e.g. the engine's pieces) the result is exactly llama.cpp's: every token
    whose text contains the breaker becomes a one-token breaker, and every token whose text ends
    with a proper prefix of the breaker becomes that token followed by the tokenization of the
    rest (at most 20 tokens).  Without it each breaker is just its own tokenization, which misses
    tokens such as ".\\n" that merely contain a breaker.  Breakers are truncated to 40 bytes as in
    llama.cpp; empty ones are skipped.  Use DRY_DEFAULT_BREAKERS for llama.cpp's defaults.
    """
    sequences: dict[tuple[int, ...], None] = {}
    pieces = (
        None
        if token_pieces is None
        else [
            piece.encode("utf-8") if isinstance(piece, str) else bytes(piece)
            for piece in token_pieces
        ]
    )
    for breaker in breakers:
        if not isinstance(breaker, str):
            raise ValueError(f"DRY breakers must be strings, got {breaker!r}")
        encoded = breaker.encode("utf-8")[:_DRY_MAX_CHAR_LEN]
        if not encoded:
            continue
        if pieces is None:
            ids = tuple(int(t) for t in tokenize(encoded.decode("utf-8", errors="replace")))
            if ids:
                sequences[ids[: 1 + _DRY_MAX_SEQ_LEN]] = None
            continue
        for token_id, word in enumerate(pieces):
            if encoded in word:
                sequences[(token_id,)] = None
                continue
            for overlap in _prefix_overlaps(word, encoded):
                rest = encoded[overlap:].decode("utf-8", errors="replace")
                tail = tuple(int(t) for t in tokenize(rest))[:_DRY_MAX_SEQ_LEN]
                sequences[(token_id, *tail)] = None
    return tuple(sorted(sequences))


def _prefix_overlaps(word: bytes, breaker: bytes) -> list[int]:
    """Lengths n < len(breaker) such that `word` ends with breaker[:n] (longest first scan order)."""
    overlaps = []
    start = word.find(breaker[:1])
    while start != -1:
        length = len(word) - start
        if length < len(breaker) and word[start:] == breaker[:length]:
            overlaps.append(length)
        start = word.find(breaker[:1], start + 1)
    return overlaps


# Repeats longer than this (a looping generation) switch DRY from vectorised matching, one numpy
# pass per repeat length, to the linear-time Z-algorithm in plain Python.
_VECTOR_MATCH_ROUNDS = 32


def _suffix_matches(recent: np.ndarray, limit: int) -> np.ndarray:
    """match[k - 1]: how long the text's suffix also runs ending k tokens earlier, capped at limit.

    `recent` is the window reversed (recent[0] is the newest token), so this is the Z-array of
    `recent` (llama.cpp's reverse Z-algorithm).  Usual text repeats only briefly, and one
    vectorised comparison per length finishes in a few rounds; a loop would need thousands.
    """
    size = recent.shape[0]
    match = np.zeros(size - 1, dtype=np.int64)
    active = np.arange(1, size, dtype=np.int64)
    length = 0
    while active.shape[0] and length < limit:
        if length == _VECTOR_MATCH_ROUNDS:
            capped: np.ndarray = np.minimum(_z_array(recent.tolist())[1:], limit)
            return capped
        active = active[active + length < size]
        active = active[recent[active + length] == recent[length]]
        length += 1
        match[active - 1] = length
    return match


def _z_array(tokens: list[int]) -> np.ndarray:
    """The Z-array: z[k] = length of the longest common prefix of tokens and tokens[k:]."""
    size = len(tokens)
    z = [0] * size
    left = right = 0
    for k in range(1, size):
        value = min(right - k, z[k - left]) if k < right else 0
        while k + value < size and tokens[value] == tokens[k + value]:
            value += 1
        z[k] = value
        if k + value > right:
            left, right = k, k + value
    return np.array(z, dtype=np.int64)


@register_stage
class DRY(Stage):
    """DRY, "Don't Repeat Yourself" (llama.cpp's port of KoboldCpp's sampler), on token ids.

    Over the last `dry_penalty_last_n` history tokens (-1: all of them), a token that would extend a
    repeat of length L >= `allowed_length` (a sequence ending the text that also occurs earlier,
    followed there by that token) gets its logit lowered by multiplier·base^(L - allowed_length).
    The most recent occurrence of a sequence breaker (a token-id sequence) caps L at the number of
    tokens after it; a one-token breaker is never penalized itself.  The exponent is clamped so
    base^exponent stays below float32's maximum, as in llama.cpp.  llama.cpp reads the window
    from the tokens its sampler accepted (prompt included in llama-server), so `history` is
    prompt plus generated text here too.
    """

    name = "dry"

    def __init__(
        self,
        multiplier: float,
        base: float = 1.75,
        allowed_length: int = 2,
        last_n: int = 64,
        breakers: Iterable[Sequence[int]] = (),
    ) -> None:
        self.multiplier = check_float("dry_multiplier", multiplier, low=0.0, note=" (0 = off)")
        self.base = check_float("dry_base", base, low=1.0)
        self.allowed_length = check_int("dry_allowed_length", allowed_length, low=0)
        self.last_n = check_int(
            "dry_penalty_last_n", last_n, low=-1, note=" (-1 = whole history, 0 = off)"
        )
        self.breakers = check_breakers(breakers)
        self._tails: dict[int, list[tuple[int, ...]]] = {}
        for breaker in self.breakers:
            self._tails.setdefault(breaker[0], []).append(breaker[1:])
        self._heads = np.array(sorted(self._tails), dtype=np.int64)
        self._single = np.array(
            sorted(head for head, tails in self._tails.items() if () in tails), dtype=np.int64
        )
        # float32 arithmetic, as llama.cpp decides whether and where to clamp the exponent
        with np.errstate(over="ignore"):  # a base beyond float32 becomes inf: no repeat may grow it
            base32 = np.float32(self.base)
        self._max_exponent = (
            int(_FLOAT_MAX_LOG / np.log(base32)) if base32 > np.float32(1.000001) else 0
        )

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        if params.dry_multiplier == 0.0 or params.dry_penalty_last_n == 0:
            return None
        return cls(
            params.dry_multiplier,
            params.dry_base,
            params.dry_allowed_length,
            params.dry_penalty_last_n,
            params.dry_sequence_breakers,
        )

    def repeat_lengths(self, history: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ids that would extend a repeat of length >= allowed_length, and the longest such L."""
        empty = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
        tokens = _history_array(history)
        if self.last_n > 0:
            tokens = tokens[-self.last_n :]
        size = tokens.shape[0]
        if size <= self.allowed_length:
            return empty
        recent = tokens[::-1]  # recent[i] is the token i places before the end
        limit = self._repeat_limit(recent)
        if limit < self.allowed_length:
            return empty
        match = _suffix_matches(recent, limit)
        qualifying = np.flatnonzero(match >= self.allowed_length)  # positions k - 1
        if qualifying.shape[0] == 0:
            return empty
        # The token that followed each earlier occurrence would extend the repeat.
        followers = recent[qualifying]
        lengths = match[qualifying]
        order = np.lexsort((-lengths, followers))
        followers, lengths = followers[order], lengths[order]
        first = np.concatenate(([True], followers[1:] != followers[:-1]))
        return followers[first], lengths[first]

    def _repeat_limit(self, recent: np.ndarray) -> int:
        """How many tokens after the most recent complete breaker (all of them when none)."""
        size = int(recent.shape[0])
        if self._heads.shape[0] == 0:
            return size
        for position in np.flatnonzero(np.isin(recent, self._heads)).tolist():
            longest = -1
            for tail in self._tails[int(recent[position])]:
                span = len(tail)
                if longest < span <= position and all(
                    tail[offset] == recent[position - offset - 1] for offset in range(span)
                ):
                    longest = span
            if longest >= 0:
                return int(position) - longest
        return size

    def penalties(self, lengths: np.ndarray) -> np.ndarray:
        """multiplier·base^(L - allowed_length) with llama.cpp's exponent clamp."""
        exponents = lengths - self.allowed_length
        if self._max_exponent > 0:
            exponents = np.minimum(exponents, self._max_exponent)
        with np.errstate(over="ignore"):
            return self.multiplier * np.power(self.base, exponents.astype(np.float64))

    def outcome(self, candidates: Candidates, context: StepContext) -> StageOutcome:
        ids, lengths = self.repeat_lengths(context.history)
        keep = (ids >= 0) & (ids < context.n_vocab)
        if self._single.shape[0]:
            keep &= ~np.isin(ids, self._single)
        ids, lengths = ids[keep], lengths[keep]
        if candidates.ids is not None:
            found, _ = locate(candidates.ids, ids)
            ids, lengths = ids[found], lengths[found]
        if ids.shape[0] == 0:
            return StageOutcome(candidates, None, {"penalized": 0, "longest_repeat": 0})
        before = candidates.values_at(ids)
        with np.errstate(over="ignore", invalid="ignore"):
            after = before - self.penalties(lengths)
        after = np.where(np.isnan(after), before, after)  # +inf - inf: leave +inf alone
        details = {"penalized": int(ids.shape[0]), "longest_repeat": int(lengths.max())}
        return StageOutcome(
            candidates.with_edits(ids, guard_overflow(before, after)), None, details
        )

    def describe(self) -> dict[str, object]:
        return {
            "multiplier": self.multiplier,
            "base": self.base,
            "allowed_length": self.allowed_length,
            "last_n": self.last_n,
            "breakers": len(self.breakers),
        }
