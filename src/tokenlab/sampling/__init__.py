"""tokenlab.sampling: raw logits + token history in, a staged sampler pipeline out.

Pure numpy; usable on any logits row::

    from tokenlab.sampling import Pipeline, SamplerParams
    result = Pipeline(SamplerParams(top_k=40, top_p=0.95)).run(logits, history=token_ids)
    token = result.draw(np.random.default_rng(0))

The catalogue, with the semantics of the project each knob is named after: llama.cpp's penalties,
dry, top_n_sigma, top_k, typical_p, top_p, min_p, xtc, temperature (with dynamic temperature),
mirostat_v1, mirostat_v2 and adaptive_p; transformers' epsilon, eta, top_h and no_repeat_ngram;
text-generation-webui's top_a and smoothing; KoboldCpp's tail_free; the p-less paper's p_less;
tokenlab's scaled_penalties and temperature schedule; and a KGW watermark (`watermark.py`, with the
z-test that detects it).  `DEFAULT_ORDER` holds them all in llama.cpp's
order; a stage whose knobs are off is dropped when the Pipeline is built, so the defaults run exactly
llama.cpp's default chain.  `order_preset` and `BUILTIN_PRESETS` name common set-ups.

A run is a pure function of its inputs: stochastic stages draw from the `rng` passed to `run`,
stateful ones read the `state` mapping that the previous step's `PipelineResult.next_state(token)`
returned, and schedules read `step_index`; so the lab can rewind and branch by keeping old states.

Design: each stage is a small class registered by name (`stages.py`, `filters.py`, `history.py`,
`mirostat.py`, `shaping.py`, `watermark.py`) that maps `Candidates` to `Candidates`; candidates are dense (the row by token id,
-inf = removed) until a cut such as top-k makes them sparse (ids + float64 logits, sorted by
descending logit, ties by ascending id), after which every stage touches only the survivors.
logit_bias, ban and the history stages edit one private float64 copy of the row in place (earlier
reports rebuild their own view on demand).  Degenerate rows (NaN, +-inf, nothing finite) are
described in `pipeline.py`.  On a 262,144-token float32 row the default chain takes ~0.16 ms, every
stage at once ~1 ms (2,000 tokens of history), and `raw_stats` ~0.4 ms.
"""

from __future__ import annotations

from tokenlab.sampling.candidates import Candidates, softmax
from tokenlab.sampling.history import DRY_DEFAULT_BREAKERS, dry_breaker_sequences
from tokenlab.sampling.mirostat import MIROSTAT_MU
from tokenlab.sampling.params import (
    DEFAULT_ORDER,
    FIELD_RANGES,
    STAGE_NAMES,
    FieldRange,
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
from tokenlab.sampling.presets import BUILTIN_PRESETS, ORDER_PRESETS, order_preset
from tokenlab.sampling.stages import (
    EMPTY_STATE,
    STAGES,
    TEMPERATURE_CURVES,
    Cutoff,
    Stage,
    StageOutcome,
    StepContext,
    register_stage,
    scheduled_temperature,
)
from tokenlab.sampling.stats import RawStats, raw_stats, truncated_raw_stats

__all__ = [
    "BUILTIN_PRESETS",
    "DEFAULT_ORDER",
    "DRY_DEFAULT_BREAKERS",
    "EMPTY_STATE",
    "FIELD_RANGES",
    "MIROSTAT_MU",
    "ORDER_PRESETS",
    "REMOVED_BY_INPUT",
    "STAGES",
    "STAGE_NAMES",
    "TEMPERATURE_CURVES",
    "Candidates",
    "Cutoff",
    "FieldRange",
    "Pipeline",
    "PipelineResult",
    "RawStats",
    "SamplerParams",
    "Stage",
    "StageOutcome",
    "StageReport",
    "StepContext",
    "canonical_stage_name",
    "distribution",
    "dry_breaker_sequences",
    "order_preset",
    "parse_samplers",
    "raw_stats",
    "truncated_raw_stats",
    "register_stage",
    "scheduled_temperature",
    "softmax",
]
