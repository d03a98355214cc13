"""tokenlab.sampling: raw logits + token history in, a staged sampler pipeline (llama.cpp) out.

Pure numpy; usable on any logits row::

    from tokenlab.sampling import Pipeline, SamplerParams
    result = Pipeline(SamplerParams(top_k=40, top_p=0.95)).run(logits, history=token_ids)
    token = result.draw(np.random.default_rng(0))

Design: each stage is a small class registered by name (`stages.py`) that maps `Candidates` to
`Candidates`; candidates are dense (the row by token id, -inf = removed) until a cut such as top-k
makes them sparse (ids + float64 logits, sorted by descending logit, ties by ascending id), after
which every stage touches only the survivors.  logit_bias, ban and penalties edit one private
float64 copy of the row in place (earlier reports rebuild their own view on demand), and no-op
stages are dropped when the Pipeline is built.  Degenerate rows (NaN, +-inf, nothing finite) are
described in `pipeline.py`.  On a 262,144-token float32 row the default chain takes ~0.16 ms and
`raw_stats` ~0.4 ms (scripts/bench_sampling.py).
"""

from __future__ import annotations

from tokenlab.sampling.candidates import Candidates, softmax
from tokenlab.sampling.params import (
    DEFAULT_ORDER,
    STAGE_NAMES,
    SamplerParams,
    canonical_stage_name,
    parse_samplers,
)
from tokenlab.sampling.pipeline import (
    REMOVED_BY_INPUT,
    Pipeline,
    PipelineResult,
    StageReport,
    distribution,
)
from tokenlab.sampling.stages import STAGES, Stage, StepContext, register_stage
from tokenlab.sampling.stats import RawStats, raw_stats

__all__ = [
    "DEFAULT_ORDER",
    "REMOVED_BY_INPUT",
    "STAGES",
    "STAGE_NAMES",
    "Candidates",
    "Pipeline",
    "PipelineResult",
    "RawStats",
    "SamplerParams",
    "Stage",
    "StageReport",
    "StepContext",
    "canonical_stage_name",
    "distribution",
    "parse_samplers",
    "raw_stats",
    "register_stage",
    "softmax",
]
