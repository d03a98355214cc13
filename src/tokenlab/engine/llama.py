"""The llama.cpp engine: load a GGUF, tokenize, decode with KV-prefix reuse, hand back logits."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import queue
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenlab.engine import kernels
from tokenlab.engine.system import BuildInfo, build_info, cpu_info, flash_attention, without_extra_buffer_types
from tokenlab.engine.text import escape_piece
from tokenlab.errors import TokenlabError


@functools.cache
def cached_build_info() -> BuildInfo:
    """The installed llama.cpp's build facts (they cannot change within a process)."""
    return build_info()


OPENMP_DEFAULTS: dict[str, str] = {"GOMP_SPINCOUNT": "1000"}
"""How long llama.cpp's OpenMP workers spin before they sleep, unless the user says otherwise.

libgomp's own default spins for about 300,000 iterations; when another process wants the same cores
that spinning starves it and both collapse (see the README's benchmark section for the measurements).
"""


def use_openmp_defaults() -> None:
    """Set OPENMP_DEFAULTS in the environment where the user set no OpenMP wait setting of their own.

    It must run before llama_cpp is imported: libgomp reads its settings once, when it is loaded.
    """
    if any(name in os.environ for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")):
        return
    for name, value in OPENMP_DEFAULTS.items():
        os.environ.setdefault(name, value)


use_openmp_defaults()


class EngineError(TokenlabError):
    """A user-facing engine failure; str() is one line saying what was wrong and how to fix it."""


MAX_CTX = 1 << 20
"""Largest context accepted (about a million tokens; beyond any model this runs)."""
MAX_THREADS = 1024
MAX_GPU_LAYERS = 100_000


@dataclass(frozen=True)
class EngineOptions:
    """Runtime options of a loaded model."""

    n_ctx: int = 2048
    """Context size in tokens (prompt plus generated text)."""
    n_threads: int | None = None
    """CPU threads for decoding; None uses every core."""
    n_gpu_layers: int = 0
    """Layers offloaded to the GPU (Metal or CUDA builds); -1 offloads all."""
    n_batch: int = 512
    """Tokens decoded per llama_decode call when evaluating a prompt."""
    extra_buffer_types: bool | None = None
    """llama.cpp's extra CPU buffer types (weight repacking, the AMX matmul); None: off when the build holds AMX code."""
    overlap: bool | None = None
    """Decode the next token in a background thread while the caller records the step just drawn
    (`Engine.prefetch`); None: only where that leaves the decode its cores (GPU offload, or fewer
    threads than usable cores), since on a CPU whose every core decodes it only adds contention."""
    flash_attention: bool | None = False
    """Flash attention: off (llama_cpp.Llama's default), on, or None for llama.cpp's own choice (AUTO:
    on where the device supports it). Off by default: on a CPU it decodes this project's default model
    7-17% faster, but a token's probability then depends on the context size and how the text was
    batched (up to 0.05 apart when scoring a text with 32 and 1,024 cells), where without it the
    numbers agree to the last bit."""

    def __post_init__(self) -> None:
        # upper bounds too: llama.cpp takes 32-bit ints, and ctypes would silently truncate larger ones
        if not 16 <= self.n_ctx <= MAX_CTX:
            raise ValueError(f"ctx_size must be in 16..{MAX_CTX:,}, got {self.n_ctx}")
        if self.n_threads is not None and not 1 <= self.n_threads <= MAX_THREADS:
            raise ValueError(f"threads must be in 1..{MAX_THREADS:,}, got {self.n_threads}")
        if not -1 <= self.n_gpu_layers <= MAX_GPU_LAYERS:
            raise ValueError(f"gpu_layers must be -1 (all) or in 0..{MAX_GPU_LAYERS:,}, got {self.n_gpu_layers}")
        if self.n_batch < 1:
            raise ValueError(f"n_batch must be at least 1, got {self.n_batch}")


_CHAT_PATCH_LOCK = threading.Lock()


class _UnusedChatFormatter:
    """Stands in for llama_cpp's Jinja2ChatFormatter while a model loads (tokenlab renders templates itself)."""

    def __init__(self, **_: object) -> None:
        pass

    def to_chat_handler(self) -> None:
        return None


@contextlib.contextmanager
def _chat_templates_left_alone() -> Iterator[None]:
    """Keep llama_cpp.Llama() from compiling the GGUF's chat templates while it loads the model.

    It compiles every template in the metadata at load time, so a broken or hostile template would
    stop the model loading at all, even with --raw; tokenlab renders the template itself, bounded,
    and only when the prompt is wrapped in it.
    """
    from llama_cpp import llama_chat_format

    with _CHAT_PATCH_LOCK:
        original = llama_chat_format.Jinja2ChatFormatter
        llama_chat_format.Jinja2ChatFormatter = _UnusedChatFormatter  # type: ignore[assignment,misc]
        try:
            yield
        finally:
            llama_chat_format.Jinja2ChatFormatter = original  # type: ignore[misc]


class _Job:
    """One call run by the background decode thread; `done` is set when it returned or raised."""

    __slots__ = ("call", "done", "error", "value")

    def __init__(self, call: Callable[[], int]) -> None:
        self.call = call
        self.done = threading.Event()
        self.value: int | None = None
        self.error: BaseException | None = None


class _DecodeThread:
    """A thread that runs an engine's decodes in the background (llama_decode releases the GIL)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._last: _Job | None = None
        self._thread = threading.Thread(target=self._serve, name="tokenlab-decode", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job.value = job.call()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, which redoes the call
                job.error = exc
            finally:
                job.done.set()

    def submit(self, call: Callable[[], int]) -> _Job:
        """Queue `call`; the thread starts it at the caller's next release of the GIL (its next numpy
        pass or llama.cpp call), which costs less than waiting here for the thread to take it."""
        job = self._last = _Job(call)
        self._jobs.put(job)
        return job

    def wait(self) -> None:
        """Until the last job queued has finished (whoever tracks it: a ^C may have cut that short)."""
        job = self._last
        if job is not None:
            job.done.wait()

    def stop(self) -> None:
        self._jobs.put(None)


def _settle_at_exit(reference: weakref.ref[Engine]) -> None:
    """Wait for an engine's background decode before the interpreter frees what it decodes into."""
    engine = reference()
    if engine is not None:
        engine._stop_background()


class Engine:
    """One llama.cpp model and context: tokenizes, decodes with prefix reuse, returns the last logits row.

    The engine never samples. `evaluate(tokens)` makes the KV cache hold exactly `tokens`, decoding only
    the suffix that differs from what the cache already holds, and returns a float32 copy of the logits
    of the last position.
    """

    remote = False
    """Whether the rows come from a server's top K (tokenlab.engine.remote) rather than the full vocabulary."""
    last_rest_mass: float | None = None
    """Probability outside the last row's tokens: None, since a local row covers the whole vocabulary."""

    def __init__(self, model_path: str | Path, options: EngineOptions | None = None) -> None:
        import llama_cpp  # deferred: importing it loads the shared library

        self.options = options or EngineOptions()
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise EngineError(f"model file not found: {self.model_path}")
        n_threads = self.options.n_threads or os.cpu_count() or 1
        extra_buffer_types = self.options.extra_buffer_types
        if extra_buffer_types is None:
            # AMX tile instructions fault on some VMs that advertise them; set-up never builds them,
            # but a plain `pip install` compiles with -march=native
            extra_buffer_types = not cached_build_info().has_amx
        self.extra_buffer_types = extra_buffer_types
        guard = contextlib.nullcontext() if extra_buffer_types else without_extra_buffer_types()
        try:
            with guard, flash_attention(self.options.flash_attention), _chat_templates_left_alone():
                self._llama = llama_cpp.Llama(
                    model_path=str(self.model_path),
                    n_ctx=self.options.n_ctx,
                    n_batch=min(self.options.n_batch, self.options.n_ctx),
                    n_threads=n_threads,
                    n_threads_batch=n_threads,
                    n_gpu_layers=self.options.n_gpu_layers,
                    logits_all=False,
                    verbose=False,
                )
        except (ValueError, RuntimeError, OSError) as exc:
            if "context" in str(exc).lower():  # the model loaded; its context did not fit in memory
                raise EngineError(
                    f"llama.cpp could not create a context of {self.options.n_ctx:,} tokens for "
                    f"{self.model_path.name} ({exc}); lower --ctx-size"
                ) from None
            raise EngineError(
                f"llama.cpp could not load {self.model_path.name}: {exc} "
                "(is it a complete GGUF file of a supported architecture?)"
            ) from None
        self._lib = llama_cpp
        kernels.install()  # llama.cpp's vectorised exp for the raw statistics of every step
        self._vocab = self._llama._model.vocab
        self.n_vocab: int = int(self._llama.n_vocab())
        # llama.cpp may round the context up; the Llama wrapper's buffers have the size we asked for
        self.n_ctx: int = min(int(self._llama.n_ctx()), self.options.n_ctx)
        self.n_threads = n_threads
        self.metadata: dict[str, str] = dict(self._llama.metadata)
        self.chat_template: str | None = self.metadata.get("tokenizer.chat_template")
        self._pieces: dict[int, bytes] = {}
        self._texts: dict[int, str] = {}
        self._piece_buffer = ctypes.create_string_buffer(256)
        self._views: dict[int | None, np.ndarray] = {}
        self._tokens: list[int] = []
        if self.options.overlap is not None:
            self.overlap = self.options.overlap
        else:
            offloaded = self.options.n_gpu_layers != 0 and cached_build_info().gpu_offload
            self.overlap = offloaded or n_threads < cpu_info().usable_cores
        """Whether `prefetch` decodes in the background (see EngineOptions.overlap)."""
        self._background: _DecodeThread | None = None
        self._pending: tuple[list[int], _Job] | None = None
        """A background decode: the tokens the cache will hold, and its job."""
        self._ready: list[int] | None = None
        """The tokens of a finished background decode while llama.cpp's logits buffer still holds its row."""
        self.decoded_tokens = 0
        """Tokens passed to llama_decode since load (proves prefix reuse in tests and benchmarks)."""
        self.decode_calls = 0

    # -- model facts -------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """A short human name: the GGUF's general.name, or its file name."""
        return self.metadata.get("general.name") or self.model_path.stem

    @property
    def has_chat_template(self) -> bool:
        """Whether the model ships a chat template in its GGUF metadata."""
        return bool(self.chat_template)

    @property
    def llama(self):  # noqa: ANN201 - the llama_cpp.Llama object, for low-level callers and tests
        """The underlying llama_cpp.Llama (tests compare against its own sampler); no decode runs behind it."""
        self._settle(keep=False)
        return self._llama

    @property
    def tokens(self) -> list[int]:
        """Tokens the KV cache holds, position by position (after any background decode)."""
        self._settle()
        return self._tokens

    @property
    def vocab(self):  # noqa: ANN201 - llama.cpp's llama_vocab pointer (the grammar sampler needs it)
        """The model's llama_vocab handle, for llama.cpp's samplers (engine.grammar)."""
        return self._vocab

    def is_eog(self, token_id: int) -> bool:
        """Whether the token ends generation (EOS, EOT, ...)."""
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token_id))

    @property
    def eos_id(self) -> int:
        """The model's end-of-sequence token id."""
        return int(self._llama.token_eos())

    # -- text ------------------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]:
        """Token ids of `text`, with the model's BOS when it wants one (as create_completion does)."""
        ids = self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=special)
        bos = int(self._llama.token_bos())
        if add_bos and bos >= 0 and self._llama._model.add_bos_token():
            ids = [bos, *ids]
        return list(ids)

    def piece(self, token_id: int) -> bytes:
        """The raw bytes of one token (special tokens rendered as their text), cached."""
        cached = self._pieces.get(token_id)
        if cached is not None:
            return cached
        if not 0 <= token_id < self.n_vocab:
            raise ValueError(f"token id {token_id} is outside the vocabulary (0..{self.n_vocab - 1})")
        buffer = self._piece_buffer
        size = self._lib.llama_token_to_piece(self._vocab, token_id, buffer, len(buffer), 0, True)
        if size < 0:
            buffer = ctypes.create_string_buffer(-size)
            size = self._lib.llama_token_to_piece(self._vocab, token_id, buffer, len(buffer), 0, True)
        data = bytes(buffer.raw[:size])
        self._pieces[token_id] = data
        return data

    def token_text(self, token_id: int) -> str:
        """A token as readable text: invalid UTF-8 bytes shown as \\xNN escapes (cached)."""
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = escape_piece(self.piece(token_id))
        return text

    def detokenize(self, token_ids: Sequence[int]) -> str:
        """The text of several tokens joined (bytes first, so split characters come out whole)."""
        return b"".join(self.piece(t) for t in token_ids).decode("utf-8", errors="replace")

    def find_token(self, text: str) -> int:
        """The id of the single token spelled `text`; ValueError when it is not exactly one token."""
        ids = self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if len(ids) != 1:
            raise ValueError(
                f"{text!r} is {len(ids)} tokens for this model, not one; use #ID to name a token by id"
            )
        return int(ids[0])

    def format_prompt(self, prompt: str, *, chat: bool | None = None) -> list[int]:
        """Token ids of a prompt, wrapped in the model's chat template when `chat` (default: when it has one)."""
        use_chat = self.has_chat_template if chat is None else chat
        if not use_chat:
            return self.tokenize(prompt)
        if not self.chat_template:
            raise EngineError(
                f"{self.name} ships no chat template; run it with --raw to feed the prompt as is"
            )
        from tokenlab.engine.chat import render_chat

        bos_id, eos_id = int(self._llama.token_bos()), int(self._llama.token_eos())
        rendered = render_chat(
            self.chat_template,
            [{"role": "user", "content": prompt}],
            eos_token=self.token_text(eos_id) if eos_id >= 0 else "",
            bos_token=self.token_text(bos_id) if bos_id >= 0 else "",
            model_name=self.name,
        )
        return self.tokenize(rendered, add_bos=False)  # the template writes its own BOS, if any

    # -- decoding --------------------------------------------------------------------------------

    def evaluate(self, tokens: Sequence[int], *, copy: bool = True) -> np.ndarray:
        """Make the cache hold exactly `tokens` and return the float32 logits after the last one.

        The logits are a copy; with `copy=False` a zero-copy view of llama.cpp's buffer, valid only
        until the next decode (a lean run that is done with the row before it decodes again).

        Only the suffix that differs from the cached tokens is decoded; the shared prefix stays in the
        KV cache. When `tokens` is entirely cached, the last token is decoded again to get its logits,
        unless a `prefetch` of exactly these tokens decoded them: its logits are returned then.
        """
        # compared and copied as lists (in C); only the suffix to decode is converted to ints
        tokens = tokens if type(tokens) is list else list(tokens)
        self._settle()
        ready, self._ready = self._ready, None
        if ready is None or ready != tokens:  # else a prefetch decoded exactly these
            self._evaluate_now(tokens)
        return self._view(-1).copy() if copy else self._view(-1)

    def prefetch(self, tokens: Sequence[int]) -> bool:
        """Start decoding the last of `tokens` in a background thread, where `overlap` is on.

        For the one-token step of a generation: `tokens` must be the cached tokens plus one. The caller
        goes on (recording the step it just drew) while llama.cpp decodes; the next `evaluate(tokens)`
        returns the logits without decoding again, and every other call that needs the context waits
        for the decode first. A failed background decode is redone, and its error raised, by that next
        call. Returns whether a decode started.
        """
        if not self.overlap:
            return False
        self._settle(keep=False)
        tokens = tokens if type(tokens) is list else list(tokens)
        cached = self._tokens
        position = len(cached)
        if len(tokens) != position + 1 or tokens[:position] != cached or len(tokens) > self.n_ctx:
            return False
        # the batch is made here; the thread only runs llama_decode, which releases the GIL at once
        llama = self._llama
        llama._ctx.kv_cache_seq_rm(-1, position, -1)
        llama._batch.set_batch(batch=[int(tokens[-1])], n_past=position, logits_all=False)
        if self._background is None:
            self._background = _DecodeThread()
            # a run stopped by ^C leaves its last decode running; let it finish before the context is freed
            atexit.register(_settle_at_exit, weakref.ref(self))
        decode, context, batch = self._lib.llama_decode, llama.ctx, llama._batch.batch
        self._pending = (tokens, self._background.submit(lambda: decode(context, batch)))
        return True

    def _settle(self, *, keep: bool = True) -> None:
        """Wait for a background decode and book it; keep its logits for `evaluate` unless the cache changes."""
        pending = self._pending
        if pending is not None:
            tokens, job = pending
            job.done.wait()
            self._pending = None  # only now: a ^C during the wait leaves the decode tracked
            llama = self._llama
            position = len(tokens) - 1
            if job.error is None and job.value == 0:
                llama.input_ids[position] = tokens[-1]
                llama.n_tokens = position + 1
                self._tokens = tokens
                self._ready = tokens
                self.decoded_tokens += 1
                self.decode_calls += 1
            else:  # the next call decodes again, in its own thread, and reports what went wrong
                llama._ctx.kv_cache_seq_rm(-1, position, -1)
                llama.n_tokens = position
        if not keep:
            self._ready = None

    def _evaluate_now(self, tokens: list[int]) -> None:
        if not tokens:
            raise ValueError("cannot evaluate an empty token sequence")
        if len(tokens) > self.n_ctx:
            raise EngineError(
                f"{len(tokens)} tokens do not fit the context of {self.n_ctx}; "
                "shorten the prompt or raise --ctx-size"
            )
        cached = self._tokens
        if len(cached) < len(tokens) and cached == tokens[: len(cached)]:
            shared = len(cached)  # the common case, one more token
        else:
            shared = 0
            limit = min(len(cached), len(tokens))
            while shared < limit and cached[shared] == tokens[shared]:
                shared += 1
        if shared == len(tokens):
            shared -= 1  # the logits of the last position are gone once anything after it was decoded
        suffix = [int(t) for t in tokens[shared:]]
        self._decode_from(shared, suffix)
        self._tokens = cached[:shared] + suffix

    def append(self, token_id: int) -> np.ndarray:
        """Decode one more token after the cached ones and return the new logits."""
        self._settle(keep=False)
        if len(self._tokens) + 1 > self.n_ctx:
            raise EngineError(f"the context of {self.n_ctx} tokens is full")
        self._decode_from(len(self._tokens), [int(token_id)])
        self._tokens.append(int(token_id))
        return self._view(-1).copy()

    def _decode_from(self, position: int, suffix: list[int]) -> None:
        """Drop the cache from `position` on, then decode `suffix` there (logits for its last token only)."""
        llama = self._llama
        # llama_decode directly, as Llama.eval does, without its per-call bookkeeping
        try:
            llama._ctx.kv_cache_seq_rm(-1, position, -1)
            llama.n_tokens = position
            batch_size = llama.n_batch
            for start in range(0, len(suffix), batch_size):
                chunk = suffix[start:start + batch_size]
                llama._batch.set_batch(batch=chunk, n_past=llama.n_tokens, logits_all=False)
                llama._ctx.decode(llama._batch)
                llama.input_ids[llama.n_tokens:llama.n_tokens + len(chunk)] = chunk
                llama.n_tokens += len(chunk)
        except RuntimeError as exc:
            self._tokens = self._tokens[:position]
            llama.n_tokens = position
            raise EngineError(f"llama.cpp failed to decode: {exc}") from None
        self.decoded_tokens += len(suffix)
        self.decode_calls += 1

    def evaluate_rows(
        self,
        tokens: Sequence[int],
        first_row: int,
        on_row: Callable[[int, np.ndarray], None],
    ) -> None:
        """Decode `tokens` and call `on_row(i, logits)` for every position i >= first_row.

        One llama_decode per chunk of n_batch tokens computes the logits of every position in the chunk
        (not one decode per token); `logits` is a float32 view valid only during the call. The cache
        keeps the prefix it shares with `tokens` up to `first_row`; everything from there is decoded.
        """
        tokens = [int(t) for t in tokens]
        self._settle(keep=False)
        if len(tokens) > self.n_ctx:
            raise EngineError(f"{len(tokens)} tokens do not fit the context of {self.n_ctx}")
        if not 0 <= first_row < len(tokens):
            raise ValueError(f"first_row must be in [0, {len(tokens)}), got {first_row}")
        shared = 0
        limit = min(len(self._tokens), first_row)
        while shared < limit and self._tokens[shared] == tokens[shared]:
            shared += 1
        if shared < first_row:
            self._decode_from(shared, tokens[shared:first_row])  # context rows nobody asked for
        llama = self._llama
        batch_size = llama.n_batch
        position = first_row
        self._tokens = tokens[:first_row]
        while position < len(tokens):
            chunk = tokens[position:position + batch_size]
            llama._ctx.kv_cache_seq_rm(-1, position, -1)
            llama._batch.set_batch(batch=chunk, n_past=position, logits_all=True)
            try:
                llama._ctx.decode(llama._batch)
            except RuntimeError as exc:
                raise EngineError(f"llama.cpp failed to decode: {exc}") from None
            llama.n_tokens = position + len(chunk)
            self._tokens.extend(chunk)
            self.decoded_tokens += len(chunk)
            self.decode_calls += 1
            for offset in range(len(chunk)):
                pointer = self._lib.llama_get_logits_ith(llama.ctx, offset)
                on_row(position + offset, np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)))
            position += len(chunk)

    def last_logits(self) -> np.ndarray:
        """A float32 copy of the logits llama.cpp wrote for the last decoded position."""
        return self.logits_view(-1).copy()

    def logits_view(self, index: int) -> np.ndarray:
        """A zero-copy float32 view of the logits of output `index`, valid until the next decode."""
        self._settle(keep=False)
        return self._view(index)

    def _view(self, index: int) -> np.ndarray:
        pointer = self._lib.llama_get_logits_ith(self._llama.ctx, index)
        address = ctypes.cast(pointer, ctypes.c_void_p).value
        view = self._views.get(address)
        if view is None:
            # building a view from a ctypes pointer costs more than the copy of a small row; llama.cpp
            # reuses its output buffer, so the same few addresses come back decode after decode
            if len(self._views) > 64:
                self._views.clear()
            view = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))
            self._views[address] = view
        return view

    def reset(self) -> None:
        """Forget the cached tokens (the next evaluate decodes everything)."""
        self._settle(keep=False)
        self._llama.reset()
        self._llama._ctx.kv_cache_seq_rm(-1, 0, -1)
        self._tokens = []

    def _stop_background(self) -> None:
        """Let the background decode thread finish what it runs (tracked or not), then end it."""
        background = getattr(self, "_background", None)
        if background is not None:
            background.wait()
            background.stop()
            self._background = None

    def __del__(self) -> None:
        # a run stopped by ^C drops the engine with its last decode still running: the context must
        # outlive it (the llama_cpp.Llama is freed right after this, with the engine's attributes)
        self._stop_background()

    def close(self) -> None:
        """Free the model and context."""
        if getattr(self, "_pending", None) is not None:
            self._settle(keep=False)
        self._stop_background()
        llama = getattr(self, "_llama", None)
        if llama is not None:
            llama.close()
            self._llama = None
