"""`tokenlab models`: list the catalogue, pull a model with a progress bar, print a model's path."""

from __future__ import annotations

import json
import time
from enum import Enum
from types import TracebackType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from tokenlab.commands.common import print_error
from tokenlab.engine import models as catalogue
from tokenlab.engine.models import DEFAULT_MODEL, ModelError
from tokenlab.errors import EXIT_BAD_INPUT

__all__ = ["RichPullProgress", "app"]

EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="models",
    help="List, pull and locate the GGUF models tokenlab can run.",
    no_args_is_help=True,
    add_completion=False,
)


class OutputFormat(str, Enum):
    """How `models list` prints the catalogue."""

    table = "table"
    json = "json"


class RichPullProgress:
    """A PullProgress drawing one rich bar per stage on stderr (none when stderr is no terminal)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console if console is not None else Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.console.is_terminal,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> RichPullProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def begin(self, label: str, total: int | None) -> None:
        """Start a new bar."""
        self._task = self._progress.add_task(label, total=total)

    def update(self, completed: int, total: int | None = None) -> None:
        """Move the current bar."""
        if self._task is not None:
            if total is not None:
                self._progress.update(self._task, completed=completed, total=total)
            else:
                self._progress.update(self._task, completed=completed)

    def end(self) -> None:
        """Fill the current bar."""
        if self._task is not None:
            task = self._progress.tasks[-1]
            final = task.total if task.total is not None else task.completed
            self._progress.update(self._task, completed=final, total=final)
            self._task = None

    def note(self, text: str) -> None:
        """Print a message above the bars."""
        self._progress.console.print(text, markup=False, highlight=False, soft_wrap=True)


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    print_error(message)
    return typer.Exit(code)


@app.command("list")
def list_models(
    output_format: Annotated[
        OutputFormat,
        typer.Option("--format", "-f", help="table for people, json for scripts."),
    ] = OutputFormat.table,
) -> None:
    """Show the catalogue: size, licence, whether each model is pulled, and where it lives."""
    try:
        rows: list[dict[str, Any]] = [
            {
                "name": entry.name,
                "default": entry.name == DEFAULT_MODEL,
                "filename": entry.filename,
                "size_bytes": entry.size_bytes,
                "license": entry.license,
                "description": entry.description,
                "sha256": entry.sha256,
                "pulled": catalogue.is_pulled(entry.name),
                "path": str(catalogue.catalogue_path(entry.name)),
            }
            for entry in catalogue.CATALOGUE.values()
        ]
    except ModelError as exc:
        raise _fail(str(exc)) from None
    if output_format is OutputFormat.json:
        typer.echo(json.dumps(rows, indent=2))
        return

    table = Table(
        title=Text(f"models in {catalogue.models_dir()}"),
        title_justify="left",
        caption="* default model",
        caption_justify="left",
    )
    table.add_column("name", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("license")
    table.add_column("pulled", justify="center")
    table.add_column("path", overflow="fold")
    for row in rows:
        name = f"{row['name']}*" if row["default"] else str(row["name"])
        table.add_row(
            name,
            decimal(row["size_bytes"]),
            str(row["license"]),
            "[green]yes[/green]" if row["pulled"] else "[dim]no[/dim]",
            Text(str(row["path"])),
        )
    Console().print(table)


@app.command("pull")
def pull_model(
    name: Annotated[
        str, typer.Argument(help="Catalogue name; see `tokenlab models list`.")
    ] = DEFAULT_MODEL,
    force: Annotated[
        bool, typer.Option("--force", help="Download and verify again even if present.")
    ] = False,
) -> None:
    """Download a catalogue model (sha256-verified, atomic) and print its path."""
    started = time.perf_counter()
    already_pulled = False
    try:
        already_pulled = catalogue.is_pulled(name) and not force
        with RichPullProgress() as progress:
            path = catalogue.pull(name, force=force, progress=progress)
    except ModelError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise _fail("pull interrupted; no partial file left", EXIT_INTERRUPTED) from None
    if already_pulled:
        typer.echo(f"{name} is already pulled (use --force to download it again)", err=True)
    else:
        elapsed = time.perf_counter() - started
        typer.echo(f"pulled {name} and verified its sha256 in {elapsed:.1f}s", err=True)
    typer.echo(str(path))


@app.command("path")
def model_path(
    name: Annotated[
        str | None,
        typer.Argument(help="Catalogue name or .gguf path; the default model when omitted."),
    ] = None,
) -> None:
    """Print the absolute path of a pulled model (exit 2 when it is not pulled)."""
    try:
        path = catalogue.resolve_model(name, auto_pull=False)
    except ModelError as exc:
        raise _fail(str(exc)) from None
    typer.echo(str(path))
