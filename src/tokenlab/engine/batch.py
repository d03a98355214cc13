"""Batched decoding of several sequences that share one prefix, on the Engine's already-loaded model.

A `BatchDecoder` opens a second llama.cpp context on the weights the Engine has loaded (nothing is
loaded twice), with room for `n_seq` parallel sequences in one unified KV cache. The prefix is
decoded once into sequence 0 and shared with the others by `llama_memory_seq_cp` (in a unified cache
that only tags the same cells with more sequence ids); afterwards each `step` advances any subset of
the sequences by one token in a single llama_decode and hands back one logits row per sequence.

Threading: llama.cpp's OpenMP thread teams belong to the thread that calls llama_decode, so use the
decoder on the same thread that drives the Engine; it never starts threads of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

import numpy as np

from tokenlab.engine.llama import Engine, EngineError


def max_parallel_sequences() -> int:
    """The most sequences one llama.cpp context can hold (llama_max_parallel_sequences)."""
    import llama_cpp

    return int(llama_cpp.llama_max_parallel_sequences())


class BatchDecoder:
    """`n_seq` sequences sharing a decoded prefix, advanced together one token per llama_decode.

    Use it as a context manager (or call `close()`): the context and batch it creates are freed
    deterministically, never left to the garbage collector. `n_cells` is the KV cache size in tokens:
    the prefix once plus every token decoded after it, over all sequences.
    """

    def __init__(self, engine: Engine, *, n_seq: int, n_cells: int) -> None:
        import llama_cpp

        self._ctx = None
        self._batch_live = False
        if n_seq < 1:
            raise ValueError(f"n_seq must be at least 1, got {n_seq}")
        limit = max_parallel_sequences()
        if n_seq > limit:
            raise EngineError(
                f"{n_seq} parallel sequences exceed llama.cpp's limit of {limit}; use fewer rollouts at once"
            )
        if n_cells < 1:
            raise ValueError(f"n_cells must be at least 1, got {n_cells}")
        llama = engine.llama
        if llama is None:
            raise EngineError("the engine is closed; load the model again")
        self._lib = llama_cpp
        self.engine = engine
        self.n_seq = int(n_seq)
        self.n_vocab = engine.n_vocab
        # Mirror the Engine's own context (threads, attention and KV types, RoPE settings), so the
        # prefix is computed the way the Engine computes it; change only what parallel decoding needs.
        params = llama_cpp.llama_context_params.from_buffer_copy(llama.context_params)
        self._prefix_chunk = max(1, min(int(params.n_batch), int(n_cells)))
        params.n_batch = max(self._prefix_chunk, self.n_seq)
        params.n_ubatch = params.n_batch  # one step of n_seq tokens is one physical batch
        # llama.cpp caps n_batch at n_ctx and then asserts it can output n_seq rows: keep n_ctx >= n_batch
        params.n_ctx = max(int(n_cells), int(params.n_batch))
        params.n_seq_max = self.n_seq
        params.kv_unified = True  # the shared prefix is stored once, not once per sequence
        params.n_threads = engine.n_threads
        params.n_threads_batch = engine.n_threads
        self._ctx = llama_cpp.llama_init_from_model(llama._model.model, params)
        if not self._ctx:
            raise EngineError(
                f"llama.cpp could not create a context for {self.n_seq} sequences and {n_cells} tokens "
                "(out of memory?); use fewer or shorter rollouts"
            )
        self.n_cells = int(llama_cpp.llama_n_ctx(self._ctx))
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._capacity = int(params.n_batch)
        self._batch = llama_cpp.llama_batch_init(self._capacity, 0, 1)
        self._batch_live = True
        # numpy views of the batch's arrays: filled in place, no per-entry ctypes calls for token/pos
        self._tokens = np.ctypeslib.as_array(self._batch.token, shape=(self._capacity,))
        self._positions = np.ctypeslib.as_array(self._batch.pos, shape=(self._capacity,))
        self._n_seq_ids = np.ctypeslib.as_array(self._batch.n_seq_id, shape=(self._capacity,))
        self._logit_flags = np.ctypeslib.as_array(self._batch.logits, shape=(self._capacity,))
        self._seq_id_slots = [self._batch.seq_id[i] for i in range(self._capacity)]
        self._n_seq_ids[:] = 1
        self.prefix_len = 0
        """Tokens of the shared prefix in the cache."""
        self.lengths = [0] * self.n_seq
        """Tokens each sequence holds (prefix included)."""
        self.decoded_tokens = 0
        """Batch entries passed to llama_decode by this decoder (each prefix token counts once)."""
        self.decode_calls = 0

    # -- lifetime ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Free the batch and the context (the model stays with the Engine); safe to call twice."""
        if self._batch_live:
            self._lib.llama_batch_free(self._batch)
            self._batch_live = False
        if self._ctx:
            self._lib.llama_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> BatchDecoder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:  # a safety net only; callers close() deterministically
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown may have torn down llama_cpp
            pass

    # -- decoding ----------------------------------------------------------------------------------

    def decode_prefix(self, tokens: Sequence[int]) -> np.ndarray:
        """Decode `tokens` once, share them with every sequence, return the float32 logits after the last.

        Any previous content of the cache is dropped first.
        """
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise ValueError("cannot decode an empty prefix")
        self._check_open()
        if len(tokens) > self.n_cells:
            raise EngineError(
                f"the prefix is {len(tokens)} tokens but the rollout context holds {self.n_cells}; "
                "shorten the prompt or raise --ctx-size"
            )
        self._lib.llama_memory_clear(self._memory, True)
        self.prefix_len = 0
        self.lengths = [0] * self.n_seq
        # the same chunking as the Engine's own prompt decode, so the prefix logits match it
        for start in range(0, len(tokens), self._prefix_chunk):
            chunk = tokens[start:start + self._prefix_chunk]
            count = len(chunk)
            self._tokens[:count] = chunk
            self._positions[:count] = np.arange(start, start + count)
            self._logit_flags[:count] = 0
            for i in range(count):
                self._seq_id_slots[i][0] = 0
            if start + count == len(tokens):
                self._logit_flags[count - 1] = 1
            self._decode(count)
        for seq in range(1, self.n_seq):
            self._lib.llama_memory_seq_cp(self._memory, 0, seq, -1, -1)
        self.prefix_len = len(tokens)
        self.lengths = [self.prefix_len] * self.n_seq
        return self._row(-1, copy=True)  # -1: the last output, the prefix's last token

    def rewind(self) -> None:
        """Drop every sequence's tokens after the shared prefix (the prefix stays decoded)."""
        self._check_open()
        if not self.prefix_len:
            raise EngineError("no prefix decoded yet; call decode_prefix first")
        self._lib.llama_memory_seq_rm(self._memory, -1, self.prefix_len, -1)
        self.lengths = [self.prefix_len] * self.n_seq

    def fork(self, source: int, target: int) -> None:
        """Make sequence `target` a copy of sequence `source` (its cells are shared, not recomputed)."""
        self._check_open()
        for seq in (source, target):
            if not 0 <= seq < self.n_seq:
                raise ValueError(f"sequence id {seq} is outside 0..{self.n_seq - 1}")
        if source == target:
            return
        self._lib.llama_memory_seq_rm(self._memory, target, -1, -1)
        self._lib.llama_memory_seq_cp(self._memory, source, target, -1, -1)
        self.lengths[target] = self.lengths[source]

    def step(self, seq_ids: Sequence[int], tokens: Sequence[int]) -> np.ndarray:
        """Append tokens[i] to sequence seq_ids[i] for every i in one llama_decode; one logits row each.

        Returns a fresh float32 (len(seq_ids), n_vocab) array: row i follows seq_ids[i]'s new token.
        """
        count = len(seq_ids)
        if count != len(tokens):
            raise ValueError(f"{count} sequence ids but {len(tokens)} tokens")
        if not 0 < count <= self.n_seq:
            raise ValueError(f"step needs 1..{self.n_seq} sequences, got {count}")
        self._check_open()
        if not self.prefix_len:
            raise EngineError("no prefix decoded yet; call decode_prefix first")
        if len(set(seq_ids)) != count:
            raise ValueError("a sequence id appears twice in one step")
        for i, seq in enumerate(seq_ids):
            if not 0 <= seq < self.n_seq:
                raise ValueError(f"sequence id {seq} is outside 0..{self.n_seq - 1}")
            self._seq_id_slots[i][0] = seq
            self._positions[i] = self.lengths[seq]
        self._tokens[:count] = tokens
        self._logit_flags[:count] = 1
        self._decode(count)
        for seq in seq_ids:
            self.lengths[seq] += 1
        rows = np.empty((count, self.n_vocab), dtype=np.float32)
        for i in range(count):
            rows[i] = self._row(i, copy=False)
        return rows

    # -- internals ---------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if not self._ctx:
            raise EngineError("the batch decoder is closed")

    def _decode(self, count: int) -> None:
        self._batch.n_tokens = count
        status = int(self._lib.llama_decode(self._ctx, self._batch))
        if status == 1:
            raise EngineError(
                f"the rollout context of {self.n_cells} tokens is full; use fewer or shorter rollouts"
            )
        if status != 0:
            raise EngineError(f"llama.cpp failed to decode a batch of {count} tokens (status {status})")
        self.decoded_tokens += count
        self.decode_calls += 1

    def _row(self, index: int, *, copy: bool) -> np.ndarray:
        pointer = self._lib.llama_get_logits_ith(self._ctx, index)
        if not pointer:
            raise EngineError(f"llama.cpp has no logits for batch entry {index}")
        row = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))
        return row.copy() if copy else row


__all__ = ["BatchDecoder", "max_parallel_sequences"]
