"""`tokenlab inspect`: the next-token distribution after a prompt, stage by stage."""

from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Annotated, Any

import typer
from rich.console import Console

from tokenlab.commands.options import RunOptions, distribution_json, prepare_run, with_run_options


class InspectFormat(str, Enum):
    """How inspect prints its result."""

    table = "table"
    json = "json"



@with_run_options
def inspect_command(
    prompt: Annotated[str, typer.Argument(help="Text whose next token to inspect ('-' reads standard input).", show_default=False)],
    *,
    output_format: Annotated[InspectFormat, typer.Option("--format", "-f", help="table (rich) or json.", rich_help_panel="Output")] = InspectFormat.table,
    stages: Annotated[bool, typer.Option("--stages", help="Show the distribution after every stage: survivors, mass kept, cut-off, the top candidates moving from stage to stage.", rich_help_panel="Output")] = False,
    opts: RunOptions,
) -> None:
    """Show the next-token distribution after PROMPT: the top candidates and what each stage kept."""
    from tokenlab.lab import Generation
    from tokenlab.render import candidates_table, visible

    engine, tokens, params = prepare_run(prompt, opts, example="tokenlab inspect 'The capital of France is'")
    generation = Generation(engine, tokens, params, seed=0, top_n=opts.top_n, chat=opts.chat)
    frontier = generation.frontier()
    generation.close()
    candidates = frontier.candidates(engine.token_text, opts.top_n)
    result = frontier.result
    stage_rows = [{"name": stage.name, "kept": int(stage.n_kept)} for stage in result.stages]
    final_entropy = max(0.0, result.final_entropy_bits)
    view = None
    if stages:
        from tokenlab.lab.stages import stage_view

        view = stage_view(result, frontier.raw, [c.id for c in candidates[:10]], engine.token_text,
                          rest_mass=frontier.rest_mass, seen=frontier.seen)
    if output_format is InspectFormat.json:
        payload = {
            "model": engine.name,
            "prompt_tokens": len(generation.prompt_tokens),
            **distribution_json(engine, frontier.rest_mass),
            "candidates": [candidate.to_json() for candidate in candidates],
            "entropy": frontier.raw.entropy_bits,
            "final_entropy": final_entropy,
            "entropy_unit": "bits",
            "survivors": result.n_final,
            "stages": view.to_json()["stages"] if view is not None else stage_rows,
            **({"negative": [{"id": token_id, "text": engine.token_text(token_id), "prob": prob}
                             for token_id, prob in frontier.negative_top(opts.top_n)]}
               if frontier.negative_logits is not None else {}),
        }
        sys.stdout.write(json.dumps(payload, ensure_ascii=False) + "\n")
        return
    console = Console(highlight=False)
    console.print(candidates_table(candidates, title=f"next token after the prompt · {visible(engine.name)}"))
    if view is not None:
        print_stage_view(console, view)
    pipeline = " → ".join(f"{stage['name']} ({stage['kept']:,})" for stage in stage_rows) or "(no stage active)"
    if frontier.rest_mass is not None:
        console.print(f"server top {frontier.seen:,} (rest of the vocabulary: p = {frontier.rest_mass:.4g}, not sampled) → {pipeline}")
        console.print(engine.distribution_note)
    else:
        console.print(f"vocabulary {engine.n_vocab:,} → {pipeline}")
    if frontier.negative_logits is not None:
        negative = " · ".join(f"{visible(engine.token_text(token_id))} {prob:.3f}"
                              for token_id, prob in frontier.negative_top(5))
        console.print(f"negative context's top (raw): {negative}", markup=False)
    console.print(
        f"entropy: raw {frontier.raw.entropy_bits:.3f} bits · final {final_entropy:.3f} bits · "
        f"{result.n_final:,} token{'s' if result.n_final != 1 else ''} can be drawn"
    )


def print_stage_view(console: Console, view: Any) -> None:
    """Two rich tables: what each stage kept, and the top candidates' probability after each stage."""
    from tokenlab.render import stage_view_tables

    summary, moves = stage_view_tables(view)
    console.print(summary)
    console.print(moves)
