"""The lab's knobs: bounds shared with SamplerParams (and so the CLI), stages, changed knobs."""

from __future__ import annotations

import math

import pytest

from tokenlab.lab.knobs import KNOBS, KNOBS_BY_NAME, knob_changed, knob_enabled, nudge, toggle_stage
from tokenlab.sampling import FIELD_RANGES, SamplerParams


def test_a_value_the_command_line_accepts_is_kept_by_the_knob() -> None:
    hot = SamplerParams(temperature=9.0)  # what --temperature 9 gives
    assert nudge(hot, "temperature", 1).temperature == pytest.approx(9.05)
    assert nudge(hot, "temperature", -1).temperature == pytest.approx(8.95)
    wide = SamplerParams(top_k=5000, frequency_penalty=-3.0, penalty_last_n=8192)
    assert nudge(wide, "top_k", 1).top_k == 5001
    assert nudge(wide, "frequency_penalty", -1).frequency_penalty == pytest.approx(-3.05)
    assert nudge(wide, "penalty_last_n", 1).penalty_last_n == 8193


@pytest.mark.parametrize("knob", KNOBS, ids=lambda knob: knob.name)
def test_every_knob_has_the_parameters_bounds(knob) -> None:
    bounds = knob.range
    if knob.name in FIELD_RANGES:
        assert bounds == FIELD_RANGES[knob.name]
    assert knob.integer == bounds.integer
    assert knob.minimum == (-math.inf if bounds.low is None else bounds.low + (knob.fine if bounds.low_open else 0))
    assert knob.maximum == (math.inf if bounds.high is None else bounds.high - (knob.fine if bounds.high_open else 0))
    # turning it all the way down or up (coarse, many times) always gives valid params
    for direction in (-1, 1):
        params = SamplerParams()
        for _ in range(30):
            params = nudge(params, knob.name, direction * 50, coarse=True)
        value = getattr(params, knob.name)
        limit = knob.minimum if direction < 0 else knob.maximum
        if math.isfinite(limit):
            assert value == pytest.approx(limit)
        SamplerParams.from_dict(params.to_dict())  # validates again


def test_min_keep_is_not_a_top_k_knob() -> None:
    min_keep = KNOBS_BY_NAME["min_keep"]
    assert min_keep.stage == "" and set(min_keep.stages) == {"top_k", "typical_p", "top_p", "min_p"}
    without_top_k = toggle_stage(SamplerParams(), "top_k")
    assert "top_k" not in without_top_k.samplers
    assert knob_enabled(without_top_k, min_keep)  # top-p and min-p still keep at least min_keep
    assert not knob_enabled(without_top_k, KNOBS_BY_NAME["top_k"])
    only_temperature = SamplerParams(samplers=("temperature",))
    assert not knob_enabled(only_temperature, min_keep)


def test_changed_knobs_are_told_apart() -> None:
    params = SamplerParams(temperature=1.1, top_k=40)
    changed = {knob.name for knob in KNOBS if knob_changed(params, knob)}
    assert changed == {"temperature"}


def test_a_typed_knob_value_is_checked_against_its_bounds() -> None:
    from tokenlab.lab.knobs import parse_knob_value

    assert parse_knob_value("temperature", " 1.25 ") == 1.25
    assert parse_knob_value("top_k", "12") == 12
    assert parse_knob_value("temperature_end", "off") is None  # an optional knob
    with pytest.raises(ValueError, match="top-k takes a whole number, got '1.5'"):
        parse_knob_value("top_k", "1.5")
    with pytest.raises(ValueError, match=r"mirostat must be an integer in \[0, 2\], got 3"):
        parse_knob_value("mirostat", "3")
    with pytest.raises(ValueError, match="temperature must be in"):
        parse_knob_value("temperature", "nan")
