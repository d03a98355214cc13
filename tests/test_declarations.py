"""Each knob is declared once (a SamplerParams field): the CLI, the lab and `serve` all reach every one."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from typer.testing import CliRunner

import tokenlab.commands.lab as lab_command
from tokenlab.cli import app
from tokenlab.commands.options import _KNOB_FIELDS, _SHARED_OPTIONS, RunOptions, forwarded_flags, sampler_params
from tokenlab.lab.knobs import KNOBS_BY_NAME
from tokenlab.sampling import SamplerParams
from tokenlab.sampling.declare import KNOB_METADATA, declared, field_default

LAB_ROUTES = {
    "logit_bias": "h picks a hot token; its knob row turns the token's logit bias",
    "ban": "the command line's --ban (kept in the session; the lab shows banned tokens as removed)",
    "samplers": "o switches the selected knob's stage on or off, { } move it in the order",
    "dry_sequence_breakers": "the command line's --dry-sequence-breaker (text, resolved with the vocabulary)",
    "temperature_curve": "the command line's --temperature-curve (a word, not a turnable value)",
    "watermark_scheme": "the command line's --watermark-scheme (a word, not a turnable value)",
    "negative_prompt": "the command line's --negative-prompt (text; kept in the session, its top tokens shown)",
    "ban_phrases": "the command line's --ban-phrase (text; kept in the session, rewinds shown struck through)",
    "grammar": "the command line's --grammar (a file's text, not a turnable value; kept in the session)",
    "regex": "the command line's --regex (a pattern, not a turnable value; kept in the session)",
    "json_schema": "the command line's --json-schema (a file's text, not a turnable value; kept in the session)",
}
"""SamplerParams fields without a turnable lab knob, and how the lab gets them instead."""

TEXT_VALUES: dict[str, Any] = {
    "logit_bias": ["#5=1", " Paris=-2"],
    "ban": ["#7"],
    "samplers": "top_k,temperature",
    "dry_sequence_breakers": ["\n", "--"],
    "temperature_curve": "exponential",
    "watermark_scheme": "selfhash",
    "negative_prompt": "a dull story",
    "ban_phrases": [" dragon", "once upon"],
    "grammar": "g.gbnf",
    "regex": "[0-9]{3}",
    "json_schema": "s.json",
    "model": "m.gguf",
    "chat": False,
    "ctx_size": 512,
    "threads": 1,
    "gpu_layers": -1,
    "flash_attn": True,
    "engine": "http://127.0.0.1:9",
    "logprobs": 50,
    "engine_timeout": 5.0,
    "seed": 3,
    "max_tokens": 9,
    "preset": "creative",
    "top_n": 7,
}
"""Changed values for the shared flags that are not turnable knobs (a new one must be added here)."""


def changed_value(name: str) -> Any:
    """A valid value of shared flag `name` that differs from its default."""
    if name in TEXT_VALUES:
        return TEXT_VALUES[name]
    assert name in KNOBS_BY_NAME, f"give the new flag {name!r} a changed value in TEXT_VALUES"
    knob = KNOBS_BY_NAME[name]
    default = getattr(RunOptions(), name)
    start = default if default is not None else (getattr(SamplerParams(), knob.start_from) if knob.start_from
                                                 else max(knob.minimum, 0))
    for step in (knob.coarse, -knob.coarse, knob.fine, -knob.fine):
        value = knob.clamp(start + step)
        if value != default:
            return value
    raise AssertionError(f"knob {name} cannot move from its default")


def every_flag_changed() -> Any:
    return RunOptions(**{item.name: changed_value(item.name) for item in dataclasses.fields(RunOptions)})


def test_every_samplerparams_field_is_declared_once_with_a_flag() -> None:
    flags: set[str] = set()
    for item in dataclasses.fields(SamplerParams):
        declaration = item.metadata.get(KNOB_METADATA)
        assert declaration is not None, f"SamplerParams.{item.name} has no knob(...) declaration"
        assert declaration.flag.startswith("--") and declaration.help, item.name
        names = {declaration.flag, *declaration.aliases}
        assert not names & flags, f"{item.name} reuses a flag: {names & flags}"
        flags |= names
        assert item.name in _SHARED_OPTIONS, f"{item.name} has no command-line option"


@pytest.mark.parametrize("item", [item for item, _ in declared(SamplerParams)], ids=lambda item: item.name)
def test_every_knob_is_reachable_from_the_cli_the_lab_and_serve(item: dataclasses.Field[Any]) -> None:
    # the lab: a turnable knob, or a named other route
    assert item.name in KNOBS_BY_NAME or item.name in LAB_ROUTES, \
        f"{item.name}: declare a lab label (knob) or say in LAB_ROUTES how the lab gets it"
    # the CLI: the flag parses and sets exactly this field of SamplerParams
    value = changed_value(item.name)
    if item.name in _KNOB_FIELDS:
        params = sampler_params(RunOptions(**{item.name: value}))
        assert getattr(params, item.name) == value
        assert getattr(params, item.name) != field_default(item)
    # serve: the flag is forwarded to the lab it spawns
    forwarded = forwarded_flags(RunOptions(**{item.name: value}))
    assert forwarded and all(arg.startswith(_SHARED_OPTIONS[item.name][1].default) for arg in forwarded)


def test_a_cli_flag_reaches_samplerparams_through_the_command_line(monkeypatch) -> None:
    seen: list[Any] = []
    monkeypatch.setattr(lab_command, "run_lab", lambda prompt, opts, **kwargs: seen.append(opts))
    result = CliRunner().invoke(app, ["lab", "Hi", "--top-a", "0.2", "--temp", "1.3", "--mirostat-lr", "0.3"])
    assert result.exit_code == 0, result.output
    params = sampler_params(seen[0])
    assert (params.top_a, params.temperature, params.mirostat_eta) == (0.2, 1.3, 0.3)


def test_every_shared_flag_round_trips_through_serve_to_the_lab(monkeypatch) -> None:
    changed = every_flag_changed()
    defaults = RunOptions()
    assert all(getattr(changed, item.name) != getattr(defaults, item.name) for item in dataclasses.fields(RunOptions))
    seen: list[Any] = []
    monkeypatch.setattr(lab_command, "run_lab", lambda prompt, opts, **kwargs: seen.append(opts))
    result = CliRunner().invoke(app, ["lab", "Hi", *forwarded_flags(changed)])
    assert result.exit_code == 0, result.output
    assert seen == [changed]
    assert forwarded_flags(defaults) == []


def test_no_command_and_lab_open_with_the_same_defaults(monkeypatch) -> None:
    seen: list[Any] = []
    monkeypatch.setattr(lab_command, "run_lab", lambda prompt, opts, **kwargs: seen.append((prompt, opts)))
    for args in ([], ["lab"]):
        assert CliRunner().invoke(app, args).exit_code == 0
    assert len(seen) == 2 and seen[0] == seen[1] == (lab_command.DEFAULT_LAB_PROMPT, RunOptions())


def test_a_range_is_checked_once_with_the_same_words_everywhere() -> None:
    with pytest.raises(ValueError, match=r"top_p must be in \[0, 1\], got 3.0"):
        SamplerParams(top_p=3)
    result = CliRunner().invoke(app, ["generate", "Hi", "--top-p", "3"])
    assert result.exit_code == 2 and "top_p must be in [0, 1], got 3.0" in result.output
    assert math.isinf(KNOBS_BY_NAME["temperature"].maximum)  # --temperature 9 is a value the knob holds
