"""llama.cpp runtime: model files and catalogue, tokenizing, decoding with KV-prefix reuse, logits."""

from __future__ import annotations

from tokenlab.engine.llama import Engine, EngineError, EngineOptions
from tokenlab.engine.text import Utf8Stream, escape_piece

__all__ = ["Engine", "EngineError", "EngineOptions", "Utf8Stream", "escape_piece"]
