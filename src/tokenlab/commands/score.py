"""`tokenlab score`: the probability, rank and entropy a model gives each token of a text (GLTR)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.text import Text

from tokenlab.commands.common import OutputFormat, err_console, user_errors
from tokenlab.commands.options import (
    MAX_TOP_N,
    RunOptions,
    distribution_json,
    engine_options_from,
    load_engine,
    read_stdin,
)
from tokenlab.errors import UserError
from tokenlab.render import mode_legend
from tokenlab.sampling import SamplerParams

_SAMPLER_DEFAULTS = SamplerParams()


def score(
    file: Annotated[str, typer.Argument(help="Text file to score ('-' reads standard input).", show_default=False)],
    *,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Catalogue name or path to a .gguf file. Default: smollm2-135m.")] = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", "-f", help="text (heat-coloured, with a summary) or jsonl (one object per token, then a summary).")] = OutputFormat.text,
    top_n: Annotated[int, typer.Option("--top-n", help="Candidates the model expected, recorded per token.")] = 5,
    ctx_size: Annotated[int, typer.Option("--ctx-size", "-c", help="Context window; longer texts slide across it.")] = 2048,
    threads: Annotated[Optional[int], typer.Option("--threads", "-t", help="CPU threads. Default: all cores.")] = None,
    gpu_layers: Annotated[int, typer.Option("--gpu-layers", "-ngl", help="Layers to offload to the GPU; -1 for all.")] = 0,
    watermark_key: Annotated[Optional[int], typer.Option("--watermark-key", help="Test the text for the KGW watermark of this key (as generated with --watermark-key).", rich_help_panel="Watermark")] = None,
    watermark_gamma: Annotated[float, typer.Option("--watermark-gamma", help="Green fraction the text was generated with.", rich_help_panel="Watermark")] = _SAMPLER_DEFAULTS.watermark_gamma,
    watermark_scheme: Annotated[str, typer.Option("--watermark-scheme", help="Green-list scheme the text was generated with: lefthash or selfhash.", rich_help_panel="Watermark")] = _SAMPLER_DEFAULTS.watermark_scheme,
    engine: Annotated[Optional[str], typer.Option("--engine", help="URL of an OpenAI-compatible server to score with instead of a local model (one request per token; a token outside the server's top --logprobs gets no probability).")] = None,
    logprobs: Annotated[int, typer.Option("--logprobs", help="With --engine: candidates asked per token (1..1000).")] = 20,
    engine_timeout: Annotated[float, typer.Option("--engine-timeout", help="With --engine: seconds to wait for one answer.")] = 60.0,
) -> None:
    """Score an existing text: the probability, rank and entropy the model gives each of its tokens."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from tokenlab.lab.score import RANK_BUCKETS, WatermarkTest, file_text, score_text
    from tokenlab.render import (detectgpt_text, heat_color, prob_heat, terminal_safe, watermark_colour,
                                 watermark_legend, watermark_line)

    with user_errors():
        if not 0 <= top_n <= MAX_TOP_N:
            raise UserError(f"--top-n must be in 0..{MAX_TOP_N:,}, got {top_n}")
        if model is not None and not model.strip():
            raise UserError("--model is empty; give a catalogue name (see tokenlab models list) or a .gguf path")
        engine_options_from(RunOptions(ctx_size=ctx_size, threads=threads, gpu_layers=gpu_layers))
        watermark = None
        if watermark_key is not None:
            # the same checks as generation's flags, before the model loads
            checked = SamplerParams(watermark_key=watermark_key, watermark_gamma=watermark_gamma,
                                    watermark_scheme=watermark_scheme)
            watermark = WatermarkTest(watermark_key, checked.watermark_gamma, checked.watermark_scheme)
        if file == "-":
            text = file_text(read_stdin())
        else:
            path = Path(file)
            if not path.exists():
                raise UserError(f"file not found: {file}")
            if path.is_dir():
                raise UserError(f"{file} is a directory; give a text file to score")
            try:
                text = file_text(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                raise UserError(f"{file} is not UTF-8 text") from None
            except OSError as exc:
                raise UserError(f"cannot read {file}: {exc.strerror or exc}") from None
        if not text.strip():
            raise UserError(f"{'standard input' if file == '-' else file} is empty: nothing to score")
        engine = load_engine(RunOptions(model=model, ctx_size=ctx_size, threads=threads, gpu_layers=gpu_layers,
                                        engine=engine, logprobs=logprobs, engine_timeout=engine_timeout))
        with Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("tokens"),
                      TimeRemainingColumn(), console=err_console, transient=True,
                      disable=not err_console.is_terminal) as progress:
            task = progress.add_task("score", total=None)
            result = score_text(engine, text, top_n=top_n, watermark=watermark,
                                progress=lambda done, total: progress.update(task, completed=done, total=total))
        if output_format is OutputFormat.jsonl:
            for index in range(len(result.tokens)):
                sys.stdout.write(json.dumps(result.token_json(index), ensure_ascii=False) + "\n")
            sys.stdout.write(json.dumps({**result.summary(), **distribution_json(engine)}, ensure_ascii=False) + "\n")
            return
        console = Console(highlight=False)
        coloured = Text()
        detection = result.watermark
        for index, token in enumerate(result.tokens):
            if detection is not None:  # the watermark test replaces the heat colours
                style = f"black on {watermark_colour(detection.green[index], detection.counted[index])}"
            else:
                style = "" if token.prob is None else f"black on {heat_color(prob_heat(token.prob))}"
            coloured.append(terminal_safe(token.text), style=style)
        console.print(coloured)
        console.print(watermark_legend() if detection is not None else mode_legend("raw"))
        histogram = result.histogram()
        summary = result.summary()
        scored = max(1, len(result.scored))
        ranks = " · ".join(f"{label} {histogram[label]} ({100 * histogram[label] / scored:.0f}%)"
                           for _, label in RANK_BUCKETS)
        console.print(
            f"{len(result.tokens)} tokens · mean log-prob {result.mean_logprob:.3f} nats · "
            f"perplexity {result.perplexity:.2f} · {detectgpt_text(summary['fast_detectgpt'])} · "
            f"{result.windows} window{'s' if result.windows != 1 else ''}"
        )
        console.print(f"ranks: {ranks}")
        if "watermark" in summary:
            console.print(watermark_line(summary["watermark"]))
        if getattr(engine, "remote", False):
            console.print(f"{engine.distribution_note}; {result.outside_top_k} token"
                          f"{'s' if result.outside_top_k != 1 else ''} fell outside it (no probability, left out "
                          "of the mean and the ranks)", soft_wrap=True)
