"""`tokenlab compare`: two knob sets, A and B, on the prompt's next token and on a whole generation."""

from __future__ import annotations

import json
import secrets
import sys
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tokenlab.commands.common import OutputFormat, err_console
from tokenlab.commands.options import RunOptions, distribution_json, prepare_run, with_run_options
from tokenlab.errors import UserError
from tokenlab.render import describe_difference
from tokenlab.sampling import SamplerParams


def knob_set_b(params_a: SamplerParams, preset: str | None, assignments: list[str]) -> SamplerParams:
    """B: the named preset (else A's knobs) with each KNOB=VALUE on top."""
    from tokenlab.sampling.params import parse_assignment

    if preset is None and not assignments:
        raise UserError("give B's knobs: --b-preset NAME and/or --b KNOB=VALUE (e.g. --b temperature=1.5)")
    base = params_a
    if preset is not None:
        from tokenlab.presets import load_preset

        base = load_preset(preset)
    changes: dict[str, Any] = {}
    for text in assignments:
        try:
            name, value = parse_assignment(text)
        except ValueError as exc:
            raise UserError(f"--b {exc}") from None
        changes[name] = value
    try:
        return base.replace(**changes) if changes else base
    except ValueError as exc:
        raise UserError(f"--b {exc}") from None


@with_run_options
def compare(
    prompt: Annotated[str, typer.Argument(help="Prompt both knob sets continue ('-' reads standard input).", show_default=False)],
    *,
    b_preset: Annotated[Optional[str], typer.Option("--b-preset", help="B starts from this preset (built-in or saved) instead of A's knobs.", rich_help_panel="Compare")] = None,
    b: Annotated[Optional[list[str]], typer.Option("--b", help="KNOB=VALUE for B (repeatable), named like the flags: temperature=1.5, top-k=0, samplers=top_k,temperature, temperature-end=off.", rich_help_panel="Compare")] = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", "-f", help="text (tables and two panes) or jsonl (the step, then the generations).", rich_help_panel="Output")] = OutputFormat.text,
    opts: RunOptions,
) -> None:
    """Compare two knob sets: A (the flags) and B (--b-preset/--b) on the next token and on a generation.

    The step view shows each set's survivors and final probabilities on the same logits, and the tokens
    only one of them can draw. The two generations share the prompt (decoded once, two sequences of one
    context) and the seed, so every difference between them comes from the knobs.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from tokenlab.lab.compare import compare_frontier, compare_generations
    from tokenlab.lab.step import Frontier

    if any(getattr(opts, name) is not None for name in ("grammar", "regex", "json_schema")):
        raise UserError("compare does not support --grammar, --regex or --json-schema yet; leave the constraint out")
    engine, tokens, params_a = prepare_run(prompt, opts, example="tokenlab compare 'Once upon a time' --b temperature=1.5")
    if getattr(engine, "remote", False):
        raise UserError("compare decodes two sequences in one llama.cpp context; it needs a local model, not --engine")
    params_b = knob_set_b(params_a, b_preset, b or [])
    seed = opts.seed if opts.seed is not None else secrets.randbits(32)
    frontier = Frontier(logits=engine.evaluate(tokens), history=tuple(tokens), params=params_a, rng_key=(seed, 0))
    step = compare_frontier(frontier, params_b, engine.token_text, top_n=min(opts.top_n, 12))
    with Progress(TextColumn("generating A and B"), BarColumn(), MofNCompleteColumn(), console=err_console,
                  transient=True, disable=not err_console.is_terminal) as progress:
        task = progress.add_task("compare", total=opts.max_tokens)
        runs = compare_generations(engine, tokens, params_a, params_b, seed=seed, max_tokens=opts.max_tokens,
                                   progress=lambda done, total: progress.update(task, completed=done, total=total))
    if output_format is OutputFormat.jsonl:
        header = {"model": engine.name, "seed": seed, "a": params_a.to_dict(), "b": params_b.to_dict(),
                  **distribution_json(engine)}
        for record in ({"params": header}, {"step": step.to_json()}, {"generations": runs.to_json()}):
            sys.stdout.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        return
    print_comparison(Console(highlight=False), step, runs, describe_difference(params_a, params_b))


def print_comparison(console: Console, step: Any, runs: Any, difference: str) -> None:
    """The step table, the tokens only one set can draw, and the two generations side by side."""
    from tokenlab.render import compare_step_table, compared_text, only_one_can_draw

    console.print(Text.assemble(("B differs from A in: ", "bold"), difference))
    console.print(compare_step_table(step))
    for side, rows, mass in (("A", step.only_a, step.only_a_mass), ("B", step.only_b, step.only_b_mass)):
        console.print(only_one_can_draw(side, rows, mass), soft_wrap=True)
    panes = Table(show_header=True, expand=True, show_lines=False, pad_edge=False)
    panes.add_column(f"A · {len(runs.a)} tokens · stop: {runs.stop_a}", ratio=1)
    panes.add_column(f"B · {len(runs.b)} tokens · stop: {runs.stop_b}", ratio=1)
    panes.add_row(compared_text(runs.a), compared_text(runs.b))
    console.print(panes)
    first = runs.first_difference
    agree = "the two texts are the same" if first is None else f"they part at token {first + 1}"
    console.print(f"seed {runs.seed} · {agree} · mean log-prob A {runs.mean_logprob(runs.a):.3f}, "
                  f"B {runs.mean_logprob(runs.b):.3f} nats (the model's own view of each text)")
