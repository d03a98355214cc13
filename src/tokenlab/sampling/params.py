"""Sampler parameters: one validated, immutable bundle of knobs with llama.cpp's defaults."""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tokenlab.sampling._validate import check_bias, check_float, check_int, check_token_id
from tokenlab.sampling.stages import STAGES

STAGE_NAMES: tuple[str, ...] = tuple(name for name, stage in STAGES.items() if stage.orderable)
"""Stages `samplers` may list (logit_bias and ban always run first and are not listed)."""

DEFAULT_ORDER: tuple[str, ...] = (
    "penalties",
    "top_k",
    "typical_p",
    "top_p",
    "min_p",
    "temperature",
)
"""llama.cpp's default stage order (common/common.h, less the stages tokenlab lacks yet)."""

_ALIASES: dict[str, str] = {
    "typ_p": "typical_p",
    "typ": "typical_p",
    "typical": "typical_p",
    "typicalp": "typical_p",
    "typp": "typical_p",
    "temp": "temperature",
    "topk": "top_k",
    "topp": "top_p",
    "nucleus": "top_p",
    "minp": "min_p",
    "penalty": "penalties",
}


def canonical_stage_name(name: str) -> str:
    """Canonical stage name for `name` (any case, dashes, llama.cpp aliases), or ValueError."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key not in STAGE_NAMES:
        raise ValueError(
            f"samplers: unknown stage {name!r}; valid stages are {', '.join(STAGE_NAMES)}"
        )
    return key


def parse_samplers(spec: str | Iterable[str]) -> tuple[str, ...]:
    """Canonical stage tuple from "top_k,temp" (commas, semicolons, spaces) or a sequence."""
    if isinstance(spec, str):
        names: list[object] = [part for part in re.split(r"[,;\s]+", spec) if part]
    elif isinstance(spec, Iterable):
        names = list(spec)
    else:
        raise ValueError(f"samplers must be a comma-separated string or a sequence, got {spec!r}")
    stages: list[str] = []
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"samplers: stage names must be strings, got {name!r}")
        canonical = canonical_stage_name(name)
        if canonical in stages:
            raise ValueError(f"samplers: stage {canonical!r} is listed more than once")
        stages.append(canonical)
    return tuple(stages)


def _frozen_bias(bias: Mapping[Any, Any]) -> Mapping[int, float]:
    if not isinstance(bias, Mapping):
        raise ValueError(f"logit_bias must be a mapping of token id to bias, got {bias!r}")
    normalised: dict[int, float] = {}
    for key, value in bias.items():
        token_id = check_token_id("logit_bias", key)
        normalised[token_id] = check_bias(token_id, value)
    return types.MappingProxyType(normalised)


@dataclass(frozen=True)
class SamplerParams:
    """Every sampler knob, validated on construction; defaults equal llama.cpp's common sampler."""

    temperature: float = 0.8
    """Divide logits by this; 0 means greedy (only the most likely token survives)."""
    top_k: int = 40
    """Keep the k most likely tokens; 0 turns the stage off."""
    top_p: float = 0.95
    """Keep the smallest set of most likely tokens whose mass reaches p; 1 turns it off."""
    min_p: float = 0.05
    """Keep tokens with p >= min_p * p_max; 0 turns it off."""
    typical_p: float = 1.0
    """Locally typical sampling mass; 1 turns it off."""
    repeat_penalty: float = 1.0
    """Divide positive (multiply other) logits of recently seen tokens by this; 1 is off."""
    frequency_penalty: float = 0.0
    """Subtract count * this from the logit of each recently seen token."""
    presence_penalty: float = 0.0
    """Subtract this from the logit of each recently seen token."""
    penalty_last_n: int = 64
    """Recent tokens the penalties look at; -1 is the whole history, 0 turns them off."""
    min_keep: int = 1
    """Filters (top-k, typical-p, top-p, min-p) keep at least this many tokens."""
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    """Added to the logits by token id before any stage; -inf bans the token."""
    ban: tuple[int, ...] = ()
    """Token ids that are never sampled."""
    samplers: tuple[str, ...] = DEFAULT_ORDER
    """Stages to run, in order; a stage left out is off (a comma string or aliases are accepted)."""

    def __post_init__(self) -> None:
        checked = {
            "temperature": check_float(
                "temperature", self.temperature, low=0.0, note=" (0 = greedy)"
            ),
            "top_k": check_int("top_k", self.top_k, low=0, note=" (0 = off)"),
            "top_p": check_float("top_p", self.top_p, low=0.0, high=1.0),
            "min_p": check_float("min_p", self.min_p, low=0.0, high=1.0),
            "typical_p": check_float("typical_p", self.typical_p, low=0.0, high=1.0),
            "repeat_penalty": check_float(
                "repeat_penalty", self.repeat_penalty, low=0.0, low_open=True
            ),
            "frequency_penalty": check_float("frequency_penalty", self.frequency_penalty),
            "presence_penalty": check_float("presence_penalty", self.presence_penalty),
            "penalty_last_n": check_int(
                "penalty_last_n", self.penalty_last_n, low=-1, note=" (-1 = whole history, 0 = off)"
            ),
            "min_keep": check_int("min_keep", self.min_keep, low=1),
            "logit_bias": _frozen_bias(self.logit_bias),
            "ban": self._checked_ban(),
            "samplers": parse_samplers(self.samplers),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def _checked_ban(self) -> tuple[int, ...]:
        if isinstance(self.ban, (str, bytes)) or not isinstance(self.ban, Iterable):
            raise ValueError(f"ban must be a sequence of token ids, got {self.ban!r}")
        return tuple(check_token_id("ban", token_id) for token_id in self.ban)

    def __hash__(self) -> int:
        values = tuple(
            getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "logit_bias"
        )
        return hash((values, tuple(sorted(self.logit_bias.items()))))

    def __repr__(self) -> str:
        changed = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
            if value != default:
                shown = dict(value) if f.name == "logit_bias" else value
                changed.append(f"{f.name}={shown!r}")
        return f"SamplerParams({', '.join(changed)})"

    def replace(self, **changes: Any) -> SamplerParams:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values; logit_bias keys become strings (-inf stays float('-inf'))."""
        return {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "min_p": self.min_p,
            "typical_p": self.typical_p,
            "repeat_penalty": self.repeat_penalty,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "penalty_last_n": self.penalty_last_n,
            "min_keep": self.min_keep,
            "logit_bias": {str(token_id): bias for token_id, bias in self.logit_bias.items()},
            "ban": list(self.ban),
            "samplers": list(self.samplers),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SamplerParams:
        """Parameters from `to_dict()` output (or a subset); unknown keys raise ValueError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(
                f"unknown sampler parameter {unknown[0]!r}; "
                f"valid ones are {', '.join(sorted(names))}"
            )
        return cls(**values)
