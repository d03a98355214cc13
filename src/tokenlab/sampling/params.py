"""Sampler parameters: one validated, immutable bundle of knobs with llama.cpp's defaults."""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tokenlab.sampling import constraint, filters, history, mirostat, watermark  # noqa: F401  (they register stages)
from tokenlab.sampling._validate import check_bias, check_float, check_int, check_token_id
from tokenlab.sampling.constraint import check_constraint
from tokenlab.sampling.history import check_breakers
from tokenlab.sampling.mirostat import check_mirostat
from tokenlab.sampling.stages import STAGES, check_schedule
from tokenlab.sampling.watermark import check_gamma, check_scheme, check_watermark_key

DEFAULT_ORDER: tuple[str, ...] = (
    "penalties",
    "scaled_penalties",
    "no_repeat_ngram",
    "dry",
    "watermark",
    "top_n_sigma",
    "top_k",
    "typical_p",
    "top_p",
    "min_p",
    "epsilon",
    "eta",
    "top_a",
    "xtc",
    "temperature",
    "mirostat_v2",
)
"""Every stage in its default place: llama.cpp's common order (penalties; dry; top_n_sigma; top_k;
typ_p; top_p; min_p; xtc; temperature), the other history stages after penalties, transformers'
epsilon/eta and webui's top_a after min_p, the watermark before the first cut (transformers runs its
watermark processor before the warpers, so delta is added to the untruncated, untempered logits), and
mirostat last (llama.cpp runs it after temperature).
Stages whose knobs are off are dropped when a Pipeline is built, so they cost nothing."""

STAGE_NAMES: tuple[str, ...] = tuple(
    sorted(
        (name for name, stage in STAGES.items() if stage.orderable),
        key=lambda name: DEFAULT_ORDER.index(name) if name in DEFAULT_ORDER else len(DEFAULT_ORDER),
    )
)
"""Stages `samplers` may list, in default order (logit_bias and ban always run first, unlisted)."""

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
    "topnsigma": "top_n_sigma",
    "top_nsigma": "top_n_sigma",
    "nsigma": "top_n_sigma",
    "mirostat": "mirostat_v2",
    "mirostat2": "mirostat_v2",
    "mirostatv2": "mirostat_v2",
    "epsilon_cutoff": "epsilon",
    "eta_cutoff": "eta",
    "topa": "top_a",
    "no_repeat_ngram_size": "no_repeat_ngram",
    "scaled_penalty": "scaled_penalties",
    "dynatemp": "temperature",
    "kgw": "watermark",
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
            return check_int(name, value, low=int(self.low if self.low is not None else -(2**63)),
                             note=self.note)
        return check_float(name, value, low=self.low, high=self.high, low_open=self.low_open,
                           high_open=self.high_open, note=self.note)


FIELD_RANGES: dict[str, FieldRange] = {
    "temperature": FieldRange(low=0.0, note=" (0 = greedy)"),
    "top_k": FieldRange(low=0, integer=True, note=" (0 = off)"),
    "top_p": FieldRange(low=0.0, high=1.0),
    "min_p": FieldRange(low=0.0, high=1.0),
    "typical_p": FieldRange(low=0.0, high=1.0),
    "repeat_penalty": FieldRange(low=0.0, low_open=True),
    "frequency_penalty": FieldRange(),
    "presence_penalty": FieldRange(),
    "penalty_last_n": FieldRange(low=-1, integer=True, note=" (-1 = whole history, 0 = off)"),
    "min_keep": FieldRange(low=1, integer=True),
    "top_n_sigma": FieldRange(note=" (<= 0 = off)"),
    "xtc_probability": FieldRange(low=0.0, high=1.0),
    "xtc_threshold": FieldRange(low=0.0, high=1.0, note=" (> 0.5 = off)"),
    "dry_multiplier": FieldRange(low=0.0, note=" (0 = off)"),
    "dry_base": FieldRange(low=1.0),
    "dry_allowed_length": FieldRange(low=0, integer=True),
    "dry_penalty_last_n": FieldRange(low=-1, integer=True, note=" (-1 = whole history, 0 = off)"),
    "mirostat_tau": FieldRange(low=0.0),
    "mirostat_eta": FieldRange(low=0.0),
    "dynatemp_range": FieldRange(low=0.0, note=" (0 = off)"),
    "dynatemp_exponent": FieldRange(low=0.0),
    "temperature_end": FieldRange(low=0.0, optional=True, note=" (or None for no schedule)"),
    "temperature_steps": FieldRange(low=0, integer=True),
    "epsilon_cutoff": FieldRange(low=0.0, high=1.0, high_open=True, note=" (0 = off)"),
    "eta_cutoff": FieldRange(low=0.0, high=1.0, high_open=True, note=" (0 = off)"),
    "top_a": FieldRange(low=0.0, high=1.0, note=" (0 = off)"),
    "no_repeat_ngram_size": FieldRange(low=0, integer=True, note=" (0 = off)"),
    "scaled_frequency": FieldRange(low=1.0, note=" (1 = off)"),
    "scaled_presence": FieldRange(low=1.0, note=" (1 = off)"),
    "watermark_delta": FieldRange(low=0.0, note=" (0 = off)"),
}
"""The range of every plain numeric field: validation, the CLI and the lab's knobs all use these.
(mirostat, logit_bias, ban and the DRY breakers have checks of their own; `check_schedule` checks the
schedule's fields as a whole, with the same bounds.)"""


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

    # -- the rest of the catalogue: llama.cpp's names where it has the sampler ----------------------
    top_n_sigma: float = -1.0
    """Keep logits >= max - n·σ of the finite logits; <= 0 turns it off."""
    xtc_probability: float = 0.0
    """Chance per step that XTC removes the top choices; 0 turns it off."""
    xtc_threshold: float = 0.1
    """XTC removes tokens with p >= this except the least likely of them; > 0.5 turns it off."""
    dry_multiplier: float = 0.0
    """DRY penalty multiplier; 0 turns DRY off."""
    dry_base: float = 1.75
    """DRY penalty base (>= 1): penalty = multiplier·base^(repeat length - allowed length)."""
    dry_allowed_length: int = 2
    """Repeats up to this long go unpenalized by DRY."""
    dry_penalty_last_n: int = 64
    """History tokens DRY scans; -1 is the whole history, 0 turns DRY off."""
    dry_sequence_breakers: tuple[tuple[int, ...], ...] = ()
    """Token-id sequences that end a DRY repeat; make them with `dry_breaker_sequences`."""
    mirostat: int = 0
    """0 = off, 2 = Mirostat 2.0 (the mirostat_v2 stage)."""
    mirostat_tau: float = 5.0
    """Mirostat's target surprise, in bits."""
    mirostat_eta: float = 0.1
    """Mirostat's learning rate."""
    dynatemp_range: float = 0.0
    """Dynamic temperature: T moves within [T - range, T + range] with the entropy; 0 is off."""
    dynatemp_exponent: float = 1.0
    """How the normalised entropy maps to the dynamic temperature (its exponent)."""
    temperature_end: float | None = None
    """Temperature schedule target: T moves from `temperature` to this; None is no schedule."""
    temperature_steps: int = 100
    """Generated tokens the schedule takes to reach `temperature_end` (it stays there after)."""
    temperature_curve: str = "linear"
    """Schedule shape: "linear" or "exponential" (geometric; needs both temperatures > 0)."""
    # -- transformers' names where llama.cpp has no such sampler, plus text-generation-webui's top_a
    epsilon_cutoff: float = 0.0
    """Keep tokens with p >= epsilon (e.g. 3e-4); 0 turns it off."""
    eta_cutoff: float = 0.0
    """Keep p >= min(eta, sqrt(eta)·exp(-entropy)) (e.g. 3e-4); 0 turns it off."""
    top_a: float = 0.0
    """Remove tokens with p < top_a·p_max²; 0 turns it off."""
    no_repeat_ngram_size: int = 0
    """Ban tokens that would repeat an n-gram of this size from the history; 0 turns it off."""
    # -- tokenlab's own ---------------------------------------------------------------------------
    scaled_frequency: float = 1.0
    """Divide a seen token's (shifted) logit by 1 + (this - 1)·count; 1 is off."""
    scaled_presence: float = 1.0
    """... and by a further (this - 1) once it was seen at all; 1 is off (penalty_last_n window)."""
    # -- the KGW watermark (Kirchenbauer et al. 2023) ------------------------------------------------
    watermark_key: int | None = None
    """Key of the green lists; None turns the watermark off."""
    watermark_gamma: float = 0.25
    """Fraction of the vocabulary in each green list."""
    watermark_delta: float = 2.0
    """Added to the logits of the green tokens; 0 turns the watermark off."""
    watermark_scheme: str = "lefthash"
    """"lefthash" (the previous token picks the list) or "selfhash" (see sampling/watermark.py)."""
    # -- hard constraints: source text, not knobs (the grammar stage; see sampling/constraint.py) ---
    grammar: str | None = None
    """A GBNF grammar the whole generated text must follow; None is no grammar."""
    regex: str | None = None
    """A regular expression the whole generated text must match; None is none."""
    json_schema: str | None = None
    """A JSON schema (its JSON text) the generated text must be an instance of; None is none."""

    def __post_init__(self) -> None:
        checked: dict[str, object] = {
            name: bounds.check(name, getattr(self, name)) for name, bounds in FIELD_RANGES.items()
        }
        checked.update(
            logit_bias=_frozen_bias(self.logit_bias),
            ban=self._checked_ban(),
            samplers=parse_samplers(self.samplers),
            dry_sequence_breakers=check_breakers(self.dry_sequence_breakers),
            mirostat=check_mirostat(self.mirostat),
            watermark_key=check_watermark_key(self.watermark_key),
            watermark_gamma=check_gamma(self.watermark_gamma),
            watermark_scheme=check_scheme(self.watermark_scheme),
        )
        checked["grammar"], checked["regex"], checked["json_schema"] = check_constraint(
            self.grammar, self.regex, self.json_schema
        )
        end, steps, curve = check_schedule(
            checked["temperature"],  # type: ignore[arg-type]
            self.temperature_end,
            self.temperature_steps,
            self.temperature_curve,
        )
        checked.update(temperature_end=end, temperature_steps=steps, temperature_curve=curve)
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
        values: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "logit_bias":
                value = {str(token_id): bias for token_id, bias in value.items()}
            elif f.name == "dry_sequence_breakers":
                value = [list(breaker) for breaker in value]
            elif isinstance(value, tuple):
                value = list(value)
            values[f.name] = value
        return values

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

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> SamplerParams:
        """Parameters of a built-in preset (see BUILTIN_PRESETS), with some fields overridden."""
        from tokenlab.sampling.presets import preset_values

        return cls.from_dict({**preset_values(name), **overrides})
