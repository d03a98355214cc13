"""Hard constraints ("hard islands"): the grammar stage and what it asks of a constraint object.

The pipeline stays pure numpy: it never parses a grammar.  A caller that owns a grammar engine (tokenlab's
own lives in `tokenlab.engine.grammar`, on llama.cpp's grammar sampler) passes `Pipeline.run` an object
with an `allowed(n_vocab)` method returning a boolean mask over the vocabulary for *this* step, the way the
history stages get their token history.  The stage keeps exactly the allowed tokens and reports the rest
as removed by "grammar".  It runs right after logit_bias and ban, before every ordered stage, as llama.cpp
applies a grammar to the whole candidate set before its chain (a hard constraint cannot be left out of an
order, and a cut that ran first could leave no allowed token).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from tokenlab.sampling.candidates import Candidates
from tokenlab.sampling.stages import Stage, StageOutcome, StepContext, register_stage

if TYPE_CHECKING:
    from tokenlab.sampling.params import SamplerParams

CONSTRAINT_FIELDS: tuple[str, ...] = ("grammar", "regex", "json_schema")
"""The SamplerParams fields that hold a constraint's source text (at most one is set)."""


@runtime_checkable
class TokenConstraint(Protocol):
    """What the grammar stage asks of a constraint: which tokens may come next at this step."""

    def allowed(self, n_vocab: int) -> np.ndarray:
        """A boolean array of length `n_vocab`: True where the token may come next."""


class AllowedTokens:
    """A fixed constraint: a boolean mask over the vocabulary, or the ids it allows."""

    def __init__(self, allowed: np.ndarray | list[int] | tuple[int, ...], n_vocab: int | None = None) -> None:
        array = np.asarray(allowed)
        if array.dtype == bool:
            self.mask = array.copy()
        else:
            if n_vocab is None:
                raise ValueError("AllowedTokens from ids needs n_vocab")
            self.mask = np.zeros(n_vocab, dtype=bool)
            self.mask[array.astype(np.int64)] = True

    def allowed(self, n_vocab: int) -> np.ndarray:
        """The mask (ValueError when it does not match the vocabulary)."""
        if self.mask.shape[0] != n_vocab:
            raise ValueError(f"the constraint's mask covers {self.mask.shape[0]} tokens, the row {n_vocab}")
        return self.mask


def check_constraint(grammar: object, regex: object, json_schema: object) -> tuple[str | None, str | None, str | None]:
    """Validated (grammar, regex, json_schema): each None or non-empty text, at most one of them set."""
    checked: list[str | None] = []
    for name, value in zip(CONSTRAINT_FIELDS, (grammar, regex, json_schema), strict=True):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} must be text or None, got {type(value).__name__}")
        if isinstance(value, str) and not value.strip():
            raise ValueError(f"{name} is empty; give the constraint's text, or None for no constraint")
        checked.append(value)
    given = [name for name, value in zip(CONSTRAINT_FIELDS, checked, strict=True) if value is not None]
    if len(given) > 1:
        raise ValueError(f"only one constraint at a time: {' and '.join(given)} are both set")
    return checked[0], checked[1], checked[2]


def constraint_of(params: SamplerParams) -> tuple[str, str] | None:
    """(kind, source text) of the constraint `params` carries ("grammar", "regex" or "json_schema"), or None."""
    for name in CONSTRAINT_FIELDS:
        value = getattr(params, name)
        if value is not None:
            return name, value
    return None


@register_stage
class Grammar(Stage):
    """Keep only the tokens the step's constraint allows (a grammar, a regex or a JSON schema)."""

    name = "grammar"
    orderable = False

    def __init__(self, kind: str = "grammar") -> None:
        self.kind = kind

    @classmethod
    def from_params(cls, params: SamplerParams) -> Stage | None:
        found = constraint_of(params)
        return cls(found[0]) if found is not None else None

    def mask(self, context: StepContext) -> np.ndarray:
        """The allowed-token mask for this step (ValueError when the caller passed no constraint)."""
        if context.constraint is None:
            raise ValueError(
                f"a {self.kind.replace('_', ' ')} constraint needs a constraint object for each step: "
                "pass Pipeline.run(..., constraint=...) (tokenlab.engine.grammar builds one)"
            )
        mask = np.asarray(context.constraint.allowed(context.n_vocab), dtype=bool)
        if mask.shape != (context.n_vocab,):
            raise ValueError(f"the constraint's mask has shape {mask.shape}, expected ({context.n_vocab},)")
        return mask

    def outcome(self, candidates: Candidates, context: StepContext) -> StageOutcome:
        mask = self.mask(context)
        if candidates.ids is not None:
            kept = candidates.keep_where(mask[candidates.ids])
        else:
            kept = candidates.keep_where(mask)
        return StageOutcome(kept, None, {"allowed": int(np.count_nonzero(mask))})

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind}
