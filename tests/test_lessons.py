"""Lessons: the files parse, bad files get one clear line, and every built-in lesson runs headless on the real model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokenlab.cli import app as cli_app
from tokenlab.engine import Engine
from tokenlab.lab.controller import LabSettings
from tokenlab.lab.lessons import LessonError, builtin_lessons, find_lessons, get_lesson, parse_lesson
from tokenlab.sampling import SamplerParams
from tokenlab.tui.app import TokenLabApp
from tokenlab.tui.screens.lab import LabScreen
from tokenlab.tui.screens.lesson import LessonPanel
from tui_helpers import wait_for

GOOD = """
title = "A lesson"
summary = "what it shows"
knobs = { top_k = 0 }

[[step]]
prompt = "Hello"
knobs = { temperature = 0.5 }
tokens = 3
say = "look here"

[[step]]
view = "chart"
say = "and here"
"""


def test_a_lesson_file_sets_each_step_from_the_defaults() -> None:
    lesson = parse_lesson(GOOD, "a", "a.toml")
    first, second = lesson.steps
    assert first.params == SamplerParams(top_k=0, temperature=0.5)
    assert second.params == SamplerParams(top_k=0)  # knobs do not carry over from step to step
    assert second.prompt == "Hello" and second.view == "chart" and first.tokens == 3 and first.seed == 7


@pytest.mark.parametrize(("text", "problem"), [
    ("title = 'x'", "bad.toml: a lesson needs at least one [[step]] table"),
    ("title = 'x'\n[[step]]\nsay = 'a'", "bad.toml, step 1: no prompt"),
    ("title = 'x'\n[[step]]\nprompt = 'p'\nsay = 'a'\nknobs = { temprature = 1 }",
     "bad.toml, step 1, knobs: unknown knob 'temprature'; did you mean 'temperature'?"),
    ("title = 'x'\n[[step]]\nprompt = 'p'\nsay = 'a'\nknobs = { top_p = 2 }", "bad.toml, step 1, knobs: top_p must be in"),
    ("title = 'x'\n[[step]]\nprompt = 'p'\nsay = 'a'\nview = 'movie'", "view must be one of text, chart"),
    ("title = 'x'\n[[step]]\nprompt = 'p'\nsay = 'a'\ntokns = 3", "unknown key 'tokns'; did you mean 'tokens'?"),
    ("title = 'x'\n[[step]]\nprompt = 'p'", "bad.toml, step 1: 'say' is missing"),
    ("title = [", "bad.toml: not valid TOML"),
])
def test_a_bad_lesson_file_is_one_line_naming_the_file(text: str, problem: str) -> None:
    with pytest.raises(LessonError) as caught:
        parse_lesson(text, "bad", "bad.toml")
    message = str(caught.value)
    assert problem in message and "\n" not in message


def test_list_shows_built_in_and_teacher_lessons_and_names_a_bad_file(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text(GOOD, encoding="utf-8")
    (tmp_path / "broken.toml").write_text("title = 'x'\n[[step]]\nsay = 'a'\n", encoding="utf-8")
    lessons, problems = find_lessons(tmp_path)
    assert {lesson.name for lesson in lessons} >= {"greedy", "temperature", "mine"}
    assert problems == [f"{tmp_path / 'broken.toml'}, step 1: no prompt (the first step must set one; later ones keep the last)"]
    result = CliRunner().invoke(cli_app, ["lesson", "--list", "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "greedy" in result.stdout and "mine" in result.stdout
    assert "broken.toml, step 1: no prompt" in result.stderr


def test_an_unknown_lesson_is_one_line_and_exit_2() -> None:
    result = CliRunner().invoke(cli_app, ["lesson", "gredy"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: no lesson called 'gredy'; did you mean 'greedy'? tokenlab lesson --list shows them"]


def test_the_user_lessons_folder_adds_and_replaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENLAB_DATA", str(tmp_path))
    (tmp_path / "lessons").mkdir()
    (tmp_path / "lessons" / "greedy.toml").write_text(GOOD, encoding="utf-8")
    assert get_lesson("greedy").title == "A lesson"  # the teacher's file replaces the built-in


@pytest.mark.parametrize("lesson", builtin_lessons(), ids=lambda lesson: lesson.name)
async def test_a_built_in_lesson_runs_from_start_to_end(engine: Engine, lesson) -> None:
    settings = LabSettings(prompt=lesson.steps[0].prompt, chat=False, seed=7, autostart=False)
    app = TokenLabApp(engine, settings)
    app.autosave_enabled = False
    app.startup_lesson = lesson  # type: ignore[attr-defined]
    try:
        async with app.run_test(size=(120, 36)) as pilot:
            lab = app.lab
            await wait_for(pilot, lambda: lab.lesson is not None)
            for number, step in enumerate(lesson.steps):
                guide = lab.lesson
                assert guide is not None and guide.index == number
                await wait_for(pilot, lambda: guide.ready and (lab.frontier is not None or lab.stop_reason == "eos"),
                               timeout=180)
                # the lab shows exactly the step's prompt, knobs and tokens
                assert lab.prompt == step.prompt and lab.params == step.params and lab.seed == step.seed
                assert len(lab.steps) == step.tokens or lab.stop_reason == "eos"
                if lab.stop_reason != "eos":
                    assert lab.frontier is not None and lab.frontier.params == step.params
                    assert lab.frontier.index == step.tokens
                panel = str(lab.query_one(LessonPanel).render())
                assert step.say[:40] in panel
                if os.environ.get("TOKENLAB_LESSON_DUMP"):
                    dump(lab, lesson, number)
                if step.view in ("stages", "rollouts", "score"):
                    await wait_for(pilot, lambda: not isinstance(app.screen, LabScreen), timeout=300)
                    await pilot.press("escape")
                    await wait_for(pilot, lambda: isinstance(app.screen, LabScreen))
                await pilot.press("L")
            await wait_for(pilot, lambda: lab.lesson is None)
            assert not lab.query_one(LessonPanel).display
            await pilot.press("q")
    finally:
        assert app.controller.stopped.wait(10)


def dump(lab: LabScreen, lesson, number: int) -> None:
    """Print what a lesson step shows (for writing the lessons' texts)."""
    text = "".join(step.text for step in lab.steps)
    print(f"\n=== {lesson.name} step {number + 1}: {text!r}")
    if lab.frontier is not None:
        top = ", ".join(f"{c.text!r} {c.prob:.3f}/{c.final_prob:.3f}" for c in lab.frontier.candidates[:6])
        print(f"    survivors {lab.frontier.survivors} stages {lab.frontier.stages} H {lab.frontier.entropy:.2f}"
              f"->{lab.frontier.final_entropy:.2f}\n    {top}")
    ranks = [step.rank for step in lab.steps]
    if ranks:
        print(f"    ranks>1000: {sum(r > 1000 for r in ranks)}, rank1: {sum(r == 1 for r in ranks)}/{len(ranks)}")


async def test_l_picks_a_lesson_in_the_lab_and_b_e_go_back_and_end(engine: Engine) -> None:
    from textual.widgets import OptionList

    from tokenlab.tui.screens.lesson import LessonPicker

    app = TokenLabApp(engine, LabSettings(prompt="Hello", chat=False, seed=3, autostart=False))
    app.autosave_enabled = False
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            lab = app.lab
            await wait_for(pilot, lambda: lab.frontier is not None)
            await pilot.press("L")
            await wait_for(pilot, lambda: isinstance(app.screen, LessonPicker))
            names = [option.id for option in app.screen.query_one(OptionList).options]
            assert names[:2] == ["greedy", "temperature"]
            await pilot.press("down", "enter")  # temperature
            await wait_for(pilot, lambda: lab.lesson is not None and lab.lesson.ready)
            temperature = get_lesson("temperature")
            assert lab.prompt == temperature.steps[0].prompt and lab.params == temperature.steps[0].params
            await pilot.press("L")
            await wait_for(pilot, lambda: lab.lesson.index == 1 and lab.lesson.ready)
            assert lab.params.temperature == 0.3
            await pilot.press("B")
            await wait_for(pilot, lambda: lab.lesson.index == 0 and lab.lesson.ready)
            assert lab.params == temperature.steps[0].params
            await pilot.press("E")
            assert lab.lesson is None and not lab.query_one(LessonPanel).display
            await pilot.press("q")
    finally:
        assert app.controller.stopped.wait(10)
