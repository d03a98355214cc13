"""Statistics of the untouched distribution (softmax of raw logits, T = 1), cheap per step."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import numpy as np

from tokenlab.sampling.candidates import as_row, sort_dense, top_k_dense

_SCRATCH = threading.local()

ExpSum = Callable[[np.ndarray, float, np.ndarray], float]
"""`exp_sum(row, shift, out)`: writes exp(row - shift) into `out` (float32 arrays, C-contiguous, one
length) and returns its float64 sum; each value must not depend on where it sits in the row."""

_EXP_SUM: ExpSum | None = None

KERNEL_MIN_SIZE = 4096
"""Rows shorter than this stay with numpy, whose call costs less than a foreign one there."""


def use_exp_sum(kernel: ExpSum | None) -> None:
    """Have float32 rows of KERNEL_MIN_SIZE values or more exponentiated by `kernel` (None: numpy again).

    numpy's float32 exp has no SIMD path on CPUs without AVX-512; the engine lends llama.cpp's vectorised
    one (tokenlab.engine.kernels), so that this package itself needs nothing but numpy.
    """
    global _EXP_SUM
    _EXP_SUM = kernel


def exp_sum_kernel() -> ExpSum | None:
    """The kernel `use_exp_sum` set, if any."""
    return _EXP_SUM


def _scratch(size: int, dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Two work buffers of `size` and `dtype`, reused per thread.

    Fresh multi-megabyte arrays cost page faults on every call (on a busy 2-core VM ~2 ms against
    ~0.4 ms for the arithmetic), so raw_stats keeps its buffers per thread.
    """
    # keyed by the type itself: np.dtype(...).name costs ~10 µs a call
    buffers: tuple[np.ndarray, np.ndarray] | None = _SCRATCH.__dict__.get(dtype)
    if buffers is None or buffers[0].shape[0] < size:
        buffers = (np.empty(size, dtype=dtype), np.empty(size, dtype=dtype))
        _SCRATCH.__dict__[dtype] = buffers
    return buffers[0][:size], buffers[1][:size]


class RawStats:
    """Normaliser, entropy and lookups of softmax(raw logits); references the row, no copy.

    Attributes: `n_vocab`; `max_logit`; `log_normalizer`, log(sum(exp(logits))) in float64, so that
    log p_i = logit_i - log_normalizer; `entropy_bits`, the Shannon entropy in bits.  Like the
    pipeline, NaN logits count as -inf; when some logits are +inf they share all the mass equally
    (log_normalizer = inf); an all -inf (or all-NaN) row is uniform over the vocabulary
    (log_normalizer = -inf).
    """

    __slots__ = (
        "_argmax",
        "_exp32",
        "_moments",
        "_kernel",
        "_log_total",
        "_total",
        "_n_inf",
        "_row",
        "entropy_bits",
        "log_normalizer",
        "max_logit",
        "n_vocab",
    )

    def __init__(self, row: np.ndarray, *, moments: bool = False) -> None:
        self.n_vocab = int(row.shape[0])
        self._moments: tuple[float, float] | None = None
        self._argmax: int | None = None
        self._n_inf = 0
        # log(sum(exp(logits - max_logit))), kept apart so that huge logits lose no precision
        self._log_total = 0.0
        self._total = 1.0
        self._exp32 = False
        self._kernel: ExpSum | None = None
        top = float(row.max())
        if math.isnan(top):
            row = np.where(np.isnan(row), -np.inf, row)
            top = float(row.max())
        self._row = row
        self.max_logit = top
        if top == math.inf:
            self._n_inf = int(np.count_nonzero(row == np.inf))
            self.log_normalizer = math.inf
            self.entropy_bits = math.log2(self._n_inf)
        elif top == -math.inf:
            self.log_normalizer = -math.inf
            self.entropy_bits = math.log2(self.n_vocab)
        else:
            # A float32 row (what llama.cpp hands over) is exponentiated in float32 and summed in float64:
            # its logits carry ~1e-7 relative rounding already, float64 exp costs 3x on CPUs without
            # AVX-512, and llama.cpp's own softmax is float32. A float64 row is done in float64 throughout.
            self._exp32 = row.dtype == np.float32
            kernel = _EXP_SUM
            if self._exp32 and kernel is not None and self.n_vocab >= KERNEL_MIN_SIZE and row.flags.c_contiguous:
                self._kernel = kernel
                _, weights32 = _scratch(self.n_vocab, np.float32)
                kernel(row, top, weights32)
                shifted, weights = _scratch(self.n_vocab)
                np.subtract(row, top, out=shifted, dtype=np.float64)
                np.copyto(weights, weights32)
            elif self._exp32:
                shifted32, weights32 = _scratch(self.n_vocab, np.float32)
                with np.errstate(over="ignore"):  # -2.8e35 - 3.4e38 rounds past FLT_MAX: -inf, a weight of 0
                    np.subtract(row, np.float32(top), out=shifted32)
                np.exp(shifted32, out=weights32)
                shifted, weights = _scratch(self.n_vocab)
                np.copyto(shifted, shifted32)  # two widening copies and a float64 einsum cost less
                np.copyto(weights, weights32)  # than float64 reductions straight from float32 arrays
            else:
                shifted, weights = _scratch(self.n_vocab)
                with np.errstate(over="ignore"):  # -1e308 - 1e308 is -inf: a weight of 0, as it should be
                    np.subtract(row, top, out=shifted)
                np.exp(shifted, out=weights)
            total = float(weights.sum())
            # einsum, not np.dot: BLAS would start threads that spin on the cores the decode needs
            with np.errstate(invalid="ignore"):
                weighted = float(np.einsum("i,i->", weights, shifted))  # NaN where 0 * -inf
            if not math.isfinite(weighted):  # -inf logits: leave them out
                alive = weights > 0
                weighted = float(np.einsum("i,i->", weights[alive], shifted[alive]))
            if moments:  # while the weights are at hand: one more pass instead of logprob_moments' five
                with np.errstate(invalid="ignore", over="ignore"):
                    second = float(np.einsum("i,i,i->", weights, shifted, shifted))
                if not math.isfinite(second):  # 0 * inf: tokens with no weight add nothing
                    alive = weights > 0
                    second = float(np.einsum("i,i,i->", weights[alive], shifted[alive], shifted[alive]))
                mean_shift = weighted / total  # E[logit - max]; log p = (logit - max) - log(total)
                self._moments = (mean_shift - math.log(total), max(0.0, second / total - mean_shift**2))
            self._total = total
            self._log_total = math.log(total)
            self.log_normalizer = top + self._log_total
            # H = -sum p log p with log p = shifted - log(total).
            # (clamped to [0, log2 n]: float32 weights can round a flat row's entropy a hair past the bound)
            entropy = (math.log(total) - weighted / total) / math.log(2.0)
            self.entropy_bits = min(max(0.0, entropy), math.log2(self.n_vocab))

    @property
    def argmax(self) -> int:
        """Id of the most likely token (the lowest id among ties)."""
        if self._argmax is None:
            self._argmax = int(np.argmax(self._row))
        return self._argmax

    def logprob(self, token_id: int) -> float:
        """Natural log of the raw probability of `token_id` (-inf when it is 0)."""
        logit = float(self._row[self._check(token_id)])
        if self._n_inf:
            return -math.log(self._n_inf) if logit == math.inf else -math.inf
        if self.max_logit == -math.inf:
            return -math.log(self.n_vocab)
        return (logit - self.max_logit) - self._log_total

    def prob(self, token_id: int) -> float:
        """Raw probability of `token_id` (softmax at T = 1)."""
        return float(self.probs(np.array([self._check(token_id)]))[0])

    def probs(self, ids: np.ndarray) -> np.ndarray:
        """Raw probabilities of several ids at once (float64)."""
        ids = np.asarray(ids, dtype=np.int64)
        logits = self._row[ids].astype(np.float64)
        if self._n_inf:
            shared: np.ndarray = (logits == np.inf) / self._n_inf
            return shared
        if self.max_logit == -math.inf:
            return np.full(ids.shape[0], 1.0 / self.n_vocab)
        if self._kernel is not None:  # the same kernel: the very weights the normaliser summed
            weights32 = np.empty(ids.shape[0], dtype=np.float32)
            self._kernel(np.ascontiguousarray(self._row[ids]), self.max_logit, weights32)
            return weights32.astype(np.float64) / self._total
        if self._exp32:  # the very weights the normaliser summed, so the probabilities sum to 1
            with np.errstate(over="ignore"):  # as in __init__: past FLT_MAX is -inf, a weight of 0
                weights = np.exp(self._row[ids] - np.float32(self.max_logit))
            return weights.astype(np.float64) / self._total
        with np.errstate(over="ignore"):  # -1e308 - 1e308 is -inf: probability 0
            probs: np.ndarray = np.exp((logits - self.max_logit) - self._log_total)
        return probs

    def rank(self, token_id: int) -> int:
        """Number of tokens with a strictly greater logit (0 for the most likely token)."""
        logit = self._row[self._check(token_id)]
        return int(np.count_nonzero(self._row > logit))

    def ranked_ids(self) -> np.ndarray:
        """Ids of every token with a finite or +inf logit, most likely first (ties: lowest id first)."""
        ids, _ = sort_dense(self._row)
        return ids

    def top_ids(self, n: int) -> np.ndarray:
        """Ids of the n most likely tokens, most likely first (ties: lowest id first)."""
        ids, _ = top_k_dense(self._row, n)
        if ids.shape[0] < min(n, self.n_vocab):  # -inf tokens come last, by id
            rest = np.flatnonzero(self._row == -np.inf)[: min(n, self.n_vocab) - ids.shape[0]]
            ids = np.concatenate((ids, rest))
        return ids

    def logprob_moments(self) -> tuple[float, float]:
        """Mean and variance, in nats, of log p(v) with v drawn from this distribution itself.

        The mean is minus the entropy; with the variance they are Fast-DetectGPT's analytic
        expectation and variance of a token's log-likelihood under the scoring model.  One more
        pass over the row, so only callers that need them pay for it.
        """
        if self._moments is not None:
            return self._moments
        if self._n_inf or self.max_logit == -math.inf:
            count = self._n_inf or self.n_vocab  # uniform over the +inf tokens or the whole row
            return -math.log(count), 0.0
        logprobs, weights = _scratch(self.n_vocab)
        np.subtract(self._row, self.log_normalizer, out=logprobs, dtype=np.float64)
        np.exp(logprobs, out=weights)
        with np.errstate(invalid="ignore"):
            # -inf logits give 0·inf = NaN terms: they carry no probability, so nansum drops them
            np.multiply(weights, logprobs, out=weights)
            mean = float(np.nansum(weights))
            np.subtract(logprobs, mean, out=logprobs)
            np.square(logprobs, out=weights)
            np.subtract(self._row, self.log_normalizer, out=logprobs, dtype=np.float64)
            np.exp(logprobs, out=logprobs)
            np.multiply(weights, logprobs, out=weights)
            variance = float(np.nansum(weights))
        return mean, max(0.0, variance)

    def _check(self, token_id: int) -> int:
        token_id = int(token_id)
        if not 0 <= token_id < self.n_vocab:
            raise ValueError(
                f"token id {token_id} is outside the vocabulary (n_vocab={self.n_vocab})"
            )
        return token_id

    def __repr__(self) -> str:
        return (
            f"RawStats(n_vocab={self.n_vocab}, max_logit={self.max_logit:.4g}, "
            f"log_normalizer={self.log_normalizer:.6g}, entropy_bits={self.entropy_bits:.4f})"
        )


def raw_stats(logits: object, *, moments: bool = False) -> RawStats:
    """Statistics of softmax(logits) at T = 1: float64 normaliser, entropy in bits."""
    return RawStats(as_row(logits), moments=moments)


def truncated_raw_stats(logits: object, rest_mass: float) -> RawStats:
    """Statistics of a sparse row of log-probabilities (a server's top K, -inf elsewhere) whose unseen
    tokens hold `rest_mass` in all: probabilities are the row's own, and the entropy counts the rest as
    one outcome (a lower bound: spread over many tokens it would be higher)."""
    if not 0.0 <= rest_mass < 1.0:
        raise ValueError(f"rest_mass must be in [0, 1), got {rest_mass}")
    stats = RawStats(as_row(logits))
    if stats.max_logit in (math.inf, -math.inf) or rest_mass == 0.0:
        return stats
    kept = 1.0 - rest_mass
    # the row's own normaliser is log(kept); the true one is log(1) once the rest is counted
    stats._log_total -= math.log(kept)
    stats._total /= kept
    stats.log_normalizer -= math.log(kept)
    # H = kept * (H_kept - log2 kept) - rest * log2 rest, with H_kept the entropy renormalised over the row
    stats.entropy_bits = max(0.0, kept * (stats.entropy_bits - math.log2(kept)) - rest_mass * math.log2(rest_mass))
    return stats
