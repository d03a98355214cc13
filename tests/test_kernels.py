"""llama.cpp's vectorised exp lent to the raw statistics: same answers as numpy, consistent lookups."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tokenlab.engine import kernels
from tokenlab.sampling import raw_stats, stats


@pytest.fixture
def kernel() -> stats.ExpSum:
    """The installed build's kernel (it must be found: the set-up builds llama.cpp with it)."""
    assert kernels.install() is True
    found = stats.exp_sum_kernel()
    assert isinstance(found, kernels.GgmlExpSum)
    return found


def model_like_row(size: int, seed: int = 3) -> np.ndarray:
    """float32 logits shaped like a model's: a few strong tokens over a long tail, some -inf, some deep."""
    rng = np.random.default_rng(seed)
    row = (rng.standard_normal(size) * 3.0).astype(np.float32)
    row[rng.choice(size, 20, replace=False)] += 12.0
    row[::101] -= 90.0  # below float32 exp's normal range once shifted
    row[5::997] = -np.inf
    return row


def reference_probs(row: np.ndarray) -> np.ndarray:
    exact = row.astype(np.float64)
    weights = np.exp(exact - exact.max())
    return weights / weights.sum()


@pytest.mark.parametrize("size", [49_152, 49_157])  # a whole number of the kernel's lanes, and a tail
def test_kernel_statistics_match_numpy_and_a_float64_reference(kernel: stats.ExpSum, size: int,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    row = model_like_row(size)
    fast = raw_stats(row)
    assert fast._kernel is kernel
    monkeypatch.setattr(stats, "_EXP_SUM", None)
    slow = raw_stats(row)
    assert slow._kernel is None
    reference = reference_probs(row)
    alive = reference > 0
    entropy = -(reference[alive] * np.log2(reference[alive])).sum()
    for result in (fast, slow):
        assert result.log_normalizer == pytest.approx(np.log(np.exp(row.astype(np.float64)).sum()), rel=1e-9)
        assert result.entropy_bits == pytest.approx(entropy, rel=1e-7)
    probs = fast.probs(np.arange(size))
    normal = reference > 1e-30
    np.testing.assert_allclose(probs[normal], reference[normal], rtol=3e-6)
    assert np.all(probs[row == -np.inf] == 0.0)
    np.testing.assert_allclose(probs, slow.probs(np.arange(size)), rtol=1e-6, atol=1e-40)


def test_kernel_lookups_are_the_very_weights_the_normaliser_summed(kernel: stats.ExpSum) -> None:
    """A lookup of a few ids gives the same bits as the whole row, wherever the ids sit (the tail too),
    so the probabilities of every token sum to 1."""
    row = model_like_row(49_157)
    result = raw_stats(row)
    everything = result.probs(np.arange(row.shape[0]))
    assert abs(everything.sum() - 1.0) <= 1e-12
    few = np.array([int(np.argmax(row)), 0, 5, 49_156, 49_153, 12_345])
    np.testing.assert_array_equal(result.probs(few), everything[few])
    for token_id in few:
        assert result.prob(int(token_id)) == everything[token_id]


def test_kernel_is_left_out_where_it_cannot_apply(kernel: stats.ExpSum) -> None:
    row = model_like_row(49_152)
    assert raw_stats(row[::2])._kernel is None  # not contiguous
    assert raw_stats(row.astype(np.float64))._kernel is None  # float64 rows stay float64
    assert raw_stats(row[: stats.KERNEL_MIN_SIZE - 1])._kernel is None  # too short to pay for the call
    strided = raw_stats(row[::2])
    assert strided.entropy_bits == pytest.approx(raw_stats(np.ascontiguousarray(row[::2])).entropy_bits, rel=1e-7)


def test_kernel_runs_in_two_threads_at_once(kernel: stats.ExpSum) -> None:
    """The call drops the GIL (a decode may be running beside it); each thread keeps its own buffers."""
    rows = [model_like_row(262_144, seed) for seed in (1, 2)]
    expected = [raw_stats(row).entropy_bits for row in rows]
    found: list[list[float]] = [[], []]

    def work(index: int) -> None:
        for _ in range(20):
            found[index].append(raw_stats(rows[index]).entropy_bits)

    threads = [threading.Thread(target=work, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert found == [[expected[0]] * 20, [expected[1]] * 20]


def test_a_kernel_that_disagrees_is_refused() -> None:
    class Wrong:
        def __call__(self, row: np.ndarray, shift: float, out: np.ndarray) -> float:
            np.exp(row - np.float32(shift), out=out)
            out *= np.float32(1.001)
            return float(out.sum(dtype=np.float64))

    assert kernels.agrees_with_numpy(Wrong()) is False  # type: ignore[arg-type]
