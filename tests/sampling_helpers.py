"""Small helpers shared by the sampler tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from tokenlab.sampling import Pipeline, PipelineResult, SamplerParams


def softmax(values: list[float]) -> np.ndarray:
    """Reference softmax in float64."""
    array = np.asarray(values, dtype=np.float64)
    weights = np.exp(array - array.max())
    return weights / weights.sum()


def only(
    stage: str, logits: list[float], history: tuple[int, ...] = (), **params: Any
) -> PipelineResult:
    """Run a pipeline with just `stage` enabled (logit_bias/ban still run when given)."""
    return Pipeline(SamplerParams(samplers=(stage,), **params)).run(np.array(logits), history)


def survivors(result: PipelineResult) -> list[int]:
    """Final ids as a plain list."""
    return [int(i) for i in result.final_ids]
