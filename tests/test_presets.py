"""Saved sampler presets: the TOML file, round trips, errors and atomic writes."""

from __future__ import annotations

import math
import os
import tempfile
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenlab import presets
from tokenlab.presets import (
    PresetError,
    delete_preset,
    list_presets,
    load_preset,
    presets_path,
    save_preset,
)
from tokenlab.sampling.params import STAGE_NAMES, SamplerParams
from tokenlab.sampling.presets import BUILTIN_PRESETS


@pytest.fixture
def file(tmp_path: Path) -> Path:
    """A presets file that does not exist yet, in a directory that does not either."""
    return tmp_path / "config" / "presets.toml"


def test_presets_path_follows_env_else_platformdirs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TOKENLAB_CONFIG", str(tmp_path))
    assert presets_path() == tmp_path / "presets.toml"
    monkeypatch.delenv("TOKENLAB_CONFIG")
    monkeypatch.setattr(presets.platformdirs, "user_config_dir", lambda app: f"/cfg/{app}")
    assert presets_path() == Path("/cfg/tokenlab/presets.toml")


def test_default_path_is_used_when_none_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TOKENLAB_CONFIG", str(tmp_path / "cfg"))
    save_preset("mine", SamplerParams(top_k=7))
    assert (tmp_path / "cfg" / "presets.toml").exists()
    assert load_preset("mine") == SamplerParams(top_k=7)
    assert list_presets()["mine"] == "saved"


def test_builtins_without_a_file(file: Path) -> None:
    assert list_presets(file) == dict.fromkeys(BUILTIN_PRESETS, "built-in")
    for name in BUILTIN_PRESETS:
        assert load_preset(name, file) == SamplerParams.from_preset(name)
    assert not file.exists()


def test_unknown_preset_is_one_line_naming_it_and_the_choices(file: Path) -> None:
    save_preset("mine", SamplerParams(), file)
    with pytest.raises(PresetError) as info:
        load_preset("nope", file)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in message and "'nope'" in message
    assert all(name in message for name in [*BUILTIN_PRESETS, "mine"])


def test_save_writes_only_changed_knobs(file: Path) -> None:
    params = SamplerParams(
        temperature=1.25,
        top_k=0,
        logit_bias={7042: 2.0, 13: -math.inf},
        ban=(5, 6),
        samplers=("top_k", "temperature"),
        dry_sequence_breakers=((1, 2), (3,)),
    )
    assert save_preset("my name.v2", params, file) == file
    text = file.read_text()
    assert '[presets."my name.v2"]' in text
    assert 'logit_bias = { "7042" = 2.0, "13" = -inf }' in text
    assert 'samplers = ["top_k", "temperature"]' in text
    assert "dry_sequence_breakers = [[1, 2], [3]]" in text
    assert "top_p" not in text and "temperature_end" not in text
    table = tomllib.loads(text)["presets"]["my name.v2"]
    assert set(table) == {"temperature", "top_k", "logit_bias", "ban", "samplers",
                          "dry_sequence_breakers"}
    assert load_preset("my name.v2", file) == params


def test_default_params_save_an_empty_table(file: Path) -> None:
    save_preset("plain", SamplerParams(), file)
    assert tomllib.loads(file.read_text())["presets"] == {"plain": {}}
    assert load_preset("plain", file) == SamplerParams()


@pytest.mark.parametrize("name", ["", "x" * 41, "a/b", "new\nline", "quo\"te", " pad", "pad "])
def test_invalid_names_are_refused(file: Path, name: str) -> None:
    with pytest.raises(PresetError, match="invalid preset name"):
        save_preset(name, SamplerParams(), file)
    assert not file.exists()


def test_builtin_names_are_refused(file: Path) -> None:
    with pytest.raises(ValueError, match="built-in"):
        save_preset("greedy", SamplerParams(), file)
    with pytest.raises(PresetError, match="built-in"):
        delete_preset("llama.cpp", file)


def test_save_keeps_other_presets_and_replaces_its_own(file: Path) -> None:
    save_preset("a", SamplerParams(top_k=1), file)
    save_preset("b", SamplerParams(top_p=0.5), file)
    save_preset("a", SamplerParams(top_k=2), file)
    assert load_preset("a", file) == SamplerParams(top_k=2)
    assert load_preset("b", file) == SamplerParams(top_p=0.5)
    listed = list_presets(file)
    assert list(listed)[-2:] == ["a", "b"]
    assert listed["a"] == listed["b"] == "saved" and listed["greedy"] == "built-in"


def test_delete(file: Path) -> None:
    save_preset("a", SamplerParams(top_k=1), file)
    save_preset("b", SamplerParams(top_k=2), file)
    delete_preset("a", file)
    assert "a" not in list_presets(file)
    assert load_preset("b", file) == SamplerParams(top_k=2)
    with pytest.raises(PresetError, match="no saved preset 'a'"):
        delete_preset("a", file)


def test_broken_preset_can_still_be_deleted(file: Path) -> None:
    file.parent.mkdir(parents=True)
    file.write_text('[presets.bad]\ntop_k = "many"\n[presets.good]\ntop_k = 3\n')
    delete_preset("bad", file)
    assert list_presets(file)["good"] == "saved" and "bad" not in list_presets(file)


def test_hand_written_preset_gets_defaults_and_string_bias_keys(file: Path) -> None:
    file.parent.mkdir(parents=True)
    file.write_text(
        '[presets.hand]\ntemperature = 1\nsamplers = "top_k, temp"\n'
        'logit_bias = { "7" = 1.5, "9" = -inf }\n'
    )
    assert load_preset("hand", file) == SamplerParams(
        temperature=1.0, samplers=("top_k", "temperature"), logit_bias={7: 1.5, 9: -math.inf}
    )


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("top_kk = 3", "top_kk"),
        ('temperature = "hot"', "temperature"),
        ("top_k = true", "top_k"),
        ("top_p = 1.5", "top_p"),
        ("min_keep = 0", "min_keep"),
        ('samplers = ["top_k", "warp"]', "samplers"),
        ('logit_bias = { "x" = 1.0 }', "logit_bias"),
        ("dry_sequence_breakers = [[]]", "dry_sequence_breakers"),
        ("mirostat = 3", "mirostat"),
    ],
)
def test_bad_knobs_name_file_preset_and_key(file: Path, line: str, key: str) -> None:
    file.parent.mkdir(parents=True)
    file.write_text(f"[presets.broken]\n{line}\n")
    with pytest.raises(PresetError) as info:
        load_preset("broken", file)
    message = str(info.value)
    assert "\n" not in message
    assert str(file) in message and "'broken'" in message and repr(key) in message


def test_unknown_key_suggests_the_near_one(file: Path) -> None:
    file.parent.mkdir(parents=True)
    file.write_text("[presets.typo]\ntop_kk = 3\n")
    with pytest.raises(PresetError, match="did you mean 'top_k'"):
        load_preset("typo", file)


@pytest.mark.parametrize("text", ["[presets.x\ntop_k = 3\n", "presets = 3\n", "[presets]\nx = 1\n",
                                  "other = 1\n", "\udcff", "x = " + "[" * 5000 + "]" * 5000])
def test_corrupt_file_names_file_and_fix(file: Path, text: str) -> None:
    file.parent.mkdir(parents=True)
    file.write_bytes(text.encode("utf-8", "surrogateescape"))
    for call in (lambda: list_presets(file), lambda: load_preset("mine", file),
                 lambda: save_preset("new", SamplerParams(), file)):
        with pytest.raises(PresetError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and str(file) in message and "delete" in message
    assert file.read_bytes() == text.encode("utf-8", "surrogateescape")
    # the user's broken file does not take the built-in presets down with it
    assert load_preset("greedy", file) == SamplerParams.from_preset("greedy")


def test_a_file_with_a_utf8_bom_is_read(file: Path) -> None:
    file.parent.mkdir(parents=True)
    file.write_bytes("\ufeff[presets.mine]\ntop_k = 3\n".encode("utf-8"))
    assert load_preset("mine", file).top_k == 3


def test_interrupted_save_keeps_old_file_and_no_temp(
    file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_preset("old", SamplerParams(top_k=5), file)
    before = file.read_bytes()

    def fail(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        save_preset("new", SamplerParams(top_k=6), file)
    monkeypatch.undo()
    assert file.read_bytes() == before
    assert os.listdir(file.parent) == ["presets.toml"]
    assert list_presets(file)["old"] == "saved" and "new" not in list_presets(file)


# --------------------------------------------------------------------------------- round trip

_floats = st.floats(allow_nan=False, allow_infinity=False)
_params = st.builds(
    SamplerParams,
    temperature=st.floats(0, 1e6),
    top_k=st.integers(0, 2**40),
    top_p=st.floats(0, 1),
    frequency_penalty=_floats,
    temperature_end=st.none() | st.floats(0, 10),
    logit_bias=st.dictionaries(
        st.integers(0, 2**31), _floats | st.just(-math.inf), max_size=5
    ),
    ban=st.lists(st.integers(0, 2**31), max_size=5).map(tuple),
    samplers=st.permutations(STAGE_NAMES).flatmap(
        lambda order: st.integers(0, len(order)).map(lambda n: tuple(order[:n]))
    ),
    dry_sequence_breakers=st.lists(
        st.lists(st.integers(0, 2**31), min_size=1, max_size=4).map(tuple), max_size=4
    ).map(tuple),
)
_names = st.from_regex(r"[\w.-][\w .-]{0,38}[\w.-]|[\w.-]", fullmatch=True).filter(
    lambda name: name not in BUILTIN_PRESETS
)


@settings(max_examples=150, deadline=None)
@given(name=_names, params=_params, other=_params)
def test_round_trip(name: str, params: SamplerParams, other: SamplerParams) -> None:
    with tempfile.TemporaryDirectory() as directory:
        file = Path(directory) / "presets.toml"
        other_name = "other" if name != "other" else "other2"
        save_preset(other_name, other, file)
        save_preset(name, params, file)
        assert load_preset(name, file) == params
        assert load_preset(other_name, file) == other
        assert list_presets(file)[name] == "saved"
