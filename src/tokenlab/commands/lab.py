"""`tokenlab lab` (and `tokenlab` with no command): the terminal lab."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.text import Text

from tokenlab.commands.common import err_console
from tokenlab.commands.options import (
    RunOptions,
    check_options,
    engine_options_from,
    load_engine,
    read_prompt,
    sampler_params,
    with_run_options,
)
from tokenlab.errors import UserError
from tokenlab.sampling.constraint import constraint_of


DEFAULT_LAB_PROMPT = "Write a short story about a lighthouse keeper."


@with_run_options
def lab(
    prompt: Annotated[Optional[str], typer.Argument(help="Prompt to start from ('-' reads standard input). Default: a short-story prompt.", show_default=False)] = None,
    *,
    paused: Annotated[bool, typer.Option("--paused", help="Open paused at the first step instead of generating at once.", rich_help_panel="Output")] = False,
    load: Annotated[Optional[Path], typer.Option("--load", help="Open a saved session (its prompt, knobs and tree) without re-running the model.", rich_help_panel="Output")] = None,
    save: Annotated[Optional[Path], typer.Option("--save", help="Where s saves the session (default: tokenlab-session.json).", rich_help_panel="Output")] = None,
    restore: Annotated[bool, typer.Option("--restore", help="Open the session autosaved when the lab last quit.", rich_help_panel="Output")] = False,
    files_dir: Annotated[Optional[Path], typer.Option("--files-dir", help="Read (g with a path) and write (s) files only inside this directory, by relative paths (tokenlab serve sets it).", rich_help_panel="Output")] = None,
    opts: RunOptions,
) -> None:
    """Open the lab: live heat-coloured generation with hotkey knobs (press ? inside for every key)."""
    session = None
    if restore:
        from tokenlab.lab.session import autosave_path

        if load is not None:
            raise UserError("--restore and --load both name a session; give one")
        load = autosave_path()  # the newest of the labs that quit
        if not load.exists():
            raise UserError(f"there is no autosaved session yet (in {load.parent}); it is written when the lab quits")
    if load is not None:
        from tokenlab.lab.session import SessionError
        from tokenlab.lab.session import load as load_session

        try:
            session = load_session(load)
        except SessionError as exc:
            raise UserError(str(exc)) from None
        prompt = session.prompt
        adopt_session(opts, session)
    if prompt == "-":
        prompt = read_prompt(prompt)
        keyboard_from_terminal()
    run_lab(prompt if prompt is not None else DEFAULT_LAB_PROMPT, opts, paused=paused or session is not None,
            session=session, save_path=str(save) if save is not None else (str(load) if load is not None else None),
            files_dir=files_dir)


def adopt_session(opts: RunOptions, session: Any) -> None:
    """Run a loaded session as it was made: its chat mode, and (unless --model, --flash-attn or --engine say
    otherwise) the model file and attention its steps were recorded with, where that file is still there."""
    opts.chat = session.chat
    if opts.engine is not None:
        return
    if opts.model is None and session.model_path and Path(session.model_path).is_file():
        opts.model = session.model_path
    if opts.flash_attn is None:
        opts.flash_attn = session.flash_attention


def keyboard_from_terminal() -> None:
    """After the prompt came on standard input, read the lab's keys from the terminal (/dev/tty) instead."""
    import os

    try:
        terminal = os.open("/dev/tty", os.O_RDWR)
    except OSError:
        raise UserError(
            "the lab needs a keyboard, but standard input held the prompt and there is no terminal; "
            "pass the prompt as an argument"
        ) from None
    os.dup2(terminal, 0)
    os.close(terminal)
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 - stays open for the app


def run_lab(prompt: str, opts: RunOptions, *, paused: bool = False, session: Any = None,
            save_path: str | None = None, files_dir: Path | None = None) -> None:
    """Check the flags, make sure the model file is there (pulling it with progress), then run the TUI."""
    from tokenlab.engine import Engine
    from tokenlab.engine.models import resolve_model
    from tokenlab.lab.controller import LabSettings
    from tokenlab.tui.app import TokenLabApp

    check_options(opts)
    if not prompt.strip():
        raise UserError("the prompt is empty; give some text, e.g. tokenlab lab 'Once upon a time'")
    if files_dir is not None and not files_dir.is_dir():
        raise UserError(f"--files-dir {files_dir} is not a directory; create it or name another")
    engine_options = engine_options_from(opts)
    path = resolve_model(opts.model) if opts.engine is None else None
    settings = LabSettings(
        prompt=prompt,
        chat=opts.chat,
        params=sampler_params(RunOptions(**{**opts.__dict__, "logit_bias": [], "ban": []})),
        seed=opts.seed if opts.seed is not None else secrets.randbits(32),
        max_tokens=opts.max_tokens,
        top_n=opts.top_n,
        autostart=not paused,
        session=session,
        save_path=save_path,
        files_dir=str(files_dir.resolve()) if files_dir is not None else None,
    )
    if session is not None:
        settings.params = session.params
        constraint = constraint_of(session.params)
        if constraint is not None:  # checked before the lab owns the terminal (llama.cpp prints parse errors)
            from tokenlab.engine.grammar import check_constraint_text

            check_constraint_text(*constraint)
        settings.seed = session.seed
        settings.max_tokens = session.max_tokens

    def prepare(engine: Engine) -> Any:
        try:
            return sampler_params(opts, engine)  # token names in --logit-bias/--ban need the vocabulary
        except UserError as exc:
            raise ValueError(f"{exc}; the lab runs without these biases") from None

    if session is None:
        settings.prepare = prepare

    def load() -> Engine:
        # runs on the controller thread: the screen is up while the model loads, and every decode of
        # this process happens on that one thread
        if opts.engine is not None:
            return load_engine(opts)  # type: ignore[no-any-return]
        assert path is not None
        return Engine(path, engine_options)

    app = TokenLabApp(load, settings)
    if session is None:
        from tokenlab.lab.session import autosave_path

        if autosave_path().exists():
            app.startup_note = "your last session was autosaved: tokenlab lab --restore brings it back"
    elif path is not None and session.model_path and Path(session.model_path).name != path.name:
        app.startup_note = (f"this session was made with {session.model or Path(session.model_path).name}; "
                            f"it is shown with {path.name}, which makes any new steps (--model chooses)")
    run_app(app)


EXIT_CRASH = 1


def run_app(app: Any, **run_options: Any) -> None:
    """Run the lab app; if an unexpected error stopped it, say so in one line and exit with status 1."""
    app.run(**run_options)
    if app.crash is None and not app.return_code:
        return
    what = app.crash or f"the lab stopped with status {app.return_code}"
    notes = []
    if app.autosaved is not None:
        notes.append("your session was autosaved: tokenlab lab --restore brings it back")
    if app.crash_log is not None:
        notes.append(f"the traceback is in {app.crash_log}")
    line = Text.assemble(("error:", "bold red"), f" the lab stopped on an unexpected error: {what}",
                         f" ({'; '.join(notes)})" if notes else "")
    err_console.print(line, soft_wrap=True, highlight=False)
    raise typer.Exit(EXIT_CRASH)
