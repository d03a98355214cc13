"""llama.cpp's vectorised softmax kernel, lent to the raw statistics of every step (tokenlab.sampling.stats).

numpy's float32 `exp` has no SIMD path on CPUs without AVX-512: about 1.7 ns per element, 130 µs for a
49,152-token row, the largest single cost of a step record. ggml's `ggml_vec_soft_max_f32`, the kernel
llama.cpp's own attention uses, exponentiates with AVX2, AVX-512 or NEON and sums in float64, several times
faster. It is not part of llama.cpp's public API, so it is looked up by name in the CPU backend the
installed build loaded, checked against numpy on a test row, and numpy stays the fallback wherever the
symbol is missing or its answers disagree.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np

from tokenlab.sampling import stats

LANES = 64
"""Every call hands ggml a multiple of this many values, so that no element falls to its scalar tail loop
(whose expf may round differently from the vector lanes): a value's weight is then the same bits wherever it
sits, in a whole row or in a lookup of a few ids."""

_FILLER = np.float32(-np.inf)
"""Pads a call up to LANES values; its weight is 0 (checked when the kernel is loaded)."""


def _library_name() -> str:
    if sys.platform == "win32":
        return "ggml-cpu.dll"
    return "libggml-cpu.dylib" if sys.platform == "darwin" else "libggml-cpu.so"


class GgmlExpSum:
    """`exp_sum(row, shift, out)`: out = exp(row - shift) in float32, returns the float64 sum of out."""

    def __init__(self, function: ctypes._CFuncPtr) -> None:  # type: ignore[name-defined]
        function.restype = ctypes.c_double
        function.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float]
        self._function = function

    def __call__(self, row: np.ndarray, shift: float, out: np.ndarray) -> float:
        """`row` and `out`: C-contiguous float32 arrays of one length (the caller checks)."""
        size = int(row.shape[0])
        whole = size - size % LANES
        total = 0.0
        if whole:  # ctypes drops the GIL for the call: another thread may decode meanwhile
            total = self._function(whole, out.ctypes.data, row.ctypes.data, shift)
        if whole < size:
            tail = np.full(LANES, _FILLER, dtype=np.float32)
            tail[: size - whole] = row[whole:]
            weights = np.empty(LANES, dtype=np.float32)
            total += self._function(LANES, weights.ctypes.data, tail.ctypes.data, shift)
            out[whole:] = weights[: size - whole]
        return float(total)


def agrees_with_numpy(kernel: GgmlExpSum) -> bool:
    """Whether `kernel` gives numpy's weights (to float32 rounding) and sum, on rows that test its edges:
    lengths below, at and past LANES, -inf logits, and logits far enough down to underflow."""
    rng = np.random.default_rng(7)
    for size in (1, 63, 64, 1000):
        row = rng.uniform(-120.0, 12.0, size).astype(np.float32)
        row[1 : size // 7] = -np.inf
        shift = float(row.max())
        out = np.full(size, np.nan, dtype=np.float32)
        total = kernel(row, shift, out)
        with np.errstate(under="ignore"):
            reference = np.exp((row - np.float32(shift)).astype(np.float64))
        normal = reference > 1e-30  # float32 denormals may flush to zero in a vector unit
        if not np.isfinite(out).all() or np.any(out[row == -np.inf] != 0):
            return False
        if not np.allclose(out[normal], reference[normal], rtol=1e-6, atol=0) or np.any(out[~normal] > 1e-30):
            return False
        if not abs(total - float(reference.sum())) <= 1e-6 * float(reference.sum()):
            return False
    return True


def load_ggml_exp_sum() -> GgmlExpSum | None:
    """The installed build's ggml softmax kernel, or None where it is absent or disagrees with numpy.

    Only the one CPU backend library a plain build links is looked at: a build with one backend per
    instruction set loads the variant this CPU can run, and calling any other could fault.
    """
    try:
        import llama_cpp
    except ImportError:
        return None
    path = Path(llama_cpp.__file__).parent / "lib" / _library_name()
    if not path.is_file():
        return None
    try:
        library = ctypes.CDLL(str(path))
        kernel = GgmlExpSum(library.ggml_vec_soft_max_f32)
    except (OSError, AttributeError):
        return None
    return kernel if agrees_with_numpy(kernel) else None


_installed = False


def install() -> bool:
    """Lend the ggml kernel to tokenlab.sampling.stats (once per process); whether it is in use."""
    global _installed
    if not _installed:
        _installed = True
        kernel = load_ggml_exp_sum()
        if kernel is not None:
            stats.use_exp_sum(kernel)
    return stats.exp_sum_kernel() is not None
