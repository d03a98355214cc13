"""Presentation shared by the CLI, the TUI and the exports: escaped token text, heat colours, rich tables.

Nothing below `tokenlab.render` (sampling, engine, lab) imports it; the CLI's commands, the TUI's widgets
and screens, and `tokenlab.export` build what they show from it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from tokenlab.lab.rollouts import CHECK_ALPHA, EmpiricalCheck, RolloutResult
from tokenlab.lab.step import Candidate, Step

# -- token text, escaped for display ----------------------------------------------------------------

_VISIBLE = {
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def _is_control(char: str) -> bool:
    """C0 and C1 control characters and DEL: what a terminal may take as a command (ESC, CSI, BEL...)."""
    code = ord(char)
    return code < 32 or 127 <= code < 160


def visible(text: str) -> str:
    """Text with whitespace and control characters made visible (for candidate tables)."""
    out = []
    for char in text:
        if char in _VISIBLE:
            out.append(_VISIBLE[char])
        elif _is_control(char):
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


_TERMINAL_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """Text for a terminal: control characters other than newline and tab shown as \\xNN, so none is obeyed.

    Token text, prompts and model metadata come from files a user did not write; an ESC in them could
    clear the screen, retitle the window or plant a link.
    """
    return _TERMINAL_UNSAFE.sub(lambda match: visible(match.group()), text)


# -- heat colours -----------------------------------------------------------------------------------

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
    table.add_column("token", no_wrap=True, max_width=18, overflow="ellipsis")
    table.add_column("raw p", justify="right", no_wrap=True, min_width=6)
    table.add_column("A final", justify="right", no_wrap=True, min_width=6)
    table.add_column("", min_width=5, no_wrap=True)
    table.add_column("B final", justify="right", no_wrap=True, min_width=6)
    table.add_column("", min_width=5, no_wrap=True)
    table.add_column("✗ in A", style="dim", no_wrap=True, overflow="ellipsis")
    table.add_column("✗ in B", style="dim", no_wrap=True, overflow="ellipsis")
    for row in step.rows:
        table.add_row(
            Text(f"'{visible(row.text)}'"),
            f"{row.prob:.4f}",
            f"{row.final_a:.4f}",
            Text("█" * round(row.final_a * 5), style=heat_color(prob_heat(row.final_a))),
            f"{row.final_b:.4f}",
            Text("█" * round(row.final_b * 5), style=heat_color(prob_heat(row.final_b))),
            row.removed_by_a or "",
            row.removed_by_b or "",
            style="dim" if row.removed_by_a and row.removed_by_b else "",
        )
    return table


def only_one_can_draw(side: str, rows: Iterable[Any], mass: float) -> Text:
    """"only A can draw (x% of A's mass): 'tok', ..." for the tokens one knob set lets through and the other not."""
    names = ", ".join(f"'{visible(row.text)}'" for row in rows) or "none"
    return Text.assemble((f"only {side} can draw", "bold"), f" ({mass:.1%} of {side}'s mass): {names}")


def compared_text(steps: Iterable[Any]) -> Text:
    """A compared generation's text, each token on the heat colour of its raw probability."""
    text = Text()
    for step in steps:
        text.append(terminal_safe(step.text), style=f"black on {heat_color(prob_heat(step.prob))}")
    return text


# -- rollouts: the empirical check and the continuations by first token ------------------------------

MAX_CHECK_ROWS = 12
"""First-token candidates listed in the check table (the rest are summed in one row)."""
MAX_GROUPS = 8
"""First-token groups listed in the continuations table."""
PER_GROUP = 3
"""Continuations listed under each group."""


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


def check_table(check: EmpiricalCheck, *, max_rows: int = MAX_CHECK_ROWS, compact: bool = False) -> Table:
    """The first token's candidates: raw and predicted probability, expected and observed counts.

    `compact`: no id column, short headers, three decimals and a shorter bar (a 100-column terminal's dialog).
    """
    table = Table(
        title=f"empirical check · first token, observed vs predicted (n = {check.n})",
        title_justify="left", box=box.SIMPLE_HEAD, expand=False,
    )
    table.add_column("token")
    if not compact:
        table.add_column("id", justify="right", style="dim")
    for header, short in (("raw p", "raw"), ("predicted", "pred."), ("observed", "obs."), ("exp. n", "exp n"),
                          ("obs. n", "obs n"), ("residual", "resid.")):
        table.add_column(short if compact else header, justify="right")
    bar_width = 5 if compact else 10
    table.add_column("", min_width=bar_width)
    digits = 3 if compact else 4
    for row in check.rows[:max_rows]:
        impossible = row.expected == 0 and row.observed > 0
        residual = (row.observed - row.expected) / math.sqrt(row.expected) if row.expected > 0 else math.inf
        bar = Text("█" * round(row.predicted * bar_width), style=heat_color(prob_heat(row.predicted)))
        table.add_row(
            _token_cell(row.text), *(() if compact else (str(row.id),)), f"{row.raw_prob:.{digits}f}",
            f"{row.predicted:.{digits}f}", f"{row.frequency:.{digits}f}", f"{row.expected:.1f}", str(row.observed),
            "∞" if impossible else f"{residual:+.2f}", bar, style="bold red" if impossible else "",
        )
    hidden = check.rows[max_rows:]
    rest_expected = check.rest_expected + sum(row.expected for row in hidden)
    rest_observed = check.rest_observed + sum(row.observed for row in hidden)
    if rest_expected > 0 or rest_observed:
        n = max(check.n, 1)
        table.add_row(
            Text("(all others)", style="dim"), *(() if compact else ("",)), "", f"{rest_expected / n:.{digits}f}",
            f"{rest_observed / n:.{digits}f}", f"{rest_expected:.1f}", str(rest_observed), "", "", style="dim",
        )
    return table


class FittedCheckTable:
    """check_table at whatever width it is drawn: the full table where it fits, else the compact one
    (re-decided on every render, so a dialog that is resized keeps every number whole)."""

    def __init__(self, check: EmpiricalCheck, *, max_rows: int = MAX_CHECK_ROWS) -> None:
        self.check = check
        self.max_rows = max_rows

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        full = check_table(self.check, max_rows=self.max_rows)
        natural = Measurement.get(console, options.update_width(10_000), full).maximum  # unclamped
        if natural <= options.max_width:
            yield full
        else:
            yield check_table(self.check, max_rows=self.max_rows, compact=True)


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


def describe_difference(a: Any, b: Any) -> str:
    """The knobs where B differs from A, as "name A→B" pairs (for the stage order: B's active order)."""
    values_a, values_b = a.to_dict(), b.to_dict()
    changed = []
    for name in values_a:
        if values_a[name] == values_b[name]:
            continue
        if name == "samplers":  # the whole order is long: say what B runs, in its order
            changed.append("stages in B: " + (" → ".join(values_b[name]) or "none"))
        else:
            changed.append(f"{name} {_short(values_a[name])}→{_short(values_b[name])}")
    return ", ".join(changed) if changed else "no knob differs"


def _short(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(item) for item in value) or "none"
    return "off" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
