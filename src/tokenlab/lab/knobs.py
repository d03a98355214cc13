"""The knobs of the lab: which sampler parameters can be turned, by how much, and within which bounds."""

from __future__ import annotations

from dataclasses import dataclass

from tokenlab.sampling import DEFAULT_ORDER, SamplerParams


@dataclass(frozen=True)
class KnobSpec:
    """One turnable parameter of SamplerParams, with its steps and bounds."""

    name: str
    """The SamplerParams field it sets."""
    label: str
    stage: str
    """The pipeline stage it belongs to (switching the stage off disables the knob)."""
    minimum: float
    maximum: float
    fine: float
    coarse: float
    integer: bool = False
    help: str = ""
    optional: bool = False
    """None is a value (shown as "off"); turning it from None starts at `start_from`'s value."""
    start_from: str = ""

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
    KnobSpec("temperature", "temperature", "temperature", 0.0, 5.0, 0.05, 0.25,
             help="softmax temperature; 0 = greedy"),
    KnobSpec("top_k", "top-k", "top_k", 0, 1000, 1, 10, integer=True,
             help="keep the k most likely tokens; 0 = off"),
    KnobSpec("top_p", "top-p", "top_p", 0.0, 1.0, 0.01, 0.05,
             help="keep the smallest set reaching this mass; 1 = off"),
    KnobSpec("min_p", "min-p", "min_p", 0.0, 1.0, 0.01, 0.05,
             help="drop tokens below min-p x the top probability; 0 = off"),
    KnobSpec("typical_p", "typical-p", "typical_p", 0.0, 1.0, 0.01, 0.05,
             help="locally typical sampling mass; 1 = off"),
    KnobSpec("repeat_penalty", "repeat pen.", "penalties", 0.5, 3.0, 0.01, 0.1,
             help="divide/multiply logits of recent tokens; 1 = off"),
    KnobSpec("frequency_penalty", "frequency pen.", "penalties", -2.0, 2.0, 0.05, 0.25,
             help="subtract count x this from recent tokens; 0 = off"),
    KnobSpec("presence_penalty", "presence pen.", "penalties", -2.0, 2.0, 0.05, 0.25,
             help="subtract this from tokens seen recently; 0 = off"),
    KnobSpec("penalty_last_n", "penalty window", "penalties", -1, 4096, 1, 16, integer=True,
             help="recent tokens the penalties see; 0 = off, -1 = all"),
    KnobSpec("min_keep", "min keep", "top_k", 1, 100, 1, 5, integer=True,
             help="filters keep at least this many tokens"),
    KnobSpec("top_n_sigma", "top-n-sigma", "top_n_sigma", -1.0, 10.0, 0.1, 0.5,
             help="keep logits >= max - n·sigma; <= 0 = off"),
    KnobSpec("xtc_probability", "xtc prob.", "xtc", 0.0, 1.0, 0.05, 0.25,
             help="chance of excluding the top choices; 0 = off"),
    KnobSpec("xtc_threshold", "xtc threshold", "xtc", 0.0, 1.0, 0.01, 0.05,
             help="tokens above this probability can be excluded"),
    KnobSpec("dry_multiplier", "dry mult.", "dry", 0.0, 5.0, 0.05, 0.25,
             help="DRY repetition penalty; 0 = off"),
    KnobSpec("dry_base", "dry base", "dry", 1.0, 4.0, 0.05, 0.25, help="DRY exponential base"),
    KnobSpec("dry_allowed_length", "dry allowed", "dry", 0, 20, 1, 4, integer=True,
             help="DRY: repeats up to this length are free"),
    KnobSpec("dry_penalty_last_n", "dry window", "dry", -1, 4096, 16, 64, integer=True,
             help="DRY: history scanned; -1 = all"),
    KnobSpec("mirostat", "mirostat", "mirostat_v2", 0, 2, 2, 2, integer=True,
             help="2 = mirostat v2 chooses the token; 0 = off"),
    KnobSpec("mirostat_tau", "mirostat tau", "mirostat_v2", 0.0, 20.0, 0.1, 1.0,
             help="mirostat target surprise (bits)"),
    KnobSpec("mirostat_eta", "mirostat eta", "mirostat_v2", 0.0, 1.0, 0.01, 0.05,
             help="mirostat learning rate"),
    KnobSpec("dynatemp_range", "dynatemp range", "temperature", 0.0, 5.0, 0.05, 0.25,
             help="temperature ± range by entropy; 0 = off"),
    KnobSpec("dynatemp_exponent", "dynatemp exp.", "temperature", 0.0, 5.0, 0.1, 0.5,
             help="dynamic temperature exponent"),
    KnobSpec("temperature_end", "temp. end", "temperature", 0.0, 5.0, 0.05, 0.25, optional=True,
             start_from="temperature", help="schedule: temperature moves to this; off = none"),
    KnobSpec("temperature_steps", "temp. steps", "temperature", 1, 4096, 1, 16, integer=True,
             help="schedule length in tokens"),
    KnobSpec("epsilon_cutoff", "epsilon", "epsilon", 0.0, 0.2, 0.0001, 0.001,
             help="drop tokens with p < epsilon; 0 = off"),
    KnobSpec("eta_cutoff", "eta", "eta", 0.0, 0.2, 0.0001, 0.001,
             help="entropy-scaled cut-off; 0 = off"),
    KnobSpec("top_a", "top-a", "top_a", 0.0, 1.0, 0.01, 0.05,
             help="drop tokens with p < top_a·p_max²; 0 = off"),
    KnobSpec("no_repeat_ngram_size", "no-repeat n-gram", "no_repeat_ngram", 0, 10, 1, 2, integer=True,
             help="never repeat an n-gram of this size; 0 = off"),
    KnobSpec("scaled_frequency", "scaled freq.", "scaled_penalties", 1.0, 3.0, 0.05, 0.25,
             help="frequency penalty as a temperature; 1 = off"),
    KnobSpec("scaled_presence", "scaled pres.", "scaled_penalties", 1.0, 3.0, 0.05, 0.25,
             help="presence penalty as a temperature; 1 = off"),
    KnobSpec("watermark_key", "watermark key", "watermark", 0, 999_999, 1, 100, integer=True, optional=True,
             help="KGW watermark key (score detects it); off = none"),
    KnobSpec("watermark_gamma", "wm. gamma", "watermark", 0.01, 0.99, 0.01, 0.05,
             help="watermark: green fraction of the vocabulary"),
    KnobSpec("watermark_delta", "wm. delta", "watermark", 0.0, 10.0, 0.1, 0.5,
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
