"""`tokenlab rollouts`: N continuations in one batch, printed as rich tables or JSON lines."""

from __future__ import annotations

import contextlib
import json
import math
import secrets
from collections.abc import Callable, Iterator
from enum import Enum
from typing import Annotated, Any

import typer

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from tokenlab.commands.common import OutputFormat, err_console
from tokenlab.commands.options import RunOptions, distribution_json, prepare_run, with_run_options
from tokenlab.engine.text import visible
from tokenlab.errors import UserError
from tokenlab.lab.rollouts import CHECK_ALPHA, EmpiricalCheck, RolloutResult
from tokenlab.render import heat_color, prob_heat

MAX_CHECK_ROWS = 12
"""First-token candidates listed in the check table (the rest are summed in one row)."""
MAX_GROUPS = 8
"""First-token groups listed in the continuations table."""
PER_GROUP = 3
"""Continuations listed under each group."""


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


def headline(result: RolloutResult) -> Text:
    """One line: what ran, how fast, how many distinct continuations."""
    distinct = sum(len(group.continuations) for group in result.groups)
    waves = f" in {result.waves} waves of {result.parallel}" if result.waves > 1 else ""
    line = Text(
        f"{_count(len(result.rollouts), 'rollout')} × {_count(result.length, 'token')} "
        f"after {result.context_len} context tokens"
        f"{waves} · seed {result.seed} · {result.tokens} tokens in {result.seconds:.2f} s "
        f"({result.tokens_per_second:.1f} tok/s) · {distinct} distinct"
    )
    if result.cancelled:
        line.append(f" · cancelled ({len(result.rollouts)} of {result.n} started)", style="bold yellow")
    return line


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _token_cell(text: str) -> Text:
    return Text(f"'{visible(text)}'")


def check_table(check: EmpiricalCheck, *, max_rows: int = MAX_CHECK_ROWS) -> Table:
    """The first token's candidates: raw and predicted probability, expected and observed counts."""
    table = Table(
        title=f"empirical check · first token, observed vs predicted (n = {check.n})",
        title_justify="left", box=box.SIMPLE_HEAD, expand=False,
    )
    table.add_column("token")
    table.add_column("id", justify="right", style="dim")
    table.add_column("raw p", justify="right")
    table.add_column("predicted", justify="right")
    table.add_column("observed", justify="right")
    table.add_column("exp. n", justify="right")
    table.add_column("obs. n", justify="right")
    table.add_column("residual", justify="right")
    table.add_column("", min_width=10)
    for row in check.rows[:max_rows]:
        impossible = row.expected == 0 and row.observed > 0
        residual = (row.observed - row.expected) / math.sqrt(row.expected) if row.expected > 0 else math.inf
        bar = Text("█" * round(row.predicted * 10), style=heat_color(prob_heat(row.predicted)))
        table.add_row(
            _token_cell(row.text), str(row.id), f"{row.raw_prob:.4f}", f"{row.predicted:.4f}",
            f"{row.frequency:.4f}", f"{row.expected:.1f}", str(row.observed),
            "∞" if impossible else f"{residual:+.2f}", bar, style="bold red" if impossible else "",
        )
    hidden = check.rows[max_rows:]
    rest_expected = check.rest_expected + sum(row.expected for row in hidden)
    rest_observed = check.rest_observed + sum(row.observed for row in hidden)
    if rest_expected > 0 or rest_observed:
        n = max(check.n, 1)
        table.add_row(
            Text("(all others)", style="dim"), "", "", f"{rest_expected / n:.4f}",
            f"{rest_observed / n:.4f}", f"{rest_expected:.1f}", str(rest_observed), "", "", style="dim",
        )
    return table


def check_verdict(check: EmpiricalCheck) -> Text:
    """The chi-square line: statistic, degrees of freedom, p-value and what it means."""
    if check.impossible:
        return Text(
            f"✗ {check.impossible} draw(s) of tokens the pipeline gave probability 0: "
            "the sampler broke its promise",
            style="bold red",
        )
    if check.p_value is None:
        possible = sum(1 for row in check.rows if row.predicted > 0)
        if possible == 1 and check.rest_expected == 0:
            return Text("chi-square: nothing to test (only one first token is possible)", style="dim")
        return Text("chi-square: nothing to test yet (too few rollouts); use more (-n) for a check",
                    style="dim")
    pooled = sum(1 for label, _, _ in check.categories if "other" in label)
    text = Text(
        f"chi-square {check.statistic:.2f} on {check.dof} dof"
        f"{' (tokens expected < 5 times pooled)' if pooled else ''} · p = {format_p(check.p_value)} → "
    )
    if check.passed:
        text.append(f"the sampler keeps its promise (p ≥ {CHECK_ALPHA:g})", style="bold green")
    else:
        text.append(f"observed first tokens do not match the predicted distribution (p < {CHECK_ALPHA:g})",
                    style="bold red")
    return text


def format_p(p_value: float) -> str:
    """A p-value with sensible digits (0.613, 0.0042, 3.1e-09)."""
    if p_value == 0 or p_value < 1e-4:
        return f"{p_value:.2g}" if p_value > 0 else "0"
    return f"{p_value:.3g}"


def continuations_table(
    result: RolloutResult, *, max_groups: int = MAX_GROUPS, per_group: int = PER_GROUP
) -> Table:
    """Distinct continuations grouped by first token, the most frequent groups first, collapsed."""
    distinct = sum(len(group.continuations) for group in result.groups)
    table = Table(
        title=f"continuations by first token · {_count(len(result.groups), 'first token')}, "
              f"{distinct} distinct",
        title_justify="left", box=box.SIMPLE_HEAD, expand=False,
    )
    table.add_column("count", justify="right")
    table.add_column("freq", justify="right")
    table.add_column("p", justify="right")
    table.add_column("log p", justify="right")
    table.add_column("continuation", overflow="fold")
    for group in result.groups[:max_groups]:
        table.add_row(
            str(group.count), f"{group.frequency:.3f}", f"{group.predicted:.4f}", "",
            Text.assemble(("▸ ", "dim"), (f"'{visible(group.text)}'", "bold")),
        )
        if len(group.continuations) == 1 and len(group.continuations[0].ids) == 1:
            continue  # one-token rollouts: the group row says it all
        for continuation in group.continuations[:per_group]:
            # coloured by the geometric mean of its tokens' probabilities (comparable across lengths)
            per_token = continuation.prob ** (1 / max(1, len(continuation.ids)))
            line = Text("  ")
            line.append(visible(continuation.text), style=f"black on {heat_color(prob_heat(per_token))}")
            if continuation.eog:
                line.append(" ⏎eog", style="dim")
            logprob = f"{continuation.logprob:.2f}" if math.isfinite(continuation.logprob) else "-inf"
            table.add_row(str(continuation.count), f"{continuation.frequency:.3f}",
                          f"{continuation.prob:.2e}", logprob, line)
        more = group.continuations[per_group:]
        if more:
            table.add_row("", "", "", "", Text(
                f"  … {len(more)} more ({_count(sum(c.count for c in more), 'rollout')})", style="dim"))
    hidden = result.groups[max_groups:]
    if hidden:
        table.add_row("", "", "", "", Text(
            f"… {_count(len(hidden), 'more first token')} ({sum(g.count for g in hidden)} rollouts, "
            f"{sum(len(g.continuations) for g in hidden)} distinct)", style="dim"))
    return table


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
    "check_table",
    "check_verdict",
    "continuations_table",
    "headline",
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
