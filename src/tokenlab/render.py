"""Heat colours and rich renderables shared by the CLI and the TUI."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from tokenlab.engine.text import terminal_safe, visible
from tokenlab.lab.step import Candidate, Step

# Anchors of the red -> yellow -> green scale (low probability is red).
_RED = (190, 40, 40)
_YELLOW = (200, 170, 30)
_GREEN = (40, 150, 60)


def heat_color(value: float) -> str:
    """A hex colour on the red -> yellow -> green scale for a value in [0, 1]."""
    value = 0.0 if math.isnan(value) else min(1.0, max(0.0, value))
    if value < 0.5:
        low, high, t = _RED, _YELLOW, value / 0.5
    else:
        low, high, t = _YELLOW, _GREEN, (value - 0.5) / 0.5
    r, g, b = (round(a + (b - a) * t) for a, b in zip(low, high))
    return f"#{r:02x}{g:02x}{b:02x}"


def prob_heat(prob: float) -> float:
    """Map a probability to the heat scale on a log axis, so 1% and 10% look different (1e-4 -> 0, 1 -> 1)."""
    if prob <= 0:
        return 0.0
    return min(1.0, max(0.0, 1.0 + math.log10(prob) / 4.0))


def candidates_table(candidates: Iterable[Candidate], *, chosen: int | None = None, title: str | None = None) -> Table:
    """A rich table of candidates: rank, token, raw and final probability, and the stage that removed it."""
    # a Text title: the title may carry a model's name, which must never be read as rich markup
    table = Table(title=Text(title) if title is not None else None, title_justify="left", expand=False,
                  box=box.SIMPLE_HEAD)
    table.add_column("rank", justify="right")
    table.add_column("id", justify="right", style="dim")
    table.add_column("token")
    table.add_column("logit", justify="right")
    table.add_column("raw p", justify="right")
    table.add_column("final p", justify="right")
    table.add_column("", min_width=8)
    table.add_column("removed by", style="dim")
    for rank, candidate in enumerate(candidates, start=1):
        bar = "█" * round(candidate.final_prob * 8)
        removed = candidate.removed_by is not None
        style = "dim" if removed else ("bold" if candidate.id == chosen else "")
        table.add_row(
            str(rank),
            str(candidate.id),
            Text(f"'{visible(candidate.text)}'"),
            f"{candidate.logit:.3f}",
            f"{candidate.prob:.4f}",
            f"{candidate.final_prob:.4f}",
            Text(bar, style=heat_color(prob_heat(candidate.final_prob))),
            candidate.removed_by or "",
            style=style,
        )
    return table


# -- colour modes of the token view ---------------------------------------------------------------

COLOUR_MODES: tuple[str, ...] = ("raw", "final", "rank", "entropy")
"""Token colourings: raw probability, final probability, GLTR rank buckets, entropy of the step."""

GLTR_BUCKETS: tuple[tuple[int, str, str], ...] = (
    (10, "top-10", "#2f9e44"),
    (100, "top-100", "#c9a227"),
    (1000, "top-1000", "#c92a2a"),
    (2**62, "rest", "#7b3fb5"),
)
ENTROPY_SCALE_BITS = 8.0
"""Entropy at which the entropy colouring reaches full red."""


UNSCORED_COLOUR = "#7f7f7f"
"""Background of a token with no prediction (the first token of a scored text)."""


def step_colour(step: Step, mode: str) -> str:
    """The background colour of a token in a colour mode."""
    if math.isnan(step.prob):
        return UNSCORED_COLOUR
    if mode == "final":
        return heat_color(prob_heat(step.final_prob))
    if mode == "rank":
        return next(colour for limit, _, colour in GLTR_BUCKETS if step.rank <= limit)
    if mode == "entropy":
        return heat_color(1.0 - min(1.0, step.entropy / ENTROPY_SCALE_BITS))
    return heat_color(prob_heat(step.prob))


def mode_legend(mode: str, width: int | None = None) -> Text:
    """A one-line legend for a colour mode; shorter words when it would not fit in `width` cells."""
    legend = _legend(mode, compact=False)
    if width is not None and legend.cell_len > width:
        legend = _legend(mode, compact=True)
        legend.truncate(width, overflow="ellipsis")
    return legend


def _legend(mode: str, *, compact: bool) -> Text:
    pad = "" if compact else " "
    if mode == "rank":
        legend = Text("rank: " if compact else "rank (GLTR): ")
        for _, label, colour in GLTR_BUCKETS:
            legend.append(f"{pad}{label.replace('top-', 'top') if compact else label}{pad}",
                          style=f"black on {colour}")
            if compact:
                legend.append(" ")
        return legend
    if mode == "entropy":
        legend = Text("H: " if compact else "step entropy: ")
        for bits in (0, 1, 2, 4, 6, 8):
            legend.append(f" {bits}b ", style=f"black on {heat_color(1.0 - bits / ENTROPY_SCALE_BITS)}")
        return legend
    name = "final" if mode == "final" else "raw"
    legend = Text(f"{name} p: " if compact else f"{name} probability: ")
    for label, prob in (("<.01%", 1e-5), (".1%", 1e-3), ("1%", 1e-2), ("10%", 0.1), ("50%", 0.5), ("100%", 1.0)):
        legend.append(f"{pad}{label}{pad}", style=f"black on {heat_color(prob_heat(prob))}")
        if compact:
            legend.append(" ", style=f"on {heat_color(prob_heat(prob))}")
    return legend


# -- the watermark test --------------------------------------------------------------------------

WATERMARK_COLOURS: dict[str, str] = {"green": "#2f9e44", "red": "#c92a2a", "uncounted": UNSCORED_COLOUR}
"""Backgrounds of a tested text: green-list tokens, the rest, and tokens the test did not count."""


def watermark_colour(green: bool | None, counted: bool) -> str:
    """The background of a token under the watermark test."""
    if green is None or not counted:
        return WATERMARK_COLOURS["uncounted"]
    return WATERMARK_COLOURS["green" if green else "red"]


def watermark_legend() -> Text:
    """A one-line legend for the watermark colouring."""
    legend = Text("watermark: ")
    for label, key in (("green list", "green"), ("red list", "red"), ("not counted (no context / repeat)", "uncounted")):
        legend.append(f" {label} ", style=f"black on {WATERMARK_COLOURS[key]}")
    return legend


def watermark_line(summary: dict[str, Any]) -> str:
    """The watermark test in one line: green count, z-score and p-value."""
    counted = summary["counted"]
    if not counted or summary.get("z") is None:
        return f"watermark ({summary['scheme']}, γ {summary['gamma']:g}): no token to test"
    return (f"watermark ({summary['scheme']}, γ {summary['gamma']:g}): {summary['green']} of {counted} counted "
            f"tokens green ({100 * summary['green'] / counted:.1f}%, expected {100 * summary['gamma']:.0f}%) · "
            f"z {summary['z']:.2f} · p {summary['p_value']:.2g}")


def detectgpt_text(value: float | None) -> str:
    """Fast-DetectGPT's criterion for a summary line (higher: more like the model's own text)."""
    return "Fast-DetectGPT d n/a" if value is None else f"Fast-DetectGPT d {value:.2f}"


SPARK = " ▁▂▃▄▅▆▇█"


def sparkline(values: Iterable[float], *, floor: float = 1e-8) -> str:
    """Probabilities as block characters on a log scale (floor -> blank, 1 -> full block)."""
    span = -math.log10(floor)
    chars = []
    for value in values:
        level = 0.0 if value <= floor else min(1.0, (math.log10(value) + span) / span)
        chars.append(SPARK[round(level * (len(SPARK) - 1))])
    return "".join(chars)


def stage_view_tables(view: Any, *, token_width: int = 24) -> tuple[Table, Table]:
    """A lab.stages.StageView as two tables: what each stage kept, and the candidates moving through them."""
    summary = Table(title="stage by stage", title_justify="left", box=box.SIMPLE_HEAD)
    summary.add_column("#", justify="right")
    summary.add_column("stage")
    summary.add_column("kept", justify="right")
    summary.add_column("mass kept", justify="right")
    summary.add_column("cut-off")
    if getattr(view, "rest_mass", None) is not None:
        # a server's row: the stages see its top K only, never the rest of the vocabulary
        summary.add_row("", f"server top {view.seen}", f"{view.seen:,}", f"{1.0 - view.rest_mass:.4f}",
                        f"rest of the vocabulary ({view.rest_mass:.4g}) unseen")
    else:
        summary.add_row("", "raw", f"{view.n_vocab:,}", "1.0000", "")
    for index, row in enumerate(view.rows, start=1):
        extra = ""
        for key in ("effective_temperature", "mu", "sigma", "fired", "green"):
            if key in row.details:
                value = row.details[key]
                extra = f" {key.replace('_', ' ')} {value:.3g}" if isinstance(value, float) else f" {key} {value}"
        summary.add_row(str(index), row.name, f"{row.kept:,}", f"{row.mass_kept:.4f}", row.cutoff + extra)
    moves = Table(title="top candidates through the stages", title_justify="left", box=box.SIMPLE_HEAD)
    moves.add_column("token", no_wrap=True)
    moves.add_column("raw", justify="right")
    for row in view.rows:
        moves.add_column(row.name, justify="right")
    for column, (text, raw) in enumerate(zip(view.candidate_texts, view.raw_probs)):
        cells = []
        removed = False
        for row in view.rows:
            if row.probs[column] == 0.0 and not removed:
                cells.append(Text("✗", style="red"))
                removed = True
            else:
                cells.append(Text("" if removed else f"{row.probs[column]:.4f}"))
        moves.add_row(Text(f"'{visible(text)[:token_width]}'"), f"{raw:.4f}", *cells)
    return summary, moves


# -- A/B comparison -------------------------------------------------------------------------------


def compare_step_table(step: Any) -> Table:
    """A rich table of one step under knob sets A and B: raw p, each set's final p and what removed it."""
    table = Table(title=Text(f"next token · A keeps {step.survivors_a:,} ({step.entropy_a:.2f} bits) · "
                             f"B keeps {step.survivors_b:,} ({step.entropy_b:.2f} bits)"),
                  title_justify="left", expand=False, box=box.SIMPLE_HEAD)
    table.add_column("token")
    table.add_column("raw p", justify="right")
    table.add_column("A final", justify="right")
    table.add_column("", min_width=8)
    table.add_column("B final", justify="right")
    table.add_column("", min_width=8)
    table.add_column("removed by A / B", style="dim")
    for row in step.rows:
        removed = " / ".join(name or "·" for name in (row.removed_by_a, row.removed_by_b))
        table.add_row(
            Text(f"'{visible(row.text)}'"),
            f"{row.prob:.4f}",
            f"{row.final_a:.4f}",
            Text("█" * round(row.final_a * 8), style=heat_color(prob_heat(row.final_a))),
            f"{row.final_b:.4f}",
            Text("█" * round(row.final_b * 8), style=heat_color(prob_heat(row.final_b))),
            "" if removed == "· / ·" else removed,
            style="dim" if row.removed_by_a and row.removed_by_b else "",
        )
    return table


def compared_text(steps: Iterable[Any]) -> Text:
    """A compared generation's text, each token on the heat colour of its raw probability."""
    text = Text()
    for step in steps:
        text.append(terminal_safe(step.text), style=f"black on {heat_color(prob_heat(step.prob))}")
    return text
