"""What every command shares: the error console, the one printer of errors, and output formats."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from enum import Enum

import typer
from rich.console import Console
from rich.markup import escape

from tokenlab.errors import EXIT_BAD_INPUT, TokenlabError

err_console = Console(stderr=True, highlight=False)


def print_error(message: str) -> None:
    """The one way a command reports an error: "error: MESSAGE" as one line on stderr.

    The message may quote a file name, a token or model metadata: never markup, never terminal commands.
    """
    from tokenlab.render import terminal_safe

    err_console.print(f"[bold red]error:[/] {escape(terminal_safe(message))}", markup=True, soft_wrap=True)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one line on stderr and exit code 2 (130 on Ctrl-C)."""
    try:
        yield
    except (TokenlabError, ValueError) as exc:
        print_error(str(exc))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None
    except BrokenPipeError:
        # the reader went away (e.g. `| head`); nothing more to say
        sys.stderr.close()
        raise typer.Exit(0) from None
    except OSError as exc:
        print_error(describe_os_error(exc))
        silence_stdout()
        raise typer.Exit(1) from None


def describe_os_error(exc: OSError) -> str:
    """One line for a failed read or write (standard output named as such)."""
    what = str(exc.filename) if exc.filename else "cannot write to standard output"
    return f"{what}: {exc.strerror or exc}"


def silence_stdout() -> None:
    """Point standard output at /dev/null, so the flush at exit cannot fail again with a traceback."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


class OutputFormat(str, Enum):
    """How generate, rollouts and score print their result."""

    text = "text"
    jsonl = "jsonl"
