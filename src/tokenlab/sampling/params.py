"""Sampler parameters: one validated, immutable bundle of knobs with llama.cpp's defaults."""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tokenlab.sampling import constraint, filters, guidance, history, mirostat, shaping, watermark  # noqa: F401  (they register stages)
from tokenlab.sampling._validate import check_bias, check_token_id
from tokenlab.sampling.constraint import check_constraint
from tokenlab.sampling.declare import KNOB_METADATA, FieldRange, declared, knob
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
    "smoothing",
    "top_n_sigma",
    "top_h",
    "top_k",
    "tail_free",
    "typical_p",
    "top_p",
    "min_p",
    "epsilon",
    "eta",
    "top_a",
    "p_less",
    "xtc",
    "temperature",
    "mirostat_v1",
    "mirostat_v2",
    "adaptive_p",
)
"""Every stage in its default place: llama.cpp's common order (penalties; dry; top_n_sigma; top_k;
typ_p; top_p; min_p; xtc; temperature), the other history stages after penalties, transformers'
epsilon/eta, webui's top_a and p-less after min_p, the watermark before the first cut (transformers runs
its watermark processor before the warpers, so delta is added to the untruncated, untempered logits),
webui's quadratic smoothing after it and before the cuts (webui reshapes before it truncates), top_h
just before top_k (transformers' order), tail_free between top_k and typical_p (where llama.cpp had it),
and the final selectors last: mirostat v1 and v2 after temperature, as llama.cpp runs them, and
adaptive-p, which llama.cpp puts in place of its final draw.
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
    "mirostat1": "mirostat_v1",
    "mirostatv1": "mirostat_v1",
    "adaptive": "adaptive_p",
    "adaptivep": "adaptive_p",
    "adaptive_target": "adaptive_p",
    "quadratic": "smoothing",
    "quadratic_sampling": "smoothing",
    "smoothing_factor": "smoothing",
    "tfs": "tail_free",
    "tfs_z": "tail_free",
    "tailfree": "tail_free",
    "tail_free_sampling": "tail_free",
    "toph": "top_h",
    "pless": "p_less",
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


MAX_PHRASE_CHARS = 1000
"""Longest banned phrase (a phrase is matched against the end of the text after every token)."""


def check_negative_prompt(value: object) -> str:
    """The negative prompt as text, or a ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"negative_prompt must be text, got {value!r}")
    return value


def check_ban_phrases(value: object) -> tuple[str, ...]:
    """Banned phrases as a tuple of distinct non-empty texts, or a ValueError naming the bad one."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"ban_phrases must be a list of texts, got {value!r}")
    phrases: list[str] = []
    for phrase in value:
        if not isinstance(phrase, str):
            raise ValueError(f"ban_phrases: each phrase must be text, got {phrase!r}")
        if not phrase:
            raise ValueError("ban_phrases: a phrase is empty, which would ban every text; give some text")
        if len(phrase) > MAX_PHRASE_CHARS:
            raise ValueError(f"ban_phrases: a phrase is {len(phrase):,} characters; at most {MAX_PHRASE_CHARS:,}")
        if phrase not in phrases:
            phrases.append(phrase)
    return tuple(phrases)


def _frozen_bias(bias: Mapping[Any, Any]) -> Mapping[int, float]:
    if not isinstance(bias, Mapping):
        raise ValueError(f"logit_bias must be a mapping of token id to bias, got {bias!r}")
    normalised: dict[int, float] = {}
    for key, value in bias.items():
        token_id = check_token_id("logit_bias", key)
        normalised[token_id] = check_bias(token_id, value)
    return types.MappingProxyType(normalised)


FIELD_RANGES: dict[str, FieldRange] = {}
"""The range of every plain numeric field, from its declaration (filled in below the class):
validation, the CLI and the lab's knobs all use these. (mirostat, logit_bias, ban and the DRY
breakers have checks of their own; `check_schedule` checks the schedule's fields as a whole.)"""


@dataclass(frozen=True)
class SamplerParams:
    """Every sampler knob, validated on construction; defaults equal llama.cpp's common sampler.

    Each field is declared once, here: its `knob(...)` metadata (see sampling/declare.py) gives its
    range, flag, help and lab knob, from which validation, the CLI, the lab and `serve` derive.
    """

    temperature: float = knob(
        0.8, range=FieldRange(low=0.0, note=" (0 = greedy)"), flag="--temperature", aliases=("--temp",),
        panel="Sampling", help="Softmax temperature; 0 = greedy.",
        label="temperature", stage="temperature", fine=0.05, coarse=0.25, hint="softmax temperature; 0 = greedy")
    """Divide logits by this; 0 means greedy (only the most likely token survives)."""
    top_k: int = knob(
        40, range=FieldRange(low=0, integer=True, note=" (0 = off)"), flag="--top-k", panel="Sampling",
        help="Keep the k most likely tokens; 0 = off.",
        label="top-k", stage="top_k", fine=1, coarse=10, hint="keep the k most likely tokens; 0 = off")
    """Keep the k most likely tokens; 0 turns the stage off."""
    top_p: float = knob(
        0.95, range=FieldRange(low=0.0, high=1.0), flag="--top-p", panel="Sampling",
        help="Keep the smallest set whose probability reaches p; 1 = off.",
        label="top-p", stage="top_p", fine=0.01, coarse=0.05, hint="keep the smallest set reaching this mass; 1 = off")
    """Keep the smallest set of most likely tokens whose mass reaches p; 1 turns it off."""
    min_p: float = knob(
        0.05, range=FieldRange(low=0.0, high=1.0), flag="--min-p", panel="Sampling",
        help="Drop tokens below min_p x the top probability; 0 = off.",
        label="min-p", stage="min_p", fine=0.01, coarse=0.05, hint="drop tokens below min-p x the top probability; 0 = off")
    """Keep tokens with p >= min_p * p_max; 0 turns it off."""
    typical_p: float = knob(
        1.0, range=FieldRange(low=0.0, high=1.0), flag="--typical-p", panel="Sampling",
        help="Locally typical sampling mass; 1 = off.",
        label="typical-p", stage="typical_p", fine=0.01, coarse=0.05, hint="locally typical sampling mass; 1 = off")
    """Locally typical sampling mass; 1 turns it off."""
    repeat_penalty: float = knob(
        1.0, range=FieldRange(low=0.0, low_open=True), flag="--repeat-penalty", panel="Sampling",
        help="Divide (positive) or multiply (negative) logits of recent tokens; 1 = off.",
        label="repeat pen.", stage="penalties", fine=0.01, coarse=0.1, hint="divide/multiply logits of recent tokens; 1 = off")
    """Divide positive (multiply other) logits of recently seen tokens by this; 1 is off."""
    frequency_penalty: float = knob(
        0.0, range=FieldRange(), flag="--frequency-penalty", panel="Sampling",
        help="Subtract count x this from recent tokens' logits; 0 = off.",
        label="frequency pen.", stage="penalties", fine=0.05, coarse=0.25, hint="subtract count x this from recent tokens; 0 = off")
    """Subtract count * this from the logit of each recently seen token."""
    presence_penalty: float = knob(
        0.0, range=FieldRange(), flag="--presence-penalty", panel="Sampling",
        help="Subtract this from logits of tokens seen recently; 0 = off.",
        label="presence pen.", stage="penalties", fine=0.05, coarse=0.25, hint="subtract this from tokens seen recently; 0 = off")
    """Subtract this from the logit of each recently seen token."""
    penalty_last_n: int = knob(
        64, range=FieldRange(low=-1, integer=True, note=" (-1 = whole history, 0 = off)"), flag="--penalty-last-n",
        panel="Sampling", help="How many recent tokens the penalties look at; 0 = off, -1 = all.",
        label="penalty window", stage="penalties", fine=1, coarse=16, acts_in=("penalties", "scaled_penalties"),
        hint="recent tokens the penalties see; 0 = off, -1 = all")
    """Recent tokens the penalties look at; -1 is the whole history, 0 turns them off."""
    min_keep: int = knob(
        1, range=FieldRange(low=1, integer=True), flag="--min-keep", panel="Sampling",
        help="Filters keep at least this many tokens.",
        label="min keep", fine=1, coarse=5, acts_in=("top_k", "typical_p", "top_p", "min_p"),
        hint="top-k, typical-p, top-p and min-p keep at least this many tokens")
    """Filters (top-k, typical-p, top-p, min-p) keep at least this many tokens."""
    logit_bias: Mapping[int, float] = knob(
        default_factory=dict, flag="--logit-bias", aliases=("-b",), panel="Sampling", cli_type=list[str],
        help="TOKEN=BIAS added to a token's logit (repeatable). TOKEN is its text, e.g. ' Paris=5', or #ID.")
    """Added to the logits by token id before any stage; -inf bans the token."""
    ban: tuple[int, ...] = knob(
        (), flag="--ban", panel="Sampling", cli_type=list[str], help="Never sample TOKEN (text or #ID; repeatable).")
    """Token ids that are never sampled."""
    samplers: tuple[str, ...] = knob(
        DEFAULT_ORDER, flag="--samplers", panel="Sampling", cli_type=str,
        help="Stage order, comma-separated, or an order preset: llama.cpp (default), transformers, greedy, "
             "mirostat. Unlisted stages are off.")
    """Stages to run, in order; a stage left out is off (a comma string or aliases are accepted)."""

    # -- the rest of the catalogue: llama.cpp's names where it has the sampler ----------------------
    top_n_sigma: float = knob(
        -1.0, range=FieldRange(note=" (<= 0 = off)"), flag="--top-n-sigma",
        help="Keep logits >= max - n·sigma; <= 0 = off.",
        label="top-n-sigma", stage="top_n_sigma", fine=0.1, coarse=0.5, hint="keep logits >= max - n·sigma; <= 0 = off")
    """Keep logits >= max - n·σ of the finite logits; <= 0 turns it off."""
    xtc_probability: float = knob(
        0.0, range=FieldRange(low=0.0, high=1.0), flag="--xtc-probability",
        help="XTC: chance per step of removing all but the least likely token above the threshold; 0 = off.",
        label="xtc prob.", stage="xtc", fine=0.05, coarse=0.25, hint="chance of excluding the top choices; 0 = off")
    """Chance per step that XTC removes the top choices; 0 turns it off."""
    xtc_threshold: float = knob(
        0.1, range=FieldRange(low=0.0, high=1.0, note=" (> 0.5 = off)"), flag="--xtc-threshold",
        help="XTC: tokens above this probability are candidates for removal.",
        label="xtc threshold", stage="xtc", fine=0.01, coarse=0.05, hint="tokens above this probability can be excluded")
    """XTC removes tokens with p >= this except the least likely of them; > 0.5 turns it off."""
    dry_multiplier: float = knob(
        0.0, range=FieldRange(low=0.0, note=" (0 = off)"), flag="--dry-multiplier",
        help="DRY repetition penalty strength; 0 = off.",
        label="dry mult.", stage="dry", fine=0.05, coarse=0.25, hint="DRY repetition penalty; 0 = off")
    """DRY penalty multiplier; 0 turns DRY off."""
    dry_base: float = knob(
        1.75, range=FieldRange(low=1.0), flag="--dry-base", help="DRY: base of the exponential penalty.",
        label="dry base", stage="dry", fine=0.05, coarse=0.25, hint="DRY exponential base")
    """DRY penalty base (>= 1): penalty = multiplier·base^(repeat length - allowed length)."""
    dry_allowed_length: int = knob(
        2, range=FieldRange(low=0, integer=True), flag="--dry-allowed-length",
        help="DRY: repeats up to this length are free.",
        label="dry allowed", stage="dry", fine=1, coarse=4, hint="DRY: repeats up to this length are free")
    """Repeats up to this long go unpenalized by DRY."""
    dry_penalty_last_n: int = knob(
        64, range=FieldRange(low=-1, integer=True, note=" (-1 = whole history, 0 = off)"), flag="--dry-penalty-last-n",
        help="DRY: tokens of history scanned; -1 = all.",
        label="dry window", stage="dry", fine=16, coarse=64, hint="DRY: history scanned; -1 = all")
    """History tokens DRY scans; -1 is the whole history, 0 turns DRY off."""
    dry_sequence_breakers: tuple[tuple[int, ...], ...] = knob(
        (), flag="--dry-sequence-breaker", cli_type=list[str],
        help="DRY: text that breaks a repeat (repeatable). Default: llama.cpp's newline, ':', '\"', '*'.")
    """Token-id sequences that end a DRY repeat; make them with `dry_breaker_sequences`."""
    mirostat: int = knob(
        0, flag="--mirostat", help="1 = mirostat v1, 2 = mirostat v2 (they target a surprise of tau); 0 = off.",
        label="mirostat", acts_in=("mirostat_v1", "mirostat_v2"), fine=1, coarse=1,
        lab_range=FieldRange(low=0, high=2, integer=True),
        hint="1 = mirostat v1, 2 = mirostat v2 chooses the token; 0 = off")
    """0 = off, 1 = Mirostat 1.0 (the mirostat_v1 stage), 2 = Mirostat 2.0 (the mirostat_v2 stage)."""
    mirostat_tau: float = knob(
        5.0, range=FieldRange(low=0.0), flag="--mirostat-tau", aliases=("--mirostat-ent",),
        help="Mirostat target surprise (bits).",
        label="mirostat tau", acts_in=("mirostat_v1", "mirostat_v2"), fine=0.1, coarse=1.0,
        hint="mirostat target surprise (bits)")
    """Mirostat's target surprise, in bits."""
    mirostat_eta: float = knob(
        0.1, range=FieldRange(low=0.0), flag="--mirostat-eta", aliases=("--mirostat-lr",),
        help="Mirostat learning rate.",
        label="mirostat eta", acts_in=("mirostat_v1", "mirostat_v2"), fine=0.01, coarse=0.05,
        hint="mirostat learning rate")
    """Mirostat's learning rate."""
    dynatemp_range: float = knob(
        0.0, range=FieldRange(low=0.0, note=" (0 = off)"), flag="--dynatemp-range",
        help="Dynamic temperature: T ± range by the step's entropy; 0 = off.",
        label="dynatemp range", stage="temperature", fine=0.05, coarse=0.25, hint="temperature ± range by entropy; 0 = off")
    """Dynamic temperature: T moves within [T - range, T + range] with the entropy; 0 is off."""
    dynatemp_exponent: float = knob(
        1.0, range=FieldRange(low=0.0), flag="--dynatemp-exponent", help="Dynamic temperature exponent.",
        label="dynatemp exp.", stage="temperature", fine=0.1, coarse=0.5, hint="dynamic temperature exponent")
    """How the normalised entropy maps to the dynamic temperature (its exponent)."""
    temperature_end: float | None = knob(
        None, range=FieldRange(low=0.0, optional=True, note=" (or None for no schedule)"), flag="--temperature-end",
        help="Temperature schedule: move from --temperature to this over --temperature-steps tokens.",
        label="temp. end", stage="temperature", fine=0.05, coarse=0.25, origin="tokenlab", start_from="temperature",
        hint="schedule: temperature moves to this; off = none")
    """Temperature schedule target: T moves from `temperature` to this; None is no schedule."""
    temperature_steps: int = knob(
        100, range=FieldRange(low=0, integer=True), flag="--temperature-steps",
        help="Temperature schedule length in tokens.",
        label="temp. steps", stage="temperature", fine=1, coarse=16, origin="tokenlab", hint="schedule length in tokens")
    """Generated tokens the schedule takes to reach `temperature_end` (it stays there after)."""
    temperature_curve: str = knob(
        "linear", flag="--temperature-curve", help="Temperature schedule: linear or exponential.", origin="tokenlab")
    """Schedule shape: "linear" or "exponential" (geometric; needs both temperatures > 0)."""
    # -- transformers' names where llama.cpp has no such sampler, plus text-generation-webui's top_a
    epsilon_cutoff: float = knob(
        0.0, range=FieldRange(low=0.0, high=1.0, high_open=True, note=" (0 = off)"), flag="--epsilon-cutoff",
        help="Drop tokens with p < epsilon (transformers); 0 = off.",
        label="epsilon", stage="epsilon", fine=0.0001, coarse=0.001, origin="transformers",
        hint="drop tokens with p < epsilon; 0 = off")
    """Keep tokens with p >= epsilon (e.g. 3e-4); 0 turns it off."""
    eta_cutoff: float = knob(
        0.0, range=FieldRange(low=0.0, high=1.0, high_open=True, note=" (0 = off)"), flag="--eta-cutoff",
        help="Entropy-scaled cut-off (transformers); 0 = off.",
        label="eta", stage="eta", fine=0.0001, coarse=0.001, origin="transformers", hint="entropy-scaled cut-off; 0 = off")
    """Keep p >= min(eta, sqrt(eta)·exp(-entropy)) (e.g. 3e-4); 0 turns it off."""
    top_a: float = knob(
        0.0, range=FieldRange(low=0.0, high=1.0, note=" (0 = off)"), flag="--top-a",
        help="Drop tokens with p < top_a · p_max² (text-generation-webui); 0 = off.",
        label="top-a", stage="top_a", fine=0.01, coarse=0.05, origin="text-generation-webui",
        hint="drop tokens with p < top_a·p_max²; 0 = off")
    """Remove tokens with p < top_a·p_max²; 0 turns it off."""
    no_repeat_ngram_size: int = knob(
        0, range=FieldRange(low=0, integer=True, note=" (0 = off)"), flag="--no-repeat-ngram-size",
        help="Never repeat an n-gram of this size (transformers); 0 = off.",
        label="no-repeat n-gram", stage="no_repeat_ngram", fine=1, coarse=2, origin="transformers",
        hint="never repeat an n-gram of this size; 0 = off")
    """Ban tokens that would repeat an n-gram of this size from the history; 0 turns it off."""
    # -- tokenlab's own ---------------------------------------------------------------------------
    scaled_frequency: float = knob(
        1.0, range=FieldRange(low=1.0, note=" (1 = off)"), flag="--scaled-frequency",
        help="Frequency penalty as a per-token temperature (>= 1; 1 = off).",
        label="scaled freq.", stage="scaled_penalties", fine=0.05, coarse=0.25, origin="tokenlab",
        hint="frequency penalty as a temperature; 1 = off")
    """Divide a seen token's (shifted) logit by 1 + (this - 1)·count; 1 is off."""
    scaled_presence: float = knob(
        1.0, range=FieldRange(low=1.0, note=" (1 = off)"), flag="--scaled-presence",
        help="Presence penalty as a per-token temperature (>= 1; 1 = off).",
        label="scaled pres.", stage="scaled_penalties", fine=0.05, coarse=0.25, origin="tokenlab",
        hint="presence penalty as a temperature; 1 = off")
    """... and by a further (this - 1) once it was seen at all; 1 is off (penalty_last_n window)."""
    # -- the KGW watermark (Kirchenbauer et al. 2023) ------------------------------------------------
    watermark_key: int | None = knob(
        None, flag="--watermark-key", panel="Watermark",
        help="KGW watermark: key of the green lists (an integer); unset = no watermark. "
             "`tokenlab score --watermark-key K` detects it.",
        # the lab turns keys 0..999,999 (the command line takes any key below 2**63)
        label="watermark key", stage="watermark", fine=1, coarse=1000, origin="tokenlab",
        lab_range=FieldRange(low=0, high=999_999, integer=True, optional=True),
        hint="KGW watermark key (score detects it); off = none")
    """Key of the green lists; None turns the watermark off."""
    watermark_gamma: float = knob(
        0.25, flag="--watermark-gamma", panel="Watermark",
        help="Watermark: fraction of the vocabulary in each green list.",
        label="wm. gamma", stage="watermark", fine=0.01, coarse=0.05, origin="tokenlab",
        lab_range=FieldRange(low=0.0, high=1.0, low_open=True, high_open=True),
        hint="watermark: green fraction of the vocabulary (Kirchenbauer et al.)")
    """Fraction of the vocabulary in each green list."""
    watermark_delta: float = knob(
        2.0, range=FieldRange(low=0.0, note=" (0 = off)"), flag="--watermark-delta", panel="Watermark",
        help="Watermark: added to the green tokens' logits; 0 = off.",
        label="wm. delta", stage="watermark", fine=0.1, coarse=0.5, origin="tokenlab",
        hint="watermark: added to green logits; 0 = off")
    """Added to the logits of the green tokens; 0 turns the watermark off."""
    watermark_scheme: str = knob(
        "lefthash", flag="--watermark-scheme", panel="Watermark", origin="tokenlab",
        help="Watermark green lists: lefthash (the previous token) or selfhash (4 tokens, salted with the candidate).")
    """"lefthash" (the previous token picks the list) or "selfhash" (see sampling/watermark.py)."""
    # -- the 2026 catalogue: adaptive-p and the samplers other projects ship ------------------------
    adaptive_target: float = knob(
        -1.0, range=FieldRange(low=-1.0, high=1.0, note=" (negative = off)"), flag="--adaptive-target",
        help="Adaptive-p: favour tokens near this probability; the target adapts to a moving average of "
             "the chosen tokens' probabilities (a final selector); -1 = off.",
        label="adaptive target", stage="adaptive_p", fine=0.01, coarse=0.05,
        hint="adaptive-p: favour tokens near this p (→ the adapted target); < 0 = off")
    """Adaptive-p's target probability (llama.cpp); negative turns it off."""
    adaptive_decay: float = knob(
        0.9, range=FieldRange(low=0.0, high=0.99), flag="--adaptive-decay",
        help="Adaptive-p: decay of the moving average (it spans about 1/(1 - decay) tokens).",
        label="adaptive decay", stage="adaptive_p", fine=0.01, coarse=0.05,
        hint="adaptive-p: decay of the moving average (avg: its value now)")
    """Adaptive-p's moving-average decay (history ≈ 1/(1 - decay) tokens)."""
    smoothing_factor: float = knob(
        0.0, range=FieldRange(low=0.0, note=" (0 = off)"), flag="--smoothing-factor",
        help="Quadratic smoothing (text-generation-webui): logit -> max - factor·(logit - max)²; 0 = off.",
        label="smoothing", stage="smoothing", fine=0.01, coarse=0.1, origin="text-generation-webui",
        hint="quadratic smoothing of the logits; 0 = off")
    """Quadratic smoothing factor (text-generation-webui); 0 turns it off."""
    smoothing_curve: float = knob(
        1.0, range=FieldRange(low=1.0, high=10.0), flag="--smoothing-curve",
        help="Quadratic smoothing curve: 1 = the plain quadratic; higher adds a cubic term.",
        label="smooth. curve", stage="smoothing", fine=0.1, coarse=0.5, origin="text-generation-webui",
        hint="smoothing curve: 1 = quadratic, higher adds a cubic term")
    """Quadratic smoothing curve: 1 is the plain quadratic, higher adds a cubic term."""
    tfs_z: float = knob(
        1.0, range=FieldRange(low=0.0, high=1.0, note=" (1 = off)"), flag="--tfs-z",
        help="Tail-free sampling (KoboldCpp): cut the tail where the sorted probabilities' curvature "
             "passes z; 1 = off.",
        label="tail-free z", stage="tail_free", fine=0.01, coarse=0.05, origin="KoboldCpp",
        hint="tail-free: cut where the curvature of sorted p passes z; 1 = off")
    """Tail-free sampling's z (KoboldCpp); 1 turns it off."""
    top_h: float = knob(
        0.0, range=FieldRange(low=0.0, high=1.0, note=" (0 = off)"), flag="--top-h",
        help="Top-H (transformers): of the 100 most likely tokens keep those whose entropy stays <= "
             "top_h x theirs; 0 = off.",
        label="top-h", stage="top_h", fine=0.01, coarse=0.05, origin="transformers",
        hint="keep the top tokens while their entropy <= top-h·H; 0 = off")
    """Top-H's entropy share (transformers); 0 turns it off."""
    p_less: float = knob(
        0.0, range=FieldRange(low=0.0, high=1.0, note=" (0 = off, 1 = the paper's rule)"), flag="--p-less",
        help="p-less sampling: keep tokens with p >= strength x sum of p²; 1 = the paper's rule, 0 = off.",
        label="p-less", stage="p_less", fine=0.05, coarse=0.25, origin="p-less paper (llama.cpp PR #26035)",
        hint="keep p >= strength·Σp² (1 = the paper); 0 = off")
    """p-less strength: keep p >= p_less·Σp² (1 = the paper's rule); 0 turns it off."""
    # -- hard constraints: source text, not turnable knobs (the grammar stage, sampling/constraint.py) --
    grammar: str | None = knob(
        None, flag="--grammar", panel="Constraints", cli_type=str,
        help="GBNF grammar FILE the whole output must follow (llama.cpp's grammar sampler); tokens it rejects "
             "are removed by 'grammar'.")
    """A GBNF grammar (its text) the whole generated text must follow; None is no grammar."""
    regex: str | None = knob(
        None, flag="--regex", panel="Constraints", origin="tokenlab",
        help="Regular expression the whole output must match (literals, classes, ., groups, |, repetition; "
             "turned into a grammar), e.g. '[0-9]{3}-[0-9]{4}'.")
    """A regular expression the whole generated text must match; None is none."""
    json_schema: str | None = knob(
        None, flag="--json-schema", panel="Constraints", cli_type=str,
        help="JSON schema FILE: the output is an instance of it (turned into a grammar as llama.cpp does).")
    """A JSON schema (its JSON text) the generated text must be an instance of; None is none."""
    # -- classifier-free guidance and phrase bans: the generation loop decodes the negative context
    # and rewinds; the pipeline sees the negative row (the guidance stage) and per-step bans
    guidance_scale: float = knob(
        1.0, range=FieldRange(note=" (a finite number; 1 = off)"), flag="--guidance-scale", panel="Guidance and phrase bans",
        help="Classifier-free guidance: log_softmax(neg) + S·(log_softmax(pos) − log_softmax(neg)); 1 = off, "
             "0 = the negative context alone, > 1 pushes away from it.",
        label="guidance", stage="guidance", fine=0.1, coarse=0.5, origin="transformers",
        hint="CFG scale against the negative prompt; 1 = off, 0 = the negative context alone")
    """CFG (transformers): log_softmax(neg) + scale·(log_softmax(pos) − log_softmax(neg)); 1 is off."""
    negative_prompt: str = knob(
        "", flag="--negative-prompt", panel="Guidance and phrase bans", origin="transformers",
        help="The text guidance steers away from, formatted as the prompt is (chat or raw). "
             "Default: the prompt's last token alone, as transformers does.")
    """The context guidance steers away from; "" uses the prompt's last token alone, as transformers does."""
    ban_phrases: tuple[str, ...] = knob(
        (), flag="--ban-phrase", panel="Guidance and phrase bans", cli_type=list[str], origin="KoboldCpp",
        help="Never let the text contain TEXT (repeatable; case as given): generation rewinds to where it "
             "began and bans that token there.")
    """Texts the output never contains: the run rewinds to where one began and bans that token there."""

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
            negative_prompt=check_negative_prompt(self.negative_prompt),
            ban_phrases=check_ban_phrases(self.ban_phrases),
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


FIELD_RANGES.update({item.name: declaration.range for item, declaration in declared(SamplerParams)
                     if declaration.range is not None})


def _field_names() -> dict[str, str]:
    names: dict[str, str] = {}
    for item, declaration in declared(SamplerParams):
        for name in (item.name, declaration.flag, *declaration.aliases):
            names[name.lstrip("-").replace("-", "_").lower()] = item.name
    return names


def parse_assignment(text: str) -> tuple[str, Any]:
    """("field", value) from "NAME=VALUE" (NAME: a field, its flag or an alias; VALUE: "off" for None).

    Only fields whose flag takes the value itself are accepted (not token names, e.g. --logit-bias).
    """
    name, sep, value_text = text.partition("=")
    key = name.strip().lstrip("-").replace("-", "_").lower()
    if not sep or not key:
        raise ValueError(f"{text!r}: expected KNOB=VALUE, e.g. temperature=1.5 or top-k=0")
    field_name = _field_names().get(key)
    if field_name is None:
        raise ValueError(f"{name.strip()!r} is not a sampler knob; knobs are named like their flags, "
                         "e.g. temperature, top-k, min-p, repeat-penalty")
    item = next(item for item, _ in declared(SamplerParams) if item.name == field_name)
    declaration = item.metadata[KNOB_METADATA]
    value_text = value_text.strip()
    if field_name == "samplers":
        return field_name, parse_samplers(value_text)
    if declaration.cli_type is not None:
        raise ValueError(f"{name.strip()!r} is not a number or a word (its flag {declaration.flag} takes text "
                         "that needs the model's vocabulary or a file); it cannot be set as KNOB=VALUE")
    default = getattr(SamplerParams(), field_name)
    if value_text.lower() in ("off", "none") and (declaration.range is None or declaration.range.optional
                                                   or default is None):
        return field_name, None
    if isinstance(default, str):
        return field_name, value_text
    try:
        number = float(value_text)
    except ValueError:
        raise ValueError(f"{field_name}={value_text!r}: not a number") from None
    return field_name, int(number) if number.is_integer() and (declaration.range is None or declaration.range.integer
                                                               or isinstance(default, int)) else number
