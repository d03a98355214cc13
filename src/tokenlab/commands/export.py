"""`tokenlab export`: a saved session as Markdown or a standalone HTML page."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from tokenlab.commands.common import err_console, user_errors
from tokenlab.errors import UserError
from tokenlab.export import EXPORT_CHOICES, EXPORT_FORMATS

ExportFormat = Enum("ExportFormat", {name: name for name in EXPORT_CHOICES}, type=str)  # type: ignore[misc]
"""What export writes: the formats of tokenlab.export that render a saved session (md, html)."""
EXPORT_HELP = " or ".join(f"{name} ({EXPORT_FORMATS[name].description})" for name in EXPORT_CHOICES) + "."


def export(
    session_file: Annotated[Path, typer.Argument(help="A session saved in the lab (s) or autosaved.", show_default=False)],
    *,
    output_format: Annotated[ExportFormat, typer.Option("--format", "-f", help=EXPORT_HELP)] = ExportFormat("html"),
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="File to write (atomically; a symlink's target is replaced, never a directory, device or FIFO); '-' or no -o: standard output.")] = None,
) -> None:
    """Export the branch on screen of a saved session as Markdown or a standalone HTML page."""
    from tokenlab.files import NotARegularFileError, write_text_atomic
    from tokenlab.lab.session import SessionError
    from tokenlab.lab.session import load as load_session

    with user_errors():
        try:
            session = load_session(session_file)
        except SessionError as exc:
            raise UserError(str(exc)) from None
        text = EXPORT_FORMATS[output_format.value].render(session)
        if output is None or str(output) == "-":
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        if output.is_dir():
            raise UserError(f"--output {output} is a directory, not a regular file; give a file name, e.g. {output / 'session.html'}")
        try:
            written = write_text_atomic(output, text)
        except NotARegularFileError as exc:
            raise UserError(f"-o {exc} (or -o - for standard output)") from None
        except OSError as exc:
            raise UserError(f"cannot write {output}: {exc.strerror or exc}") from None
        err_console.print(f"wrote {written}", markup=False)
