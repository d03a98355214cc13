"""Printing rollouts: rich tables (the empirical check, continuations by first token) or JSON lines.

The tables themselves live in tokenlab.render, which the lab's rollout screen shows too.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from enum import Enum
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tokenlab.lab.rollouts import RolloutResult
from tokenlab.render import check_table, check_verdict, continuations_table, headline


class RolloutsFormat(str, Enum):
    """How `tokenlab rollouts` prints its result."""

    text = "text"
    jsonl = "jsonl"


def print_rollouts(
    result: RolloutResult,
    console: Console,
    output_format: str | RolloutsFormat = RolloutsFormat.text,
    *,
    extra: dict[str, Any] | None = None,
) -> None:
    """Print `result` on `console`: rich tables ("text") or one JSON object per line ("jsonl").

    jsonl prints one object per distinct continuation (most frequent first), then the summary with
    the empirical check; `extra` (e.g. {"model": ...}) is merged into that summary.
    """
    kind = output_format.value if isinstance(output_format, RolloutsFormat) else str(output_format)
    if kind == RolloutsFormat.jsonl.value:
        out = console.file
        for continuation in result.continuations:
            out.write(json.dumps(continuation.to_json(), ensure_ascii=False) + "\n")
        out.write(json.dumps({**result.summary(), **(extra or {})}, ensure_ascii=False) + "\n")
        out.flush()
        return
    if kind != RolloutsFormat.text.value:
        raise ValueError(f"output format must be 'text' or 'jsonl', got {output_format!r}")
    console.print(headline(result))
    console.print(check_table(result.check))
    console.print(check_verdict(result.check))
    console.print(continuations_table(result))


@contextlib.contextmanager
def progress_bar(console: Console) -> Iterator[Callable[[int, int], None]]:
    """A transient rich progress bar on `console` (silent when it is no terminal); yields the callback."""
    with Progress(TextColumn("rollouts"), BarColumn(), MofNCompleteColumn(), TextColumn("tokens"),
                  TimeRemainingColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as progress:
        task = progress.add_task("rollouts", total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


__all__ = [
    "RolloutsFormat",
    "print_rollouts",
    "progress_bar",
]
