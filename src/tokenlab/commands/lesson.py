"""`tokenlab lesson`: guided walks through the lab on the real model (lessons are TOML files)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tokenlab.commands.common import user_errors
from tokenlab.errors import UserError


def lesson(
    name: Annotated[Optional[str], typer.Argument(help="The lesson to run (see --list), or a lesson file's path. Default: the list, in the lab.", show_default=False)] = None,
    *,
    list_: Annotated[bool, typer.Option("--list", "-l", help="List the lessons (built-in and your own) and exit.")] = False,
    folder: Annotated[Optional[Path], typer.Option("--dir", help="A folder of your own lesson files (default: lessons/ in the data directory).", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Catalogue name or path to a .gguf file. Default: smollm2-135m.", show_default=False)] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", "-t", help="CPU threads. Default: all cores.", show_default=False)] = None,
) -> None:
    """Walk through the lecture's examples in the lab: each step sets the prompt and knobs and says what to look at.

    Lessons are TOML files: the built-in ones, plus yours in the data directory's lessons/ folder
    (TOKENLAB_DATA overrides it) or in --dir. In the lab, L goes to the next step, B back, E ends.
    """
    with user_errors():
        _lesson(name, list_, folder, model, threads)


def _lesson(name: str | None, list_: bool, folder: Path | None, model: str | None, threads: int | None) -> None:
    from tokenlab.commands.lab import run_app
    from tokenlab.engine import Engine, EngineOptions
    from tokenlab.engine.models import DEFAULT_MODEL, resolve_model
    from tokenlab.lab.controller import LabSettings
    from tokenlab.lab.lessons import LessonError, find_lessons, get_lesson, user_lessons_dir
    from tokenlab.tui.app import TokenLabApp

    if folder is not None and not folder.is_dir():
        raise UserError(f"--dir {folder} is not a directory; create it or name another")
    if list_:
        lessons, problems = find_lessons(folder)
        print_lessons(lessons, problems, folder or user_lessons_dir())
        if problems:
            raise typer.Exit(2)
        return
    try:
        chosen = get_lesson(name, folder) if name is not None else None
    except LessonError as exc:
        raise UserError(str(exc)) from None
    try:
        options = EngineOptions(n_threads=threads)
    except ValueError as exc:
        raise UserError(f"--{exc}") from None
    path = resolve_model(model or DEFAULT_MODEL)
    first = chosen.steps[0] if chosen is not None else None
    settings = LabSettings(
        prompt=first.prompt if first is not None else "The capital of France is",
        chat=first.chat if first is not None else False,
        params=first.params if first is not None else LabSettings().params,
        seed=first.seed if first is not None else 7,
        autostart=False,
    )
    app = TokenLabApp(lambda: Engine(path, options), settings)
    app.autosave_enabled = False  # a lesson is not the student's own session
    if chosen is not None:
        app.startup_lesson = chosen  # type: ignore[attr-defined]
    else:
        app.startup_note = "press L to pick a lesson"
    run_app(app)


def print_lessons(lessons: list, problems: list[str], folder: Path) -> None:
    """The lessons as a table (name, steps, title and summary, where the file is), then the bad files."""
    console = Console(highlight=False)
    table = Table(title="lessons", title_justify="left")
    table.add_column("name", style="bold cyan", no_wrap=True)
    table.add_column("steps", justify="right")
    table.add_column("what it shows")
    table.add_column("from")
    for item in lessons:
        table.add_row(Text(item.name), str(len(item.steps)), Text.assemble((item.title, "bold"), "\n", item.summary),
                      "built-in" if item.builtin else Text(item.path))
    console.print(table)
    console.print(Text(f"your own lessons: {folder} (tokenlab lesson NAME runs one)", style="dim"))
    err = Console(stderr=True, highlight=False)
    for problem in problems:
        err.print(Text.assemble(("error: ", "bold red"), problem), soft_wrap=True)
