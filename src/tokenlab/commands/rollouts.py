"""`tokenlab rollouts`: N continuations in one batch, printed as rich tables or JSON lines.

The tables themselves live in tokenlab.render, which the lab's rollout screen shows too.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Callable, Iterator
from enum import Enum
from typing import Annotated, Any

import typer

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tokenlab.commands.common import OutputFormat, err_console
from tokenlab.commands.options import RunOptions, distribution_json, prepare_run, with_run_options
from tokenlab.errors import UserError
from tokenlab.lab.rollouts import RolloutResult
from tokenlab.render import FittedCheckTable, check_verdict, continuations_table, headline


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
    console.print(FittedCheckTable(result.check))
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


MAX_ROLLOUTS = 100_000
"""Most continuations one rollouts command samples."""


@with_run_options(exclude=("max_tokens",))
def rollouts(
    prompt: Annotated[str, typer.Argument(help="Prompt to sample continuations of ('-' reads standard input).", show_default=False)],
    *,
    count: Annotated[int, typer.Option("-n", "--count", help="How many continuations to sample.", rich_help_panel="Rollouts")] = 64,
    length: Annotated[int, typer.Option("--length", "-L", help="Tokens per continuation.", rich_help_panel="Rollouts")] = 16,
    output_format: Annotated[OutputFormat, typer.Option("--format", "-f", help="text (tables) or jsonl (one object per distinct continuation, then a summary).", rich_help_panel="Output")] = OutputFormat.text,
    opts: RunOptions,
) -> None:
    """Sample N continuations of PROMPT in one batch and check them against the sampler's promise.

    Prints the distinct continuations grouped by first token, with counts and probabilities, and the
    empirical check: the observed frequency of each first token next to the probability the pipeline
    predicted, with a chi-square goodness-of-fit p-value.
    """
    from tokenlab.lab.rollouts import run_rollouts

    if not 1 <= count <= MAX_ROLLOUTS:
        raise UserError(f"-n/--count must be in 1..{MAX_ROLLOUTS:,}, got {count}")
    if any(getattr(opts, name) is not None for name in ("grammar", "regex", "json_schema")):
        raise UserError("rollouts do not support --grammar, --regex or --json-schema yet; leave the constraint out")
    if not 1 <= length <= opts.ctx_size:
        raise UserError(f"--length must be in 1..{opts.ctx_size} (the --ctx-size), got {length}")
    if opts.guidance_scale != 1.0 or opts.ban_phrases:
        raise UserError("rollouts sample without guidance and phrase bans; leave out --guidance-scale and --ban-phrase")
    engine, tokens, params = prepare_run(prompt, opts, example="tokenlab rollouts 'The capital of France is' -n 64")
    seed = opts.seed if opts.seed is not None else secrets.randbits(32)
    with progress_bar(err_console) as progress:
        result = run_rollouts(engine, tokens, params, n=count, length=length, seed=seed, top_n=opts.top_n,
                              progress=progress)
    print_rollouts(result, Console(highlight=False), output_format.value,
                   extra={"model": engine.name, "seed": seed, **distribution_json(engine)})
    if getattr(engine, "remote", False):
        err_console.print(f"[dim]{engine.distribution_note}; {engine.decode_calls} completion requests "
                          "(one per sequence and token: a server has no shared batch here)[/]", markup=True,
                          soft_wrap=True)
