"""A remote engine: the next-token distribution from a server's OpenAI-compatible completions API.

Every step is one `POST /v1/completions` with `max_tokens: 1` and `logprobs: K`: the server's top K
log-probabilities of the next token, computed from the model's raw logits. The row handed to the
sampler holds those K log-probabilities at their token ids and -inf everywhere else, and
`last_rest_mass` records the probability of the rest of the vocabulary (1 - the K probabilities), so
the numpy pipeline samples among the K candidates and everything shown can say what it does not see.

Three servers are known by their endpoints: llama.cpp's `llama-server` (token ids in and out, pieces
as bytes, `/tokenize`, `/detokenize`, `/apply-template`), vLLM (token ids in, `token_id:N` keys out,
`/tokenize`, `/detokenize`) and llama-cpp-python's `llama_cpp.server` (`/extras/tokenize`,
`/extras/detokenize`; it takes the prompt as text and names candidates by their text, which tokenlab
maps back to ids through the server's tokenizer). Only the standard library talks HTTP: every request
has a timeout and a bounded retry, and every failure is one line.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np

from tokenlab.engine.llama import EngineError
from tokenlab.engine.text import escape_piece

DEFAULT_TOP_K = 20
"""Candidates asked per step: vLLM's default `--max-logprobs` and OpenAI's own ceiling."""
MAX_TOP_K = 1000
"""The most candidates tokenlab asks for: each costs ~60 bytes of JSON per step, and past a few hundred
the rest mass of a real model is below what a float32 log-probability can show."""
UNKNOWN_VOCAB_SIZE = 262_144
"""Row length when the server does not say its vocabulary size (the largest common vocabulary, Gemma 3's)."""

LLAMA_SERVER = "llama-server"
VLLM = "vllm"
LLAMA_CPP_PYTHON = "llama-cpp-python"

_EOG_TEXTS = (
    "<|endoftext|>", "<|im_end|>", "</s>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<eos>",
    "<|end|>", "<|eom_id|>", "<|return|>",
)
"""End-of-generation tokens of common vocabularies, looked up through the server's tokenizer."""


class RemoteError(EngineError):
    """A server that is down, slow, refuses a request or answers something unreadable (one line)."""


@dataclass(frozen=True)
class RemoteOptions:
    """How to talk to the server."""

    model: str | None = None
    """The server's model name; None takes the first one it lists."""
    top_k: int = DEFAULT_TOP_K
    """Log-probabilities asked per step (the server's top K)."""
    timeout: float = 60.0
    """Seconds to wait for one answer."""
    retries: int = 2
    """Extra attempts after a connection failure, a timeout or a 502/503/504."""
    n_ctx: int = 2048
    """Context size to assume when the server does not report its own."""
    api_key: str | None = None
    """Bearer token for servers started with --api-key (default: $TOKENLAB_API_KEY)."""

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise ValueError(f"logprobs must be in 1..{MAX_TOP_K}, got {self.top_k}")
        if not self.timeout > 0:
            raise ValueError(f"engine-timeout must be positive, got {self.timeout}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")


@dataclass(frozen=True)
class RemoteCandidate:
    """One entry of a server's top-K answer: a token id or only its text, and its log-probability."""

    id: int | None
    text: str | None
    piece: bytes | None
    logprob: float


def base_url(url: str) -> str:
    """The server's root URL from what the user typed (a trailing / or /v1 is dropped)."""
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise EngineError(f"--engine {url!r}: expected the server's URL, e.g. http://localhost:8080")
    path = parsed.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, "", ""))


def parse_completion_logprobs(payload: Any) -> list[RemoteCandidate]:
    """The top-K candidates of the first generated token in a /v1/completions answer.

    Two shapes are read: llama-server's (`logprobs.content[0].top_logprobs`, a list of objects with
    `id`, `token`, `bytes` and `logprob`) and the OpenAI legacy one that vLLM and llama-cpp-python use
    (`logprobs.top_logprobs[0]`, an object from token text, or `token_id:N`, to log-probability).
    ValueError says what is missing.
    """
    if not isinstance(payload, dict):
        raise ValueError("the answer is not a JSON object")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("the answer has no choices")
    logprobs = choices[0].get("logprobs")
    if not isinstance(logprobs, dict):
        raise ValueError("the answer has no logprobs (does the server support them?)")
    candidates: list[RemoteCandidate] = []
    content = logprobs.get("content")
    if isinstance(content, list):
        if not content or not isinstance(content[0], dict) or not isinstance(content[0].get("top_logprobs"), list):
            raise ValueError("logprobs.content holds no top_logprobs")
        for entry in content[0]["top_logprobs"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), int):
                raise ValueError("a top_logprobs entry has no integer id")
            raw_bytes = entry.get("bytes")
            piece = bytes(raw_bytes) if isinstance(raw_bytes, list) else None
            candidates.append(RemoteCandidate(int(entry["id"]), entry.get("token"), piece,
                                              _logprob(entry.get("logprob"))))
    else:
        top = logprobs.get("top_logprobs")
        if not isinstance(top, list) or not top or not isinstance(top[0], dict):
            raise ValueError("logprobs.top_logprobs is missing or empty")
        for key, value in top[0].items():
            token_id = int(key[9:]) if key.startswith("token_id:") and key[9:].isdigit() else None
            candidates.append(RemoteCandidate(token_id, None if token_id is not None else key, None, _logprob(value)))
    if not candidates:
        raise ValueError("the server returned no candidates")
    return candidates


def _logprob(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"a log-probability is not a number: {value!r}")
    logprob = float(value)
    if math.isnan(logprob) or logprob > 1e-3:
        raise ValueError(f"{logprob} is not a log-probability")
    return min(logprob, 0.0)


class RemoteEngine:
    """The Engine role over HTTP: tokenize, evaluate a context, hand back a sparse top-K row.

    `evaluate(tokens)` returns a float32 row of `n_vocab` entries: the server's log-probabilities at its
    top K ids and -inf elsewhere; `last_rest_mass` is the probability of everything else. The server
    keeps its own prompt cache (llama-server `cache_prompt`, vLLM prefix caching, llama-cpp-python's
    prefix reuse), so a step re-reads only the new tokens there.
    """

    remote = True

    def __init__(self, url: str, options: RemoteOptions | None = None) -> None:
        self.options = options or RemoteOptions()
        self.url = base_url(url)
        self.top_k = self.options.top_k
        api_key = self.options.api_key or os.environ.get("TOKENLAB_API_KEY")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.tokens: list[int] = []
        """The context of the last evaluate()."""
        self.last_rest_mass: float | None = None
        """Probability of the tokens outside the last row's top K."""
        self.requests = 0
        """HTTP requests sent (one completion per step, plus tokenizer calls)."""
        self.decode_calls = 0
        """Completion requests (one per step)."""
        self.decoded_tokens = 0
        self.retokenized_steps = 0
        """Steps whose context a text-only server tokenized differently from tokenlab's tokens."""
        self._pieces: dict[int, bytes] = {}
        self._text_ids: dict[str, int | None] = {}
        self._probe()

    # -- talking to the server -----------------------------------------------------------------------

    def _call(self, path: str, payload: Any = None, *, retries: int | None = None) -> Any:
        """One JSON request with a timeout and a bounded retry; RemoteError (one line) on any failure."""
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=data, headers=self._headers,
                                         method="GET" if data is None else "POST")
        attempts = 1 + (self.options.retries if retries is None else retries)
        body = b""
        for attempt in range(attempts):
            last = attempt + 1 == attempts
            try:
                self.requests += 1
                with urllib.request.urlopen(request, timeout=self.options.timeout) as response:
                    body = response.read()
                break
            except urllib.error.HTTPError as exc:
                if exc.code in (502, 503, 504) and not last:
                    time.sleep(0.5 * (attempt + 1))
                    continue
                raise RemoteHTTPError(exc.code, f"the server at {self.url} refused {path}: HTTP {exc.code} "
                                      f"{_error_detail(exc)}") from None
            except (TimeoutError, socket.timeout):
                if not last:
                    continue
                raise RemoteError(f"the server at {self.url} did not answer {path} within "
                                  f"{self.options.timeout:g} s; it may be busy: try again, or raise --engine-timeout") from None
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                    if not last:
                        continue
                    raise RemoteError(f"the server at {self.url} did not answer {path} within "
                                      f"{self.options.timeout:g} s; it may be busy: try again, or raise --engine-timeout") from None
                if not last:
                    time.sleep(0.5 * (attempt + 1))
                    continue
                raise RemoteError(f"cannot reach the server at {self.url} ({_reason(exc.reason)}); "
                                  "is it running? check --engine") from None
            except (http.client.HTTPException, ConnectionError, OSError) as exc:
                if not last:
                    time.sleep(0.5 * (attempt + 1))
                    continue
                raise RemoteError(f"the connection to {self.url} broke during {path} ({_reason(exc)}); "
                                  "is the server still running?") from None
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            preview = body[:60].decode("utf-8", errors="replace").replace("\n", " ")
            raise RemoteError(f"the server at {self.url} answered {path} with something that is not JSON "
                              f"({preview!r}); is --engine an OpenAI-compatible server?") from None

    def _garbage(self, path: str, detail: str) -> RemoteError:
        return RemoteError(f"the server at {self.url} answered {path} with an unexpected shape ({detail}); "
                           "is --engine an OpenAI-compatible completions server?")

    def _probe(self) -> None:
        """Ask the server what it serves, which tokenizer endpoints it has and its vocabulary and context."""
        listing = self._call("/v1/models")
        cards = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(cards, list) or not cards or not all(isinstance(c, dict) and "id" in c for c in cards):
            raise self._garbage("/v1/models", "no model list")
        names = [str(card["id"]) for card in cards]
        wanted = self.options.model
        if wanted is not None and wanted not in names:
            raise RemoteError(f"the server at {self.url} serves {', '.join(names)}, not {wanted!r}; "
                              f"use --model {names[0]} (or leave --model out)")
        card = cards[names.index(wanted)] if wanted is not None else cards[0]
        self.model = str(card["id"])
        meta = card.get("meta") if isinstance(card.get("meta"), dict) else {}
        owner = str(card.get("owned_by", ""))
        self.n_vocab_known = isinstance(meta.get("n_vocab"), int)
        self.n_vocab: int = int(meta["n_vocab"]) if self.n_vocab_known else UNKNOWN_VOCAB_SIZE
        n_ctx = meta.get("n_ctx") or card.get("max_model_len")
        self.n_ctx: int = int(n_ctx) if isinstance(n_ctx, int) and n_ctx > 0 else self.options.n_ctx
        self.chat_template: str | None = None
        if owner == "llamacpp":
            self.flavour = LLAMA_SERVER
            props = self._try("/props")
            if isinstance(props, dict) and isinstance(props.get("chat_template"), str):
                self.chat_template = props["chat_template"] or None
        elif owner == "vllm":
            self.flavour = VLLM
            self.chat_template = "(the server's)"
        elif isinstance(self._try("/extras/tokenize", {"input": "a"}), dict):
            self.flavour = LLAMA_CPP_PYTHON
        elif isinstance(self._try("/tokenize", {"content": "a"}), dict):
            self.flavour = LLAMA_SERVER
        elif isinstance(self._try("/tokenize", {"model": self.model, "prompt": "a"}), dict):
            self.flavour = VLLM
        else:
            raise RemoteError(f"the server at {self.url} has no tokenize endpoint (/tokenize or /extras/tokenize); "
                              "tokenlab needs the server's token ids: use llama-server, vLLM or llama_cpp.server")
        self._bos_prefix = self._tokenize_raw("", add_bos=True) if self.flavour == LLAMA_CPP_PYTHON else []
        eog: set[int] = set()
        for text in _EOG_TEXTS:
            ids = self._tokenize_raw(text, add_bos=False)
            if len(ids) == 1:
                eog.add(ids[0])
        self._eog = frozenset(eog)

    def _try(self, path: str, payload: Any = None) -> Any:
        """The answer of an optional endpoint, or None when the server has no such endpoint."""
        try:
            return self._call(path, payload, retries=0)
        except RemoteHTTPError:
            return None

    # -- model facts ----------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The server's model, where it runs and what the distribution is (shown and exported everywhere)."""
        host = urllib.parse.urlsplit(self.url).netloc
        # llama-cpp-python names its model by the GGUF's path: the file name says enough
        model = self.model.rsplit("/", 1)[-1] if self.model.endswith(".gguf") else self.model
        return f"{model} @ {host} (server top {self.top_k} + rest)"

    @property
    def distribution_note(self) -> str:
        """One line saying where the distribution comes from."""
        note = (f"distribution: the server's top {self.top_k} log-probabilities per step plus the mass of the "
                f"rest of the vocabulary; the sampler draws among those {self.top_k}")
        if self.retokenized_steps:
            note += (f"; this server takes text only and tokenized the context of {self.retokenized_steps} "
                     "step(s) differently")
        return note

    @property
    def has_chat_template(self) -> bool:
        """Whether the server can wrap a prompt in the model's chat template."""
        return bool(self.chat_template)

    def is_eog(self, token_id: int) -> bool:
        """Whether the token ends generation (ids of the usual end tokens, found through the server's tokenizer)."""
        return int(token_id) in self._eog

    @property
    def eos_id(self) -> int:
        """An end-of-generation id, or -1 when none is known."""
        return min(self._eog) if self._eog else -1

    # -- text -----------------------------------------------------------------------------------------

    def _tokenize_raw(self, text: str, *, add_bos: bool) -> list[int]:
        if self.flavour == LLAMA_SERVER:
            answer = self._call("/tokenize", {"content": text, "add_special": add_bos, "parse_special": True,
                                              "with_pieces": True})
            entries = answer.get("tokens") if isinstance(answer, dict) else None
            if not isinstance(entries, list):
                raise self._garbage("/tokenize", "no tokens")
            ids = []
            for entry in entries:
                if isinstance(entry, dict) and isinstance(entry.get("id"), int):
                    piece = entry.get("piece")
                    if isinstance(piece, str):
                        self._pieces.setdefault(entry["id"], piece.encode("utf-8"))
                    elif isinstance(piece, list):
                        self._pieces.setdefault(entry["id"], bytes(piece))
                    ids.append(int(entry["id"]))
                elif isinstance(entry, int):
                    ids.append(entry)
                else:
                    raise self._garbage("/tokenize", "a token is not an id")
            return ids
        if self.flavour == VLLM:
            answer = self._call("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": add_bos})
        else:
            answer = self._call("/extras/tokenize", {"model": self.model, "input": text})
        ids = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
            raise self._garbage("/tokenize", "no token ids")
        if self.flavour == LLAMA_CPP_PYTHON and not add_bos:
            prefix = getattr(self, "_bos_prefix", [])
            if prefix and ids[: len(prefix)] == prefix:
                ids = ids[len(prefix):]
        return [int(t) for t in ids]

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]:
        """Token ids of `text` from the server's tokenizer (with BOS when the model wants one and `add_bos`)."""
        return self._tokenize_raw(text, add_bos=add_bos)

    def piece(self, token_id: int) -> bytes:
        """The bytes of one token (from the server's answers, or its detokenize endpoint), cached."""
        token_id = int(token_id)
        cached = self._pieces.get(token_id)
        if cached is not None:
            return cached
        if not 0 <= token_id < self.n_vocab:
            raise ValueError(f"token id {token_id} is outside the vocabulary (0..{self.n_vocab - 1})")
        try:
            data = self._detokenize_raw([token_id]).encode("utf-8")
        except RemoteHTTPError:
            data = "\ufffd".encode()  # llama-cpp-python cannot decode a lone partial UTF-8 byte
        self._pieces[token_id] = data
        return data

    def _detokenize_raw(self, token_ids: Sequence[int]) -> str:
        ids = [int(t) for t in token_ids]
        if self.flavour == LLAMA_SERVER:
            answer, key = self._call("/detokenize", {"tokens": ids}), "content"
        elif self.flavour == VLLM:
            answer, key = self._call("/detokenize", {"model": self.model, "tokens": ids}), "prompt"
        else:
            answer, key = self._call("/extras/detokenize", {"model": self.model, "tokens": ids}), "text"
        text = answer.get(key) if isinstance(answer, dict) else None
        if not isinstance(text, str):
            raise self._garbage("/detokenize", f"no {key!r}")
        return text

    def token_text(self, token_id: int) -> str:
        """A token as readable text: invalid UTF-8 bytes shown as \\xNN escapes."""
        return escape_piece(self.piece(token_id))

    def detokenize(self, token_ids: Sequence[int]) -> str:
        """The text of several tokens joined (bytes first, so split characters come out whole)."""
        return b"".join(self.piece(t) for t in token_ids).decode("utf-8", errors="replace")

    def find_token(self, text: str) -> int:
        """The id of the single token spelled `text`; ValueError when it is not exactly one token."""
        ids = self._tokenize_raw(text, add_bos=False)
        if len(ids) != 1:
            raise ValueError(f"{text!r} is {len(ids)} tokens for this model, not one; use #ID to name a token by id")
        return ids[0]

    def format_prompt(self, prompt: str, *, chat: bool | None = None) -> list[int]:
        """Token ids of a prompt, wrapped in the server's chat template when `chat` (default: when it has one)."""
        use_chat = self.has_chat_template if chat is None else chat
        if not use_chat:
            return self.tokenize(prompt)
        messages = [{"role": "user", "content": prompt}]
        if self.flavour == LLAMA_SERVER and self.chat_template:
            answer = self._call("/apply-template", {"messages": messages})
            rendered = answer.get("prompt") if isinstance(answer, dict) else None
            if not isinstance(rendered, str):
                raise self._garbage("/apply-template", "no prompt")
            return self.tokenize(rendered)
        if self.flavour == VLLM:
            answer = self._call("/tokenize", {"model": self.model, "messages": messages, "add_generation_prompt": True})
            ids = answer.get("tokens") if isinstance(answer, dict) else None
            if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
                raise self._garbage("/tokenize", "no token ids")
            return [int(t) for t in ids]
        raise EngineError(f"the server at {self.url} does not expose {self.model}'s chat template; "
                          "run with --raw (and write the template into the prompt if you want it)")

    # -- steps ----------------------------------------------------------------------------------------

    def _step_payload(self, tokens: list[int]) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": self.model, "max_tokens": 1, "temperature": 0.0, "stream": False}
        if self.flavour == LLAMA_SERVER:
            # raw probabilities before any sampler, the prompt cache on, and no early stop at an end token
            payload.update(prompt=tokens, n_probs=self.top_k, post_sampling_probs=False, cache_prompt=True,
                           ignore_eos=True)
        elif self.flavour == VLLM:
            payload.update(prompt=tokens, logprobs=self.top_k, return_tokens_as_token_ids=True, ignore_eos=True)
        else:
            body = tokens[len(self._bos_prefix):] if self._bos_prefix and tokens[: len(self._bos_prefix)] == self._bos_prefix else tokens
            text = self._prompt_text(body)
            # the server tokenizes the text again: a context that is not its canonical tokenization (two
            # newline tokens where it would use one) is seen differently there, so count those steps
            if self._tokenize_raw(text, add_bos=True) != tokens:
                self.retokenized_steps += 1
            payload.update(prompt=text, logprobs=self.top_k)
            if self._eog:
                # it returns no log-probabilities when it stops at an end token; the bias changes only its own pick
                payload["logit_bias"] = {str(t): -100.0 for t in sorted(self._eog)}
        return payload

    def _prompt_text(self, tokens: list[int]) -> str:
        """The context as text, for a server that takes only text (it tokenizes it again)."""
        try:
            return self._detokenize_raw(tokens)
        except RemoteHTTPError:
            return self.detokenize(tokens)

    def _resolve(self, candidate: RemoteCandidate) -> int | None:
        """The id of a candidate the server named by its text only (None when its text is not one token)."""
        if candidate.id is not None:
            return candidate.id
        text = candidate.text or ""
        if text in self._text_ids:
            return self._text_ids[text]
        token_id: int | None = None
        if text:
            ids = self._tokenize_raw(text, add_bos=False)
            token_id = ids[0] if len(ids) == 1 else None
        self._text_ids[text] = token_id
        if token_id is not None:
            self._pieces.setdefault(token_id, text.encode("utf-8"))
        return token_id

    def evaluate(self, tokens: Sequence[int]) -> np.ndarray:
        """The server's top-K log-probabilities after `tokens` as a float32 row (-inf for the unseen ids)."""
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise ValueError("cannot evaluate an empty token sequence")
        if len(tokens) > self.n_ctx:
            raise EngineError(f"{len(tokens)} tokens do not fit the context of {self.n_ctx}; "
                              "shorten the prompt or raise --ctx-size")
        answer = self._call("/v1/completions", self._step_payload(tokens))
        try:
            candidates = parse_completion_logprobs(answer)
        except ValueError as exc:
            raise self._garbage("/v1/completions", str(exc)) from None
        row = np.full(self.n_vocab, -np.inf, dtype=np.float32)
        for candidate in candidates:
            token_id = self._resolve(candidate)
            if token_id is None:
                continue  # a text that is not one token: its mass stays in the rest
            if not 0 <= token_id < self.n_vocab:
                raise self._garbage("/v1/completions", f"token id {token_id} is outside the vocabulary of {self.n_vocab}")
            if candidate.piece is not None:
                self._pieces.setdefault(token_id, candidate.piece)
            row[token_id] = max(row[token_id], candidate.logprob)
        seen = row[np.isfinite(row)].astype(np.float64)
        if seen.size == 0:
            raise self._garbage("/v1/completions", "no candidate could be mapped to a token id")
        self.last_rest_mass = float(min(max(0.0, 1.0 - float(np.exp(seen).sum())), 1.0 - 1e-12))
        self.tokens = tokens
        self.decode_calls += 1
        self.decoded_tokens += 1
        return row

    def append(self, token_id: int) -> np.ndarray:
        """Evaluate the cached context plus one token."""
        return self.evaluate([*self.tokens, int(token_id)])

    def evaluate_rows(self, tokens: Sequence[int], first_row: int, on_row: Callable[[int, np.ndarray], None]) -> None:
        """Call `on_row(i, row)` for every position i >= first_row: one completion request per position."""
        tokens = [int(t) for t in tokens]
        if not 0 <= first_row < len(tokens):
            raise ValueError(f"first_row must be in [0, {len(tokens)}), got {first_row}")
        for position in range(first_row, len(tokens)):
            on_row(position, self.evaluate(tokens[: position + 1]))

    def batch_decoder(self, *, n_seq: int, n_cells: int) -> RemoteBatchDecoder:
        """Rollouts on a server: each sequence steps with its own request (the server's cache shares the prefix)."""
        return RemoteBatchDecoder(self, n_seq=n_seq)

    def reset(self) -> None:
        """Forget the cached context (the server keeps its own cache)."""
        self.tokens = []

    def close(self) -> None:
        """Nothing to free: every request closes its own connection."""


class RemoteHTTPError(RemoteError):
    """The server answered with an HTTP error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RemoteBatchDecoder:
    """The BatchDecoder interface for a remote engine: one request per sequence and step, no real batch."""

    def __init__(self, engine: RemoteEngine, *, n_seq: int) -> None:
        self.engine = engine
        self.n_seq = int(n_seq)
        self.prefix: list[int] = []
        self.sequences: list[list[int]] = [[] for _ in range(self.n_seq)]
        self.decoded_tokens = 0
        self.decode_calls = 0
        self.prefix_rest_mass: float | None = None
        """Rest mass of the row after the prefix (the rollouts' empirical check shows raw probabilities)."""

    def decode_prefix(self, tokens: Sequence[int]) -> np.ndarray:
        """The row after `tokens`, shared by every sequence."""
        row = self.engine.evaluate(tokens)
        self.prefix_rest_mass = self.engine.last_rest_mass
        self.prefix = [int(t) for t in tokens]
        self.rewind()
        self.decoded_tokens += len(self.prefix)
        self.decode_calls += 1
        return row

    def rewind(self) -> None:
        """Every sequence back to the prefix."""
        self.sequences = [list(self.prefix) for _ in range(self.n_seq)]

    def step(self, seq_ids: Sequence[int], tokens: Sequence[int]) -> np.ndarray:
        """Append tokens[i] to sequence seq_ids[i]; one row per sequence, one request each."""
        rows = np.empty((len(seq_ids), self.engine.n_vocab), dtype=np.float32)
        for i, (seq_id, token_id) in enumerate(zip(seq_ids, tokens)):
            self.sequences[seq_id].append(int(token_id))
            rows[i] = self.engine.evaluate(self.sequences[seq_id])
        self.decoded_tokens += len(seq_ids)
        self.decode_calls += len(seq_ids)
        return rows

    def close(self) -> None:
        """Nothing to free."""

    def __enter__(self) -> RemoteBatchDecoder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """The server's own error message, shortened to one line."""
    try:
        body = exc.read().decode("utf-8", errors="replace")
    except OSError:
        body = ""
    detail = body
    try:
        data = json.loads(body)
        error = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(error, dict):
            detail = str(error.get("message") or error.get("detail") or error)
        else:
            detail = str(error)
    except (json.JSONDecodeError, AttributeError):
        pass
    detail = " ".join(detail.split())
    return (detail[:200] + "…") if len(detail) > 200 else (detail or str(exc.reason))


def _reason(reason: object) -> str:
    text = str(getattr(reason, "strerror", None) or reason)
    return " ".join(text.split())[:120]
