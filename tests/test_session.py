"""Sessions: byte-identical round trips, atomic saves, clear errors for files that are not sessions."""

from __future__ import annotations

import json
import math
import os

import pytest

from tokenlab.engine import Engine
from tokenlab.lab import Generation
from tokenlab.lab.session import Session, SessionError, dumps, load, save
from tokenlab.lab.step import Step
from tokenlab.lab.tree import GenerationTree
from tokenlab.sampling import SamplerParams

PROMPT = "The capital of France is"


def make_session(engine: Engine) -> Session:
    params = SamplerParams(top_k=5, logit_bias={engine.eos_id: -math.inf}, mirostat=2)
    tree = GenerationTree(PROMPT)
    generation = Generation(engine, engine.format_prompt(PROMPT, chat=False), params, seed=4, max_tokens=5)
    first = list(generation.run())
    tree.add(first, stop_reason=generation.stop_reason)
    generation.choose(2, first[2].top[1].id)
    second = [*generation.steps, *generation.run()]
    tree.add(second, stop_reason=generation.stop_reason)
    rollout = Step(index=len(first), id=first[0].id, piece="x", text="x", logit=math.nan, prob=math.nan,
                   final_prob=0.25, rank=0, entropy=math.nan, final_entropy=math.nan, top=())
    tree.add([*first, rollout], stop_reason="rollout")
    return Session(prompt=PROMPT, params=params, chat=False, model=engine.name, model_path="m.gguf", seed=4,
                   max_tokens=5, tree=tree, current=tuple(step.id for step in second))


def test_save_load_save_is_byte_identical(engine: Engine, tmp_path) -> None:
    session = make_session(engine)
    path = save(session, tmp_path / "s.json")
    loaded = load(path)
    assert dumps(loaded) == path.read_text(encoding="utf-8")
    save(loaded, tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()
    # the view is restored exactly, without the model
    assert loaded.params == session.params and loaded.current == session.current
    assert loaded.current_steps() == session.current_steps()
    assert loaded.tree.runs == 3 and len(loaded.tree.branches()) == len(session.tree.branches())
    original_first = session.current_steps()[0]
    assert loaded.current_steps()[0].top == original_first.top
    assert loaded.current_steps()[-1].sampler_state == session.current_steps()[-1].sampler_state


def test_an_interrupted_save_leaves_the_old_file(engine: Engine, tmp_path, monkeypatch) -> None:
    session = make_session(engine)
    path = save(session, tmp_path / "s.json")
    before = path.read_bytes()

    def broken_replace(src, dst):  # noqa: ANN001, ANN202
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    session.prompt = "something else"
    with pytest.raises(OSError):
        save(session, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


def test_files_that_are_not_sessions_get_one_clear_line(tmp_path) -> None:
    cases = {
        "missing.json": None,
        "corrupt.json": "{ not json",
        "foreign.json": json.dumps({"hello": "world"}),
        "future.json": json.dumps({"format": "tokenlab-session", "version": 99}),
        "damaged.json": json.dumps({"format": "tokenlab-session", "version": 1, "prompt": "x"}),
    }
    expected = {
        "missing.json": "not found",
        "corrupt.json": "not valid JSON",
        "foreign.json": "not a tokenlab session",
        "future.json": "version 99",
        "damaged.json": "damaged",
    }
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(SessionError) as info:
            load(tmp_path / name)
        message = str(info.value)
        assert expected[name] in message and "\n" not in message
