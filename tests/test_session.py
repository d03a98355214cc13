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


def test_markdown_and_html_exports(engine: Engine, tmp_path) -> None:
    from html.parser import HTMLParser

    from tokenlab.export import to_html, to_markdown

    session = make_session(engine)
    steps = session.current_steps()
    markdown = to_markdown(session)
    assert "| # | token | raw p | final p | rank |" in markdown
    assert "".join(step.text for step in steps) in markdown
    assert markdown.count("\n| ") >= len(steps)

    page = to_html(session)

    class Checker(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.stack: list[str] = []
            self.tokens = 0
            self.external = []

        def handle_starttag(self, tag, attrs) -> None:  # noqa: ANN001
            attributes = dict(attrs)
            if tag not in ("meta", "br"):
                self.stack.append(tag)
            if attributes.get("class") == "t":
                self.tokens += 1
                assert attributes["style"].startswith("background:#")
            if attributes.get("src") or attributes.get("href"):
                self.external.append(tag)

        def handle_endtag(self, tag) -> None:  # noqa: ANN001
            assert self.stack and self.stack.pop() == tag, tag

    checker = Checker()
    checker.feed(page)
    assert checker.stack == [] and checker.external == []  # balanced, and no external assets
    assert checker.tokens == len([s for s in steps if s.text or s.eog])


def test_export_command(engine: Engine, tmp_path) -> None:
    import subprocess
    import sys

    path = save(make_session(engine), tmp_path / "s.json")
    out = subprocess.run([sys.executable, "-m", "tokenlab", "export", str(path), "-f", "html", "-o",
                          str(tmp_path / "s.html")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "s.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    md = subprocess.run([sys.executable, "-m", "tokenlab", "export", str(path), "-f", "md"],
                        capture_output=True, text=True, timeout=60)
    assert md.returncode == 0 and md.stdout.startswith("# tokenlab session")
    bad = subprocess.run([sys.executable, "-m", "tokenlab", "export", str(tmp_path / "nope.json")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not found" in bad.stderr and "Traceback" not in bad.stderr


def test_one_table_of_formats_chooses_by_suffix(engine: Engine, tmp_path) -> None:
    from tokenlab.export import EXPORT_CHOICES, EXPORT_FORMATS, format_for, to_html, to_markdown, write_session

    session = make_session(engine)
    suffixes = [suffix for file_format in EXPORT_FORMATS.values() for suffix in file_format.suffixes]
    assert len(suffixes) == len(set(suffixes))  # one suffix, one format
    written = {name: write_session(session, tmp_path / name) for name in ("a.md", "b.HTML", "c.json", "plain")}
    assert written["a.md"].read_text(encoding="utf-8") == to_markdown(session)
    assert written["b.HTML"].read_text(encoding="utf-8") == to_html(session)
    for name in ("c.json", "plain"):  # the session itself, loadable again; a bare name is a session too
        assert load(written[name]).current == session.current and format_for(name).loadable
    with pytest.raises(ValueError, match="screen"):
        write_session(session, tmp_path / "shot.svg")  # a screenshot: only the lab screen takes it
    with pytest.raises(ValueError) as unknown:
        write_session(session, tmp_path / "notes.txt")
    assert all(suffix in str(unknown.value) for suffix in suffixes) and "'.txt'" in str(unknown.value)
    assert not (tmp_path / "notes.txt").exists() and not (tmp_path / "shot.svg").exists()
    # tokenlab export offers what renders from a saved session and is not the session itself
    assert set(EXPORT_CHOICES) == {"md", "html"}


def test_a_long_run_saves_without_deep_nesting(tmp_path) -> None:
    tree = GenerationTree("x")
    steps = [Step(index=i, id=i % 7, piece="a", text="a", logit=0.0, prob=0.5, final_prob=0.5, rank=1,
                  entropy=1.0, final_entropy=1.0, top=()) for i in range(5000)]
    tree.add(steps, stop_reason="max_tokens")
    session = Session(prompt="x", tree=tree, current=tuple(step.id for step in steps))
    loaded = load(save(session, tmp_path / "long.json"))
    assert loaded.current_steps() == steps and len(loaded.tree) == 5000


def test_html_tokens_are_shaded_without_a_stacking_context(engine: Engine) -> None:
    """A filter on a token makes it a stacking context: its tooltip would be drawn under the next tokens."""
    from tokenlab.export import to_html

    page = to_html(make_session(engine))
    style = page[page.index("<style>"):page.index("</style>")]
    assert "filter" not in style and "opacity" not in style
    assert ".t:nth-child(odd)" in style  # odd tokens are still shaded (a shadow inside the box)
    hover = style[style.index(".t:hover {"):]
    assert "z-index" in hover[:hover.index("}")]  # the hovered token, tooltip and all, comes to the front


def test_each_lab_autosaves_to_its_own_slot_and_restore_takes_the_newest(tmp_path, monkeypatch) -> None:
    from tokenlab.lab.session import autosave_path, autosaves, new_autosave_slot, prune_autosaves

    monkeypatch.setenv("TOKENLAB_DATA", str(tmp_path))
    first, second = new_autosave_slot(), new_autosave_slot()
    assert first != second and autosave_path(first) != autosave_path(second)
    save(Session(prompt="the second lab"), autosave_path(second))
    save(Session(prompt="the first lab"), autosave_path(first))  # neither overwrites the other
    os.utime(autosave_path(first), (1, 1))  # the first lab quit long ago
    assert load(autosave_path()).prompt == "the second lab"
    assert len(autosaves()) == 2
    prune_autosaves(keep=1)
    assert autosaves() == [autosave_path(second)]


def test_a_session_keeps_its_model_and_attention_and_older_files_still_load(engine: Engine, tmp_path) -> None:
    from tokenlab.commands.lab import adopt_session
    from tokenlab.commands.options import RunOptions, engine_options_from

    session = make_session(engine)
    session.model_path = str(engine.model_path)
    session.flash_attention = True
    loaded = load(save(session, tmp_path / "s.json"))
    assert loaded.flash_attention is True and loaded.model_path == str(engine.model_path)

    opts = RunOptions()  # no --model, no --flash-attn: the session's own
    adopt_session(opts, loaded)
    assert opts.model == str(engine.model_path) and opts.flash_attn is True and opts.chat is False
    assert engine_options_from(opts).flash_attention is True
    chosen = RunOptions(model="smollm2-135m", flash_attn=False)  # flags win
    adopt_session(chosen, loaded)
    assert chosen.model == "smollm2-135m" and chosen.flash_attn is False
    assert engine_options_from(RunOptions()).flash_attention is False  # not given: off, never llama.cpp's auto

    moved = Session(prompt=PROMPT, model_path=str(tmp_path / "gone.gguf"))
    kept = RunOptions()
    adopt_session(kept, moved)
    assert kept.model is None  # a model file that is gone: the default model, and the lab says so

    older = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    del older["flash_attn"]  # written before sessions recorded it
    (tmp_path / "older.json").write_text(json.dumps(older), encoding="utf-8")
    assert load(tmp_path / "older.json").flash_attention is False
    older["flash_attn"] = "yes"
    (tmp_path / "bad.json").write_text(json.dumps(older), encoding="utf-8")
    with pytest.raises(SessionError, match="flash_attn"):
        load(tmp_path / "bad.json")
