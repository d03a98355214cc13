"""The stage-by-stage view of one step: the distribution after every stage of the pipeline, in order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenlab.sampling import PipelineResult, RawStats

SURVIVORS_SHOWN = 20
"""Survivors listed per stage in the JSON view."""


@dataclass(frozen=True)
class StageRow:
    """What one stage did at this step."""

    name: str
    kept: int
    """Tokens alive after the stage."""
    mass_kept: float
    """Probability mass (under the stage's input distribution) of the tokens it kept."""
    cutoff: str
    """Where it drew its line, in words ("" when it has no threshold)."""
    details: dict[str, Any]
    """The stage's parameters and per-run values (effective temperature, mirostat mu, ...)."""
    probs: tuple[float, ...]
    """Probability after this stage of each tracked candidate (0 when removed)."""
    survivors: tuple[tuple[int, float], ...]
    """The most likely survivors after this stage: (token id, probability)."""


@dataclass(frozen=True)
class StageView:
    """The tracked candidates' probabilities from the raw distribution through every stage."""

    candidate_ids: tuple[int, ...]
    candidate_texts: tuple[str, ...]
    raw_probs: tuple[float, ...]
    n_vocab: int
    rows: tuple[StageRow, ...]
    rest_mass: float | None = None
    """For a server's row: the probability of the vocabulary outside its top K, which no stage sees."""
    seen: int | None = None
    """For a server's row: how many candidates it named (the K the stages work on)."""

    def removed_at(self, column: int) -> str | None:
        """Name of the stage that removed tracked candidate `column`, if any."""
        for row in self.rows:
            if row.probs[column] == 0.0:
                return row.name
        return None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (per-stage survivors and probabilities)."""
        return {
            **({"server_top_k": self.seen, "rest_mass": self.rest_mass} if self.rest_mass is not None else {}),
            "candidates": [{"id": i, "text": t, "prob": p}
                           for i, t, p in zip(self.candidate_ids, self.candidate_texts, self.raw_probs)],
            "stages": [
                {
                    "name": row.name,
                    "kept": row.kept,
                    "mass_kept": row.mass_kept,
                    "cutoff": row.cutoff,
                    "params": {k: v for k, v in row.details.items() if isinstance(v, (int, float, str, bool))},
                    "probs": {str(i): p for i, p in zip(self.candidate_ids, row.probs)},
                    "survivors": [{"id": i, "prob": p} for i, p in row.survivors],
                }
                for row in self.rows
            ],
        }


def _cutoff_text(cutoff: Any) -> str:
    if cutoff is None:
        return ""
    value = f"{cutoff.value:.4g}" if isinstance(cutoff.value, float) else str(cutoff.value)
    return f"{cutoff.rule} ({cutoff.scale} {value})"


def stage_view(
    result: PipelineResult,
    raw: RawStats,
    candidate_ids: Sequence[int],
    token_text: Callable[[int], str],
    *,
    rest_mass: float | None = None,
    seen: int | None = None,
) -> StageView:
    """Follow `candidate_ids` through every stage that ran for this step (a server's row: its `seen` candidates
    and the `rest_mass` outside them)."""
    ids = np.asarray(candidate_ids, dtype=np.int64)
    rows = []
    for report in result.stages:
        probs = tuple(float(report.prob_of(int(token_id))) for token_id in ids)
        top_ids, top_probs = report.top(SURVIVORS_SHOWN)
        rows.append(StageRow(
            name=report.name,
            kept=int(report.n_kept),
            mass_kept=float(report.mass_kept),
            cutoff=_cutoff_text(report.cutoff),
            details=dict(report.params),
            probs=probs,
            survivors=tuple((int(i), float(p)) for i, p in zip(top_ids, top_probs)),
        ))
    return StageView(
        candidate_ids=tuple(int(i) for i in ids),
        candidate_texts=tuple(token_text(int(i)) for i in ids),
        raw_probs=tuple(float(p) for p in raw.probs(ids)),
        n_vocab=result.n_vocab,
        rows=tuple(rows),
        rest_mass=rest_mass,
        seen=seen,
    )
