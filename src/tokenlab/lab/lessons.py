"""Lessons: guided walks through the lab, each a TOML file of steps (prompt, knobs, what to look at).

A lesson file holds a `title`, a one-line `summary`, optional lesson-wide `knobs` and `seed`, and a list
of `[[step]]` tables. Each step sets the prompt and the knobs (SamplerParams fields, on top of the
defaults and the lesson's knobs, so a step never depends on what the student turned before it), samples
`tokens` tokens, shows a `view`, and says in a few sentences what to look at. Built-in lessons ship in
the package (tokenlab/lessons/); a teacher adds more as files in the user data directory's `lessons/`
folder (or any folder given with --dir); a file there with a built-in's name replaces it.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from tokenlab.sampling import SamplerParams, order_preset

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the tomli backport
    import tomli as tomllib

VIEWS = ("text", "chart", "stages", "rollouts", "score")
"""What a step shows: the text, the distribution chart (d), the stage view (i), rollouts (R) or GLTR (g)."""
_LESSON_KEYS = {"title", "summary", "knobs", "seed", "chat", "step"}
_STEP_KEYS = {"say", "prompt", "chat", "seed", "knobs", "tokens", "view", "score", "score_generated"}
_KNOB_FIELDS = tuple(f.name for f in dataclasses.fields(SamplerParams))
MAX_TOKENS = 512
"""The most tokens one step may sample before it pauses."""


class LessonError(ValueError):
    """A lesson file that cannot be used; the message names the file and the problem in one line."""


@dataclass(frozen=True)
class LessonStep:
    """One stop of a lesson: the lab is set up like this, then it waits for the student."""

    say: str
    """Two or three sentences: what to look at."""
    prompt: str
    chat: bool
    seed: int
    params: SamplerParams
    """The knobs: defaults, then the lesson's knobs, then the step's."""
    tokens: int = 0
    """Tokens sampled before the lab pauses (0: paused at the first step, the live distribution shown)."""
    view: str = "text"
    score: str | None = None
    """With view "score": the text GLTR scores."""
    score_generated: bool = False
    """With view "score": score the text this step generated instead."""


@dataclass(frozen=True)
class Lesson:
    """A named walk through the lab."""

    name: str
    """The file's name without .toml: what `tokenlab lesson NAME` takes."""
    title: str
    summary: str
    steps: tuple[LessonStep, ...]
    path: str = field(default="", compare=False)
    """Where the file is (shown by --list)."""
    builtin: bool = False


def user_lessons_dir() -> Path:
    """The teacher's lessons folder: $TOKENLAB_DATA/lessons/, else lessons/ in the user data directory."""
    import platformdirs

    base = os.environ.get("TOKENLAB_DATA") or platformdirs.user_data_dir("tokenlab")
    return Path(base) / "lessons"


def parse_lesson(text: str, name: str, where: str) -> Lesson:
    """A Lesson from the TOML text of a file; a LessonError names `where` and the first problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LessonError(f"{where}: not valid TOML ({exc})") from None
    except RecursionError:
        raise LessonError(f"{where}: nests too deeply to read") from None
    _unknown(data, _LESSON_KEYS, where)
    title = _string(data, "title", where, required=True)
    summary = _string(data, "summary", where) or ""
    seed = _integer(data, "seed", where, default=7)
    chat = _boolean(data, "chat", where, default=False)
    base = _knobs(data.get("knobs", {}), SamplerParams(), f"{where}, knobs")
    raw_steps = data.get("step")
    if not isinstance(raw_steps, list) or not raw_steps or not all(isinstance(s, dict) for s in raw_steps):
        raise LessonError(f"{where}: a lesson needs at least one [[step]] table")
    steps: list[LessonStep] = []
    prompt: str | None = None
    for number, raw in enumerate(raw_steps, start=1):
        at = f"{where}, step {number}"
        _unknown(raw, _STEP_KEYS, at)
        prompt = _string(raw, "prompt", at) or prompt
        if not prompt or not prompt.strip():
            raise LessonError(f"{at}: no prompt (the first step must set one; later ones keep the last)")
        view = _string(raw, "view", at) or "text"
        if view not in VIEWS:
            raise LessonError(f"{at}: view must be one of {', '.join(VIEWS)}, got {view!r}")
        score = _string(raw, "score", at)
        score_generated = _boolean(raw, "score_generated", at, default=False)
        if view == "score" and not score and not score_generated:
            raise LessonError(f"{at}: view 'score' needs a score text or score_generated = true")
        tokens = _integer(raw, "tokens", at, default=0)
        if not 0 <= tokens <= MAX_TOKENS:
            raise LessonError(f"{at}: tokens must be between 0 and {MAX_TOKENS}, got {tokens}")
        if score_generated and tokens == 0:
            raise LessonError(f"{at}: score_generated needs tokens > 0 (there is nothing generated to score)")
        say = _string(raw, "say", at, required=True)
        steps.append(LessonStep(
            say=" ".join(say.split()), prompt=prompt, chat=_boolean(raw, "chat", at, default=chat),
            seed=_integer(raw, "seed", at, default=seed), params=_knobs(raw.get("knobs", {}), base, f"{at}, knobs"),
            tokens=tokens, view=view, score=score, score_generated=score_generated,
        ))
    return Lesson(name=name, title=title, summary=" ".join(summary.split()), steps=tuple(steps), path=where)


def load_lesson_file(path: Path, *, builtin: bool = False) -> Lesson:
    """The lesson in `path`, or a LessonError naming the file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise LessonError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise LessonError(f"{path}: not UTF-8 text") from None
    return dataclasses.replace(parse_lesson(text, lesson_name(path), str(path)), builtin=builtin)


def lesson_name(path: Path) -> str:
    """A lesson's name: its file name without .toml and without a leading order number ("01-greedy" -> "greedy")."""
    return re.sub(r"^\d+[-_ ]", "", path.stem)


def builtin_lessons() -> list[Lesson]:
    """The lessons shipped with tokenlab, in file-name order."""
    folder = resources.files("tokenlab") / "lessons"
    lessons = []
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if entry.name.endswith(".toml"):
            with resources.as_file(entry) as path:
                lessons.append(load_lesson_file(Path(path), builtin=True))
    return lessons


def find_lessons(folder: Path | None = None) -> tuple[list[Lesson], list[str]]:
    """Every lesson (built-in, then the folder's, which replace built-ins of the same name) and the problems.

    `folder` defaults to the user lessons folder; a bad file there is skipped and its one-line problem
    returned, so one broken file does not hide the others.
    """
    by_name = {lesson.name: lesson for lesson in builtin_lessons()}
    problems: list[str] = []
    folder = user_lessons_dir() if folder is None else folder
    if folder.is_dir():
        for path in sorted(folder.glob("*.toml")):
            try:
                lesson = load_lesson_file(path)
            except LessonError as exc:
                problems.append(str(exc))
                continue
            by_name[lesson.name] = lesson
    return list(by_name.values()), problems


def get_lesson(name: str, folder: Path | None = None) -> Lesson:
    """The lesson called `name` (or at the path `name`), or a LessonError listing the known names."""
    if name.endswith(".toml") or os.sep in name:
        return load_lesson_file(Path(name).expanduser())
    lessons, problems = find_lessons(folder)
    for lesson in lessons:
        if lesson.name == name:
            return lesson
    names = [lesson.name for lesson in lessons]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    broken = f" ({len(problems)} lesson file(s) could not be read: tokenlab lesson --list says why)" if problems else ""
    raise LessonError(f"no lesson called {name!r}; {hint}tokenlab lesson --list shows them{broken}")


# ---------------------------------------------------------------------------------------- checks


def _unknown(table: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        close = difflib.get_close_matches(extra[0], sorted(allowed), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(allowed))}"
        raise LessonError(f"{where}: unknown key {extra[0]!r}{hint}")


def _string(table: dict[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    value = table.get(key)
    if value is None:
        if required:
            raise LessonError(f"{where}: {key!r} is missing")
        return None
    if not isinstance(value, str):
        raise LessonError(f"{where}: {key!r} must be a string, got {value!r}")
    return value


def _integer(table: dict[str, Any], key: str, where: str, *, default: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise LessonError(f"{where}: {key!r} must be a whole number, got {value!r}")
    return value


def _boolean(table: dict[str, Any], key: str, where: str, *, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise LessonError(f"{where}: {key!r} must be true or false, got {value!r}")
    return value


def _knobs(table: object, base: SamplerParams, where: str) -> SamplerParams:
    """`base` with the knobs of a TOML table; `samplers` may be an order preset's name."""
    if not isinstance(table, dict):
        raise LessonError(f"{where}: must be a table of knobs, e.g. {{ temperature = 0.7 }}")
    changes: dict[str, Any] = {}
    for key, value in table.items():
        if key not in _KNOB_FIELDS or key in ("logit_bias", "ban"):
            close = difflib.get_close_matches(key, _KNOB_FIELDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise LessonError(f"{where}: unknown knob {key!r}{hint}")
        if key == "samplers" and isinstance(value, str):
            try:
                value = order_preset(value)
            except ValueError as exc:
                raise LessonError(f"{where}: {exc}") from None
        elif key == "samplers" and isinstance(value, list):
            value = tuple(value)
        changes[key] = value
    try:
        return base.replace(**changes)
    except (ValueError, TypeError) as exc:
        raise LessonError(f"{where}: {exc}") from None
