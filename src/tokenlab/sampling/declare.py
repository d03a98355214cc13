"""How a sampler knob is declared: once, as a SamplerParams field with a `Knob` in its metadata.

Validation (SamplerParams), the command-line flags (commands/options.py), the lab's knob panel
(lab/knobs.py) and the flags `serve` forwards to the labs it starts are all derived from these
declarations, so adding a knob is one field (plus its stage).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tokenlab.sampling._validate import check_float, check_int

KNOB_METADATA = "tokenlab.knob"
"""The key of a field's metadata that holds its Knob."""


@dataclass(frozen=True)
class FieldRange:
    """The values a numeric SamplerParams field accepts (None: no bound on that side)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    note: str = ""
    """Said after the range in an error, e.g. " (0 = off)"."""
    optional: bool = False
    """None is a value too (the feature is off)."""

    def check(self, name: str, value: object) -> float | int | None:
        """`value` checked against the range, or a ValueError naming `name`, the value and the range."""
        if value is None and self.optional:
            return None
        if self.integer:
            low = int(self.low) if self.low is not None else -(2**63)
            number = check_int(name, value, low=low, note=self.note)
            if self.high is not None and number > self.high:
                raise ValueError(f"{name} must be an integer in [{low}, {int(self.high)}]{self.note}, got {value!r}")
            return number
        return check_float(name, value, low=self.low, high=self.high, low_open=self.low_open,
                           high_open=self.high_open, note=self.note)


@dataclass(frozen=True)
class Knob:
    """Everything said about one SamplerParams field outside its type, default and docstring."""

    flag: str
    """The command-line flag, e.g. "--top-k"."""
    help: str
    """The flag's help text (one or two sentences)."""
    range: FieldRange | None = None
    """Bounds checked on construction; None for a field with a check of its own (see SamplerParams)."""
    aliases: tuple[str, ...] = ()
    """More names for the flag, e.g. ("--temp",)."""
    panel: str = "More samplers"
    """The section of `--help` that lists the flag."""
    cli_type: Any = None
    """The flag's type when the command line takes text that becomes the value (token names, a stage
    list); None: the field's own type, passed through unchanged."""
    label: str = ""
    """The lab's name for the knob; "" means the lab has no turnable knob for it."""
    stage: str = ""
    """The pipeline stage it belongs to (o switches it, { } move it); "" for a knob of several stages."""
    fine: float = 0.0
    """The lab's small step (- +)."""
    coarse: float = 0.0
    """The lab's large step ([ ] or shift)."""
    hint: str = ""
    """One line the knob panel shows for the selected knob."""
    origin: str = "llama.cpp"
    """Whose semantics the knob follows (llama.cpp, transformers, text-generation-webui, tokenlab)."""
    acts_in: tuple[str, ...] = ()
    """The stages it acts in when that is not just `stage` (the knob is off when all of them are)."""
    start_from: str = ""
    """For a knob whose value may be None: turning it on starts at this other field's value."""
    lab_range: FieldRange | None = None
    """Bounds of the lab's knob when they differ from `range` (or `range` is None)."""

    @property
    def in_lab(self) -> bool:
        """Whether the lab's knob panel can turn it."""
        return bool(self.label)


def knob(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **declaration: Any) -> Any:
    """A dataclass field whose metadata holds the Knob built from `declaration`."""
    metadata = {KNOB_METADATA: Knob(**declaration)}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def declared(cls: type) -> Iterator[tuple[dataclasses.Field[Any], Knob]]:
    """Every field of dataclass `cls` that carries a Knob, in declaration order."""
    for item in dataclasses.fields(cls):
        declaration = item.metadata.get(KNOB_METADATA)
        if declaration is not None:
            yield item, declaration


def field_default(item: dataclasses.Field[Any]) -> Any:
    """A field's default value (calling its factory when it has one)."""
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return item.default
