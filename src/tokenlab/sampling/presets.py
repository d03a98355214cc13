"""Stage-order presets and named knob presets, as plain data (saving and loading live elsewhere)."""

from __future__ import annotations

import copy
from typing import Any

from tokenlab.sampling.params import DEFAULT_ORDER

ORDER_PRESETS: dict[str, tuple[str, ...]] = {
    "llama.cpp": DEFAULT_ORDER,
    # transformers runs its logits processors (repetition penalty, no-repeat n-grams, then the
    # watermark) before the warpers, and the warpers in this order
    # (GenerationMixin._get_logits_processor).
    "transformers": (
        "penalties",
        "no_repeat_ngram",
        "watermark",
        "temperature",
        "top_h",
        "top_k",
        "top_p",
        "min_p",
        "typical_p",
        "epsilon",
        "eta",
    ),
    # temperature 0 keeps the argmax; the penalties still shape which token that is
    "greedy": ("penalties", "dry", "watermark", "temperature"),
    # llama.cpp's --mirostat 1 or 2 replaces the whole chain with temperature, then mirostat
    # (SamplerParams.mirostat picks the version that runs)
    "mirostat": ("watermark", "temperature", "mirostat_v1", "mirostat_v2"),
}
"""Stage orders by name; `order_preset` looks them up."""

_ORDER_ALIASES = {"llamacpp": "llama.cpp", "llama_cpp": "llama.cpp", "hf": "transformers"}


def order_preset(name: str) -> tuple[str, ...]:
    """The stage order called `name`: "llama.cpp" (the default), "transformers", "greedy", "mirostat"."""
    key = name.strip().lower()
    key = _ORDER_ALIASES.get(key, key)
    if key not in ORDER_PRESETS:
        raise ValueError(
            f"unknown order preset {name!r}; valid ones are {', '.join(ORDER_PRESETS)}"
        )
    return ORDER_PRESETS[key]


BUILTIN_PRESETS: dict[str, dict[str, Any]] = {
    "greedy": {
        "temperature": 0.0,
        "samplers": list(ORDER_PRESETS["greedy"]),
    },
    "llama.cpp": {
        "temperature": 0.8,
        "top_k": 40,
        "top_p": 0.95,
        "min_p": 0.05,
        "typical_p": 1.0,
        "samplers": list(ORDER_PRESETS["llama.cpp"]),
    },
    # transformers' GenerationConfig defaults with do_sample=True
    "transformers": {
        "temperature": 1.0,
        "top_k": 50,
        "top_p": 1.0,
        "min_p": 0.0,
        "typical_p": 1.0,
        "samplers": list(ORDER_PRESETS["transformers"]),
    },
    # min-p before a hot temperature: the tail is cut while the distribution is still sharp
    "creative": {
        "temperature": 1.5,
        "top_k": 0,
        "top_p": 1.0,
        "min_p": 0.1,
        "samplers": list(ORDER_PRESETS["llama.cpp"]),
    },
    # two or three live choices per step: every step is a small fork in the tree
    "deterministic-ish": {
        "temperature": 0.7,
        "top_k": 3,
        "top_p": 1.0,
        "min_p": 0.0,
        "samplers": list(ORDER_PRESETS["llama.cpp"]),
    },
    "penalized": {
        "temperature": 0.8,
        "top_k": 0,
        "top_p": 0.9,
        "min_p": 0.0,
        "scaled_frequency": 1.2,
        "scaled_presence": 1.2,
        "samplers": list(ORDER_PRESETS["llama.cpp"]),
    },
    # llama.cpp's --mirostat 2 with its default tau and eta
    "mirostat": {
        "temperature": 0.8,
        "mirostat": 2,
        "mirostat_tau": 5.0,
        "mirostat_eta": 0.1,
        "samplers": list(ORDER_PRESETS["mirostat"]),
    },
}
"""Named knob presets: plain dicts of SamplerParams fields (the rest stay at their defaults)."""


def preset_values(name: str) -> dict[str, Any]:
    """A copy of the built-in preset `name`, or a ValueError listing the valid names."""
    if name not in BUILTIN_PRESETS:
        raise ValueError(
            f"unknown sampler preset {name!r}; valid ones are {', '.join(BUILTIN_PRESETS)}"
        )
    return copy.deepcopy(BUILTIN_PRESETS[name])
