"""`tokenlab generate`: stream a continuation of a prompt as text or JSON lines."""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Callable
from typing import Annotated

import typer

from tokenlab.commands.common import OutputFormat, err_console
from tokenlab.commands.options import RunOptions, distribution_json, prepare_run, with_run_options


@with_run_options
def generate(
    prompt: Annotated[str, typer.Argument(help="Text to continue ('-' reads standard input).", show_default=False)],
    *,
    output_format: Annotated[OutputFormat, typer.Option("--format", "-f", help="text streams the output; jsonl prints one JSON object per token and a final summary.", rich_help_panel="Output")] = OutputFormat.text,
    opts: RunOptions,
) -> None:
    """Generate text from PROMPT with the sampler knobs, streaming it to stdout."""
    from tokenlab.lab import Generation
    from tokenlab.render import terminal_safe

    engine, tokens, params = prepare_run(prompt, opts, example="tokenlab generate 'Once upon a time'")
    seed = opts.seed if opts.seed is not None else secrets.randbits(32)
    generation = Generation(
        engine, tokens, params,
        seed=seed, max_tokens=opts.max_tokens, top_n=opts.top_n,
        record=output_format is OutputFormat.jsonl,  # plain text needs no candidates or raw statistics
        chat=opts.chat,
    )
    out = sys.stdout
    # on a terminal, a token's control characters are shown, not obeyed; a pipe or file gets the text as is
    shown: Callable[[str], str] = terminal_safe if out.isatty() else str
    started = time.perf_counter()
    written = 0  # steps printed: a step is printed once no phrase ban can take it back (Generation.settled)
    try:
        for _ in generation.run():
            written = min(written, len(generation.steps))  # a rewind restarts after the printed steps only
            settled = generation.settled
            for step in generation.steps[written:settled]:
                if output_format is OutputFormat.jsonl:
                    out.write(step.to_json_line() + "\n")
                else:
                    out.write(shown(step.text))
            written = max(written, settled)
            out.flush()
            if generation.notice:
                err_console.print(f"note: {terminal_safe(generation.notice)}", markup=False, soft_wrap=True)
                generation.notice = None
    finally:
        generation.close()
    wall = time.perf_counter() - started
    tokens = len(generation.steps)
    tokens_per_second = tokens / wall if wall > 0 else 0.0
    text = generation.text + generation.held_text
    if output_format is OutputFormat.jsonl:
        summary = {
            "done": True,
            "text": text,
            "stop_reason": generation.stop_reason,
            "tokens": tokens,
            "tokens_per_second": round(tokens_per_second, 2),
            "seed": seed,
            "prompt_tokens": len(generation.prompt_tokens),
            "model": engine.name,
            **distribution_json(engine),
        }
        out.write(json.dumps(summary, ensure_ascii=False) + "\n")
    else:
        out.write(shown(generation.held_text) + "\n")
        err_console.print(
            f"[dim]{tokens} tokens · {tokens_per_second:.1f} tok/s · stop: {generation.stop_reason} · seed {seed}[/]",
            markup=True,
        )
        if getattr(engine, "remote", False):
            err_console.print(f"[dim]{engine.distribution_note}[/]", markup=True, soft_wrap=True)
    out.flush()
