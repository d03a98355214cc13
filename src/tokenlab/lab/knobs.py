"""The knobs of the lab: which sampler parameters can be turned and by how much.

Each knob is derived from its SamplerParams field's declaration (sampling/declare.py): its bounds are
the parameter's own (FIELD_RANGES), so a value the command line accepts is one the knob panel holds,
and turning a knob never jumps to another range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tokenlab.sampling import DEFAULT_ORDER, FIELD_RANGES, FieldRange, SamplerParams
from tokenlab.sampling.declare import Knob, declared
from tokenlab.sampling.stages import STAGES


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


def _knob_spec(name: str, declaration: Knob) -> KnobSpec:
    return KnobSpec(
        name, declaration.label, declaration.stage, declaration.fine, declaration.coarse, help=declaration.hint,
        optional=(declaration.lab_range or declaration.range or FieldRange()).optional,
        start_from=declaration.start_from, origin=declaration.origin, acts_in=declaration.acts_in,
        bounds=declaration.lab_range,
    )


KNOBS: tuple[KnobSpec, ...] = tuple(
    _knob_spec(item.name, declaration) for item, declaration in declared(SamplerParams) if declaration.in_lab
)
"""Every knob, in the order the knob panel lists them: SamplerParams' fields that declare a label."""

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


def _check_orderable(stage: str) -> None:
    """A ValueError saying so when `stage` always runs first instead of having a place in the order."""
    if stage in STAGES and not STAGES[stage].orderable:
        raise ValueError(f"{stage} always runs first, on the raw row, whenever its knob is on; "
                         "0 resets the knob to its default (off)")


def move_stage(params: SamplerParams, stage: str, delta: int) -> SamplerParams:
    """Params with `stage` moved `delta` places later (negative: earlier) in the order; no-op if it is off."""
    _check_orderable(stage)
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
    """Whether a knob acts: at least one of its stages is in the pipeline's order (or always runs, like guidance)."""
    return any(stage in params.samplers or (stage in STAGES and not STAGES[stage].orderable) for stage in knob.stages)


def knob_changed(params: SamplerParams, knob: KnobSpec) -> bool:
    """Whether a knob differs from its default."""
    return knob_value(params, knob.name) != knob_value(DEFAULTS, knob.name)


def toggle_stage(params: SamplerParams, stage: str) -> SamplerParams:
    """Params with `stage` switched off, or back on at its place in the default order."""
    _check_orderable(stage)
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
