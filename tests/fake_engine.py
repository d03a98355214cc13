"""A tiny deterministic stand-in for the llama.cpp engine, for pixel snapshots only.

Every flow it drives is also covered against the real model in test_tui.py; snapshots need content that
does not depend on a model's weights or a machine's float rounding.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

WORDS = (
    "<eos>", " the", " sea", " light", " keeper", " walked", " along", " cliff", " storm", " night", ",", ".",
    "\n", " a", " old", " lamp", " waves", " quiet", " and", " to", " of", " ship", " far", " bright", " cold",
    " wind", " stone", " stairs", " he", " she", " watched", " every", " morning", " fog", " came", " in",
)


class FakeEngine:
    """A bigram-ish model over a few words: the logits depend only on the last token, deterministically."""

    name = "fake-model"
    has_chat_template = False
    eos_id = 0

    def __init__(self, n_ctx: int = 512) -> None:
        self.n_vocab = len(WORDS)
        self.n_ctx = n_ctx
        self.tokens: list[int] = []
        self.decoded_tokens = 0

    def evaluate(self, tokens: Sequence[int]) -> np.ndarray:
        shared = 0
        while shared < min(len(tokens), len(self.tokens)) and tokens[shared] == self.tokens[shared]:
            shared += 1
        self.decoded_tokens += max(1, len(tokens) - shared)
        self.tokens = list(tokens)
        rng = np.random.default_rng(zlib.crc32(bytes([tokens[-1] % 256, len(tokens) % 7])))
        logits = rng.normal(0.0, 2.5, self.n_vocab).astype(np.float32)
        logits[0] -= 6.0  # end-of-sequence is unlikely
        return logits

    def is_eog(self, token_id: int) -> bool:
        return token_id == 0

    def piece(self, token_id: int) -> bytes:
        return WORDS[token_id].encode()

    def token_text(self, token_id: int) -> str:
        return WORDS[token_id]

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]:
        ids = [WORDS.index(" " + word) if " " + word in WORDS else 1 for word in text.split()]
        return ids or [1]

    def format_prompt(self, prompt: str, *, chat: bool | None = None) -> list[int]:
        return self.tokenize(prompt)

    def find_token(self, text: str) -> int:
        if text not in WORDS:
            raise ValueError(f"{text!r} is not one token")
        return WORDS.index(text)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return "".join(WORDS[t] for t in token_ids)

    def close(self) -> None:
        pass
