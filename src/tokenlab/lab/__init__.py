"""A generation session: the loop that turns logits into recorded steps, with branching and rewinds."""

from __future__ import annotations

from tokenlab.lab.generation import (
    STOP_CONTEXT_FULL,
    STOP_EOS,
    STOP_MAX_TOKENS,
    Generation,
)
from tokenlab.lab.step import DEFAULT_TOP_N, Candidate, Frontier, Step

__all__ = [
    "DEFAULT_TOP_N",
    "STOP_CONTEXT_FULL",
    "STOP_EOS",
    "STOP_MAX_TOKENS",
    "Candidate",
    "Frontier",
    "Generation",
    "Step",
]
