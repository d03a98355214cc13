"""The `tokenlab` command line: one typer app; each command lives in its own file under commands/."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from tokenlab import __version__
from tokenlab.commands import compare, doctor, export, generate, inspect, lab, lesson, models, rollouts, score, serve
from tokenlab.commands.common import describe_os_error, print_error, silence_stdout, user_errors
from tokenlab.commands.options import RunOptions

app = typer.Typer(
    name="tokenlab",
    help="A terminal sampling lab: watch a local language model pick its next token.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command("generate")(generate.generate)
app.command("inspect")(inspect.inspect_command)
app.command("rollouts")(rollouts.rollouts)
app.command("compare")(compare.compare)
app.command("serve")(serve.serve)
app.command("export")(export.export)
app.command("score")(score.score)
app.command("lab")(lab.lab)
app.add_typer(models.app, name="models", help="List, pull and locate GGUF models.")
app.command("doctor")(doctor.doctor)
app.command("lesson")(lesson.lesson)


@app.callback(invoke_without_command=True)
def main_callback(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """A terminal sampling lab: watch a local language model pick its next token.

    With no command, opens the lab on the default model (same as `tokenlab lab`).
    """
    if version:
        typer.echo(f"tokenlab {__version__}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        with user_errors():
            lab.run_lab(lab.DEFAULT_LAB_PROMPT, RunOptions())


def main() -> None:
    """Console-script entry point: a failed write to standard output is one line, not a traceback."""
    code: int | str | None = 0
    try:
        app()
    except SystemExit as exit_:
        code = exit_.code
    except OSError as exc:  # e.g. `tokenlab models list > /dev/full`: rich flushes inside the command
        code = _output_failed(exc)
    try:
        sys.stdout.flush()  # here, not at interpreter exit, where a failure is a traceback and code 120
    except OSError as exc:
        code = _output_failed(exc)
    sys.exit(code)


def _output_failed(exc: OSError) -> int:
    silence_stdout()
    if isinstance(exc, BrokenPipeError):
        return 0  # the reader went away (`| head`): nothing more to say
    print_error(describe_os_error(exc))
    return 1


if __name__ == "__main__":
    main()
