"""The knobs of the lab: which sampler parameters can be turned and by how much.

Their bounds are SamplerParams' own (FIELD_RANGES), so a value the command line accepts is one the
knob panel holds, and turning a knob never jumps to another range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tokenlab.sampling import DEFAULT_ORDER, FIELD_RANGES, FieldRange, SamplerParams


@dataclass(frozen=True)
class KnobSpec:
    """One turnable parameter of SamplerParams, with its steps; its bounds are the parameter's own."""

    name: str
    """The SamplerParams field it sets."""
    label: str
    stage: str
    """The pipeline stage it belongs to (o switches it, { } move it); "" for a knob of several stages."""
    fine: float
    coarse: float
    help: str = ""
    optional: bool = False
    """None is a value (shown as "off"); turning it from None starts at `start_from`'s value."""
    start_from: str = ""
    origin: str = "llama.cpp"
    """Whose semantics the knob follows (llama.cpp, transformers, text-generation-webui, tokenlab)."""
    acts_in: tuple[str, ...] = ()
    """The stages it acts in when that is not just `stage` (the knob is off when all of them are)."""
    bounds: FieldRange | None = None
    """Bounds for a field that FIELD_RANGES does not hold (a field with a check of its own)."""

    @property
    def range(self) -> FieldRange:
        """The values the parameter accepts: SamplerParams' declaration, shared with the CLI."""
        return self.bounds if self.bounds is not None else FIELD_RANGES[self.name]

    @property
    def integer(self) -> bool:
        """Whether the knob holds whole numbers."""
        return self.range.integer

    @property
    def minimum(self) -> float:
        """The smallest value the knob reaches (-inf when the parameter has no lower bound)."""
        bounds = self.range
        if bounds.low is None:
            return -math.inf
        return bounds.low + self.fine if bounds.low_open else bounds.low

    @property
    def maximum(self) -> float:
        """The largest value the knob reaches (inf when the parameter has no upper bound)."""
        bounds = self.range
        if bounds.high is None:
            return math.inf
        return bounds.high - self.fine if bounds.high_open else bounds.high

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages the knob acts in."""
        return self.acts_in or ((self.stage,) if self.stage else ())

    def clamp(self, value: float) -> float:
        """The value held inside [minimum, maximum] (and rounded for integer knobs)."""
        value = min(self.maximum, max(self.minimum, value))
        if self.integer:
            return int(round(value))
        return round(value, 6)

    def format(self, value: float | None) -> str:
        """The value as the knob panel shows it."""
        if value is None:
            return "off"
        if self.integer:
            return str(int(value))
        if self.fine >= 0.01:
            return f"{value:.2f}"
        return f"{value:.3f}" if self.fine >= 0.001 else f"{value:.4f}"


KNOBS: tuple[KnobSpec, ...] = (
    KnobSpec("temperature", "temperature", "temperature", 0.05, 0.25,
             help="softmax temperature; 0 = greedy"),
    KnobSpec("top_k", "top-k", "top_k", 1, 10,
             help="keep the k most likely tokens; 0 = off"),
    KnobSpec("top_p", "top-p", "top_p", 0.01, 0.05,
             help="keep the smallest set reaching this mass; 1 = off"),
    KnobSpec("min_p", "min-p", "min_p", 0.01, 0.05,
             help="drop tokens below min-p x the top probability; 0 = off"),
    KnobSpec("typical_p", "typical-p", "typical_p", 0.01, 0.05,
             help="locally typical sampling mass; 1 = off"),
    KnobSpec("repeat_penalty", "repeat pen.", "penalties", 0.01, 0.1,
             help="divide/multiply logits of recent tokens; 1 = off"),
    KnobSpec("frequency_penalty", "frequency pen.", "penalties", 0.05, 0.25,
             help="subtract count x this from recent tokens; 0 = off"),
    KnobSpec("presence_penalty", "presence pen.", "penalties", 0.05, 0.25,
             help="subtract this from tokens seen recently; 0 = off"),
    KnobSpec("penalty_last_n", "penalty window", "penalties", 1, 16, acts_in=("penalties", "scaled_penalties"),
             help="recent tokens the penalties see; 0 = off, -1 = all"),
    KnobSpec("min_keep", "min keep", "", 1, 5, acts_in=("top_k", "typical_p", "top_p", "min_p"),
             help="top-k, typical-p, top-p and min-p keep at least this many tokens"),
    KnobSpec("top_n_sigma", "top-n-sigma", "top_n_sigma", 0.1, 0.5,
             help="keep logits >= max - n·sigma; <= 0 = off"),
    KnobSpec("xtc_probability", "xtc prob.", "xtc", 0.05, 0.25,
             help="chance of excluding the top choices; 0 = off"),
    KnobSpec("xtc_threshold", "xtc threshold", "xtc", 0.01, 0.05,
             help="tokens above this probability can be excluded"),
    KnobSpec("dry_multiplier", "dry mult.", "dry", 0.05, 0.25,
             help="DRY repetition penalty; 0 = off"),
    KnobSpec("dry_base", "dry base", "dry", 0.05, 0.25, help="DRY exponential base"),
    KnobSpec("dry_allowed_length", "dry allowed", "dry", 1, 4,
             help="DRY: repeats up to this length are free"),
    KnobSpec("dry_penalty_last_n", "dry window", "dry", 16, 64,
             help="DRY: history scanned; -1 = all"),
    KnobSpec("mirostat", "mirostat", "mirostat_v2", 2, 2, bounds=FieldRange(low=0, high=2, integer=True),
             help="2 = mirostat v2 chooses the token; 0 = off"),
    KnobSpec("mirostat_tau", "mirostat tau", "mirostat_v2", 0.1, 1.0,
             help="mirostat target surprise (bits)"),
    KnobSpec("mirostat_eta", "mirostat eta", "mirostat_v2", 0.01, 0.05,
             help="mirostat learning rate"),
    KnobSpec("dynatemp_range", "dynatemp range", "temperature", 0.05, 0.25,
             help="temperature ± range by entropy; 0 = off"),
    KnobSpec("dynatemp_exponent", "dynatemp exp.", "temperature", 0.1, 0.5,
             help="dynamic temperature exponent"),
    KnobSpec("temperature_end", "temp. end", "temperature", 0.05, 0.25, optional=True, origin="tokenlab",
             start_from="temperature", help="schedule: temperature moves to this; off = none"),
    KnobSpec("temperature_steps", "temp. steps", "temperature", 1, 16, origin="tokenlab",
             help="schedule length in tokens"),
    KnobSpec("epsilon_cutoff", "epsilon", "epsilon", 0.0001, 0.001, origin="transformers",
             help="drop tokens with p < epsilon; 0 = off"),
    KnobSpec("eta_cutoff", "eta", "eta", 0.0001, 0.001, origin="transformers",
             help="entropy-scaled cut-off; 0 = off"),
    KnobSpec("top_a", "top-a", "top_a", 0.01, 0.05, origin="text-generation-webui",
             help="drop tokens with p < top_a·p_max²; 0 = off"),
    KnobSpec("no_repeat_ngram_size", "no-repeat n-gram", "no_repeat_ngram", 1, 2, origin="transformers",
             help="never repeat an n-gram of this size; 0 = off"),
    KnobSpec("scaled_frequency", "scaled freq.", "scaled_penalties", 0.05, 0.25, origin="tokenlab",
             help="frequency penalty as a temperature; 1 = off"),
    KnobSpec("scaled_presence", "scaled pres.", "scaled_penalties", 0.05, 0.25, origin="tokenlab",
             help="presence penalty as a temperature; 1 = off"),
    # the lab turns keys 0..999,999 (the command line takes any key below 2**63)
    KnobSpec("watermark_key", "watermark key", "watermark", 1, 1000, optional=True, origin="tokenlab",
             bounds=FieldRange(low=0, high=999_999, integer=True, optional=True),
             help="KGW watermark key (score detects it); off = none"),
    KnobSpec("watermark_gamma", "wm. gamma", "watermark", 0.01, 0.05, origin="tokenlab",
             bounds=FieldRange(low=0.0, high=1.0, low_open=True, high_open=True),
             help="watermark: green fraction of the vocabulary (Kirchenbauer et al.)"),
    KnobSpec("watermark_delta", "wm. delta", "watermark", 0.1, 0.5, origin="tokenlab",
             help="watermark: added to green logits; 0 = off"),
)
"""Every knob, in the order the knob panel lists them."""

KNOBS_BY_NAME: dict[str, KnobSpec] = {knob.name: knob for knob in KNOBS}
DEFAULTS = SamplerParams()


def knob_value(params: SamplerParams, name: str) -> float:
    """The current value of a knob."""
    return getattr(params, name)


def nudge(params: SamplerParams, name: str, steps: int, *, coarse: bool = False) -> SamplerParams:
    """Params with knob `name` moved by `steps` fine (or coarse) steps, clamped to its bounds."""
    knob = KNOBS_BY_NAME[name]
    delta = (knob.coarse if coarse else knob.fine) * steps
    value = knob_value(params, name)
    if value is None:  # an optional knob that is off starts where its partner is
        value = knob_value(params, knob.start_from) if knob.start_from else knob.minimum
    return params.replace(**{name: knob.clamp(value + delta)})


def move_stage(params: SamplerParams, stage: str, delta: int) -> SamplerParams:
    """Params with `stage` moved `delta` places later (negative: earlier) in the order; no-op if it is off."""
    order = list(params.samplers)
    if stage not in order:
        return params
    index = order.index(stage)
    target = max(0, min(len(order) - 1, index + delta))
    order.insert(target, order.pop(index))
    return params.replace(samplers=tuple(order))


def set_knob(params: SamplerParams, name: str, value: float) -> SamplerParams:
    """Params with knob `name` set to `value`, clamped to its bounds."""
    knob = KNOBS_BY_NAME[name]
    return params.replace(**{name: knob.clamp(value)})


def reset_knob(params: SamplerParams, name: str) -> SamplerParams:
    """Params with knob `name` back at its default."""
    return params.replace(**{name: getattr(DEFAULTS, name)})


def stage_enabled(params: SamplerParams, stage: str) -> bool:
    """Whether a stage is in the pipeline's order."""
    return stage in params.samplers


def knob_enabled(params: SamplerParams, knob: KnobSpec) -> bool:
    """Whether a knob acts: at least one of its stages is in the pipeline's order."""
    return any(stage in params.samplers for stage in knob.stages)


def knob_changed(params: SamplerParams, knob: KnobSpec) -> bool:
    """Whether a knob differs from its default."""
    return knob_value(params, knob.name) != knob_value(DEFAULTS, knob.name)


def toggle_stage(params: SamplerParams, stage: str) -> SamplerParams:
    """Params with `stage` switched off, or back on at its place in the default order."""
    order = list(params.samplers)
    if stage in order:
        order.remove(stage)
        return params.replace(samplers=tuple(order))
    rank = {name: index for index, name in enumerate(DEFAULT_ORDER)}
    position = next(
        (i for i, name in enumerate(order) if rank.get(name, len(rank)) > rank.get(stage, len(rank))),
        len(order),
    )
    order.insert(position, stage)
    return params.replace(samplers=tuple(order))


def with_bias(params: SamplerParams, token_id: int, bias: float) -> SamplerParams:
    """Params with the additive logit bias of one token set (0 removes it)."""
    biases = dict(params.logit_bias)
    if bias == 0:
        biases.pop(token_id, None)
    else:
        biases[token_id] = bias
    return params.replace(logit_bias=biases)


def parse_knob_value(name: str, text: str) -> float | int | None:
    """A typed value for knob `name`, checked against its bounds; a ValueError says what it accepts.

    "off" (or an empty line) is a value for an optional knob.
    """
    knob = KNOBS_BY_NAME[name]
    typed = text.strip()
    if knob.optional and typed.lower() in ("", "off", "none"):
        return None
    kind = "a whole number" if knob.integer else "a number"
    try:
        value: float | int = int(typed) if knob.integer else float(typed)
    except ValueError:
        raise ValueError(f"{knob.label} takes {kind}{' or off' if knob.optional else ''}, got {typed!r}") from None
    checked = knob.range.check(name, value)
    bounds = knob.range
    if knob.integer and bounds.high is not None and value > bounds.high:
        raise ValueError(f"{name} must be an integer in [{int(bounds.low or 0)}, {int(bounds.high)}], got {value}")
    return checked
