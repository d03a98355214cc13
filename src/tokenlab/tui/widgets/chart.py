"""The distribution chart: a large view of one step's distribution, made to be projected in a lecture.

It shows the top candidates as bars (raw and final probability side by side), a line where each
stage of the pipeline cuts, the sorted probability curve on log axes with labels, the entropies, and
the dice roll of a drawn step. It is drawn with block characters (no plotting library): every row is
a Rich Text line, so it costs one render per change and looks the same in a browser (serve).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rich.text import Text
from textual import events

from tokenlab.lab.controller import FrontierView, log_ranks
from tokenlab.lab.knobs import KNOBS
from tokenlab.lab.step import Candidate, Step
from tokenlab.sampling import Pipeline, SamplerParams
from tokenlab.tui.widgets.panels import STAGE_SHORT, Panel, dice_line, short_token

RAW_COLOUR = "#6c8ebf"
FINAL_COLOUR = "#2f9e44"
CUT_COLOURS = ("#e8590c", "#c2255c", "#7048e8", "#1c7ed6", "#f59f00", "#0ca678")
"""Colours of the cut-off lines, one per cutting stage in pipeline order."""
EIGHTHS = " ▏▎▍▌▋▊▉█"
FLOOR_DECADES = 8
"""The curve's y axis runs from 1 down to 1e-8; smaller probabilities sit on the bottom row."""
TOKEN_COLUMN = 14


@dataclass(frozen=True)
class ChartData:
    """Everything the chart draws for one step (the live next step or a recorded one)."""

    title: str
    candidates: tuple[Candidate, ...]
    """The top candidates by raw probability (the recorded or live top-N)."""
    chosen: int | None
    order: tuple[str, ...]
    """The stages that ran, in pipeline order."""
    entropy: float
    final_entropy: float
    params: SamplerParams | None = None
    """The knobs that made the final distribution (None for a recorded step: it does not keep them)."""
    kept: tuple[tuple[str, int], ...] = ()
    """(stage, tokens kept out of the whole vocabulary) for the live step; () for a recorded step."""
    raw_curve: np.ndarray | None = None
    final_curve: np.ndarray | None = None
    ranks: np.ndarray | None = None
    """0-based ranks of the curve points (log-spaced over the vocabulary)."""
    survivors: int | None = None
    step: Step | None = None
    """The drawn step (its dice); None for the live step, not drawn yet."""


def frontier_data(view: FrontierView, title: str, n_vocab: int | None) -> ChartData:
    """The chart's data for the live next step (the curve covers the whole vocabulary)."""
    ranks = log_ranks(n_vocab) if n_vocab else None
    if ranks is not None and ranks.shape[0] != view.raw_curve.shape[0]:
        ranks = None  # not the engine this view came from (e.g. a restarted one): leave the curve out
    return ChartData(
        title=title, candidates=tuple(view.candidates), chosen=None,
        order=tuple(name for name, _ in view.stages), entropy=view.entropy, final_entropy=view.final_entropy,
        params=view.params, kept=view.stages, raw_curve=view.raw_curve if ranks is not None else None,
        final_curve=view.final_curve if ranks is not None else None, ranks=ranks, survivors=view.survivors,
    )


def step_data(step: Step, title: str) -> ChartData:
    """The chart's data for a recorded step: its top candidates only (full rows are not kept)."""
    order: list[str] = []
    for candidate in step.top:
        if candidate.removed_by is not None and candidate.removed_by not in order:
            order.append(candidate.removed_by)
    # the stages that removed something, in the default pipeline order (a step does not keep its order)
    default = [stage.name for stage in Pipeline(SamplerParams()).stages]
    order.sort(key=lambda name: default.index(name) if name in default else len(default))
    return ChartData(title=title, candidates=tuple(step.top), chosen=step.id, order=tuple(order),
                     entropy=step.entropy, final_entropy=step.final_entropy, step=step)


def stage_label(stage: str, params: SamplerParams | None) -> str:
    """A stage's short name with its main knob's value when the knobs are known (e.g. 'top-p 0.95')."""
    name = STAGE_SHORT.get(stage, stage)
    if params is None:
        return name
    knob = next((knob for knob in KNOBS if knob.stage == stage), None)
    if knob is None:
        return name
    return f"{name} {knob.format(getattr(params, knob.name))}"


def _bar(value: float, scale: float, cells: int) -> str:
    """A horizontal bar of `value / scale` of `cells` cells, in eighths of a cell."""
    if cells <= 0 or scale <= 0 or not value > 0:
        return ""
    eighths = max(1, round(min(1.0, value / scale) * cells * 8))
    return "█" * (eighths // 8) + (EIGHTHS[eighths % 8] if eighths % 8 else "")


def _fmt_prob(prob: float) -> str:
    """A probability in 6 characters (small ones in scientific notation)."""
    if prob >= 0.001 or prob == 0:
        return f"{prob:6.3f}"
    return f"{prob:6.0e}".replace("e-0", "e-")


def _tick(rank: int) -> str:
    """An x-axis label for a rank (1, 10, 100, 1k, 10k, 49k)."""
    if rank >= 1000:
        return f"{rank // 1000}k"
    return str(rank)


def cut_lines(data: ChartData) -> list[tuple[str, int | None, int | None]]:
    """(stage, index of the first listed bar it removes or None, tokens it keeps or None) per cutting stage.

    For the live step a stage cuts when it keeps fewer tokens than the stage before it (or than the
    vocabulary); for a recorded step, when it removed one of the recorded candidates. Bias and bans are
    left out: they are not cut-offs.
    """
    kept = dict(data.kept)
    previous: int | None = int(data.ranks[-1]) + 1 if data.ranks is not None and data.ranks.shape[0] else None
    cuts: list[tuple[str, int | None, int | None]] = []
    for stage in data.order:
        count = kept.get(stage)
        first = next((i for i, c in enumerate(data.candidates) if c.removed_by == stage), None)
        cut = first is not None or (count is not None and previous is not None and count < previous)
        if cut and stage not in ("logit_bias", "ban"):
            cuts.append((stage, first, count))
        if count is not None:
            previous = count
    return cuts


def render_chart(data: ChartData, width: int, height: int) -> Text:
    """The whole chart as lines of text for a pane of `width` x `height` cells."""
    width = max(40, width)
    height = max(16, height)
    lines: list[Text] = []
    title = Text(data.title, style="bold")
    title.append(f" · entropy {data.entropy:.2f} → {data.final_entropy:.2f} bits")
    if data.survivors is not None and len(title.plain) + 24 <= width:
        title.append(f" · {data.survivors:,} can be drawn")
    title.truncate(width, overflow="ellipsis")
    lines.append(title)
    cuts = cut_lines(data)
    colours = {stage: CUT_COLOURS[index % len(CUT_COLOURS)] for index, (stage, _, _) in enumerate(cuts)}
    fixed = 1 + 3 + 2  # the title; the curve's axis, ticks and legend; the dice
    gap = height >= 24  # blank lines between the parts only where rows are not scarce
    blanks = 2 if gap else 0
    bars = _bars(data, cuts, colours, width, height - fixed - blanks - max(3, height // 4))
    lines.extend(bars)
    if gap:
        lines.append(Text())
    # rows the bars leave free (fewer candidates than fit) go to the curve
    lines.extend(_curve(data, cuts, colours, width, max(3, height - fixed - blanks - len(bars))))
    if gap:
        lines.append(Text())
    lines.extend(_dice(data, width))
    return Text("\n").join(lines[:height])


def _bars(data: ChartData, cuts: list[tuple[str, int | None, int | None]], colours: dict[str, str],
          width: int, rows: int) -> list[Text]:
    """The header, one row per top candidate (raw and final bars) and the cut-off lines between them."""
    numbers = 7
    cells = max(4, (width - (TOKEN_COLUMN + 4) - 2 * numbers - 3) // 2)
    header = Text(f"{'#':>3} {'token':<{TOKEN_COLUMN}} ", style="dim")
    header.append(f"{'raw p':<{cells + numbers}}", style=f"bold {RAW_COLOUR}")
    header.append(" │ ", style="dim")
    header.append("final p", style=f"bold {FINAL_COLOUR}")
    lines = [header]
    budget = rows - 1
    listed = list(data.candidates)
    # the chosen token is always listed, even when it ranks below the rows that fit
    inline = [(stage, first) for stage, first, _ in cuts if first is not None]
    count = len(listed)
    while count > 1 and count + sum(1 for _, first in inline if first < count) + 1 > budget:
        count -= 1
    shown = listed[:count]
    if data.chosen is not None and all(c.id != data.chosen for c in shown):
        chosen = next((c for c in listed if c.id == data.chosen), None)
        if chosen is not None and shown:
            shown[-1] = chosen
    scale = max([c.prob for c in shown] + [c.final_prob for c in shown] + [1e-12])
    by_first = {}
    for stage, first, kept in cuts:
        if first is not None and first < len(shown):
            by_first.setdefault(first, []).append((stage, kept))
    below: list[tuple[str, int | None]] = [(stage, kept) for stage, first, kept in cuts
                                           if first is None or first >= len(shown)]
    for index, candidate in enumerate(shown):
        for stage, kept in by_first.get(index, ()):
            label = f" {stage_label(stage, data.params)} cuts here"
            if kept is not None:
                label += f" · keeps {kept:,}"
            line = Text("╌" * 3 + label + " ", style=f"bold {colours[stage]}")
            line.append("╌" * max(0, width - len(line.plain)), style=colours[stage])
            lines.append(line)
        rank = next((i + 1 for i, c in enumerate(listed) if c.id == candidate.id), 0)
        marker = "▶" if candidate.id == data.chosen else " "
        removed = candidate.removed_by is not None
        row = Text(f"{marker}{rank:>2} {short_token(candidate.text, TOKEN_COLUMN):<{TOKEN_COLUMN}} ",
                   style="bold" if candidate.id == data.chosen else ("dim" if removed else ""))
        raw_bar = _bar(candidate.prob, scale, cells)
        row.append(f"{raw_bar:<{cells}}", style=RAW_COLOUR)
        row.append(_fmt_prob(candidate.prob), style="dim" if removed else "")
        row.append(" │ ", style="dim")
        if removed:
            row.append(f"✗ {STAGE_SHORT.get(candidate.removed_by or '', candidate.removed_by or '')}",
                       style=colours.get(candidate.removed_by or "", "dim"))
        else:
            row.append(f"{_bar(candidate.final_prob, scale, cells):<{cells}}", style=FINAL_COLOUR)
            row.append(_fmt_prob(candidate.final_prob), style="bold")
        row.truncate(width, overflow="ellipsis")
        lines.append(row)
    notes = [f"{stage_label(stage, data.params)} (keeps {kept:,})" if kept is not None
             else stage_label(stage, data.params) for stage, kept in below]
    note = Text("cuts further down: " + " · ".join(notes) if notes else "", style="dim")
    if not cuts and data.kept:
        note = Text("no stage cuts: every token can be drawn", style="dim")
    note.truncate(width, overflow="ellipsis")
    lines.append(note)
    return lines


def _curve(data: ChartData, cuts: list[tuple[str, int | None, int | None]], colours: dict[str, str],
           width: int, rows: int) -> list[Text]:
    """The sorted probability curve: log probability (rows) against log rank (columns), raw and final."""
    if data.raw_curve is not None and data.final_curve is not None and data.ranks is not None:
        ranks = data.ranks.astype(np.float64) + 1.0
        raw, final = np.asarray(data.raw_curve, dtype=np.float64), np.asarray(data.final_curve, dtype=np.float64)
        what = "every rank, log-log"
    else:
        raw = np.array(sorted((c.prob for c in data.candidates), reverse=True), dtype=np.float64)
        final = np.array(sorted((c.final_prob for c in data.candidates), reverse=True), dtype=np.float64)
        ranks = np.arange(1, raw.shape[0] + 1, dtype=np.float64)
        what = f"top {raw.shape[0]} recorded"
    label_width = 5
    columns = max(10, width - label_width - 1)
    max_rank = max(2.0, float(ranks[-1]) if ranks.shape[0] else 2.0)
    log_max = math.log(max_rank)

    def column(rank: float) -> int:
        return min(columns - 1, max(0, round(math.log(max(1.0, rank)) / log_max * (columns - 1))))

    def row(prob: float) -> int | None:
        if not prob > 0:
            return None
        level = min(FLOOR_DECADES, max(0.0, -math.log10(prob)))
        return min(rows - 1, round(level / FLOOR_DECADES * (rows - 1)))

    grid: list[list[tuple[str, str]]] = [[(" ", "")] * columns for _ in range(rows)]
    # vertical cut-off lines first, so the curves draw over them
    cut_columns: list[tuple[int, str, str]] = []
    for stage, first, kept in cuts:
        # the live step knows how many tokens a stage keeps; a recorded one, where its first removal ranks
        at_rank = kept if kept is not None else first
        if at_rank is not None and at_rank < max_rank:
            at = column(at_rank + 0.5)
            cut_columns.append((at, stage, colours[stage]))
            for r in range(rows):
                grid[r][at] = ("┊", colours[stage])
    if ranks.shape[0]:
        log_points = np.log(np.maximum(ranks, 1.0))
        for c in range(columns):
            nearest = int(np.abs(log_points - c / (columns - 1) * log_max).argmin())
            r_raw, r_final = row(float(raw[nearest])), row(float(final[nearest]))
            if r_raw is not None:
                grid[r_raw][c] = ("•", RAW_COLOUR)
            if r_final is not None:
                grid[r_final][c] = ("●" if r_final != r_raw else "◉", FINAL_COLOUR)
    lines: list[Text] = []
    label_rows = {round(d / FLOOR_DECADES * (rows - 1)): d for d in range(0, FLOOR_DECADES + 1, 2)}
    for r in range(rows):
        decade = label_rows.get(r)
        label = ("1" if decade == 0 else f"1e-{decade}") if decade is not None else ""
        line = Text(f"{label:>{label_width}}┤" if label else " " * label_width + "│", style="dim")
        for char, style in grid[r]:
            line.append(char, style=style)
        lines.append(line)
    axis = Text(" " * label_width + "└" + "─" * columns, style="dim")
    lines.append(axis)
    ticks = [" "] * columns
    tick_rank = 1
    while tick_rank <= max_rank:
        _put(ticks, column(tick_rank), _tick(tick_rank))
        tick_rank *= 10
    _put(ticks, columns - len(_tick(int(max_rank))), _tick(int(max_rank)))
    tick_line = Text(" " * (label_width - 4) + "rank " + "".join(ticks), style="dim")
    tick_line.truncate(width, overflow="ellipsis")
    lines.append(tick_line)
    legend = Text(" " * label_width + " ")
    legend.append("• raw", style=RAW_COLOUR)
    legend.append("  ")
    legend.append("● final", style=FINAL_COLOUR)
    for _, stage, colour in cut_columns:
        legend.append("  ┊ " + STAGE_SHORT.get(stage, stage), style=colour)
    legend.append(f"  ({what})", style="dim")
    legend.truncate(width, overflow="ellipsis")
    lines.append(legend)
    return lines


def _put(cells: list[str], at: int, label: str) -> None:
    """Write `label` into `cells` from `at` if it does not overwrite another label."""
    at = max(0, min(len(cells) - len(label), at))
    if all(cell == " " for cell in cells[max(0, at - 1):at + len(label) + 1]):
        cells[at:at + len(label)] = list(label)


def _dice(data: ChartData, width: int) -> list[Text]:
    """Two lines on the draw: u on the cumulative final distribution, and which slice it fell in."""
    step = data.step
    first = dice_line(step, width, survivors=data.survivors if step is None else None)
    first.truncate(width, overflow="ellipsis")
    if step is None:
        second = Text("n draws it: u in [0, 1) lands in one token's slice", style="dim")
    elif step.dice is None:
        second = Text()
    else:
        u, before = step.dice
        second = Text(f"u fell in {short_token(step.piece, 24)}: [{before:.3f}, {before + step.final_prob:.3f}) "
                      "of the cumulative final probabilities", style="dim")
    second.truncate(width, overflow="ellipsis")
    return [first, second]


class DistributionChart(Panel):
    """The inspected step's distribution, large: bars, cut-offs, the log-log curve, entropy and the dice."""

    DEFAULT_CSS = """
    DistributionChart {
        height: 1fr;
        display: none;
        border: round $primary 50%;
        border-title-color: $text-muted;
        padding: 0 1;
    }
    """

    data: ChartData | None = None

    def on_mount(self) -> None:
        self.border_title = "distribution (d: back to the text)"

    def show(self, data: ChartData) -> None:
        """Draw `data` at the pane's current size (again only when it or the size changed)."""
        self.data = data
        width, height = self.content_region.width, self.content_region.height
        if width <= 0 or height <= 0:
            return  # not laid out yet: on_resize draws it
        key = (data.title, data.candidates, data.chosen, data.order, data.params, data.kept, data.survivors,
               id(data.raw_curve), data.step, width, height)
        if self.unchanged(key):
            return
        self.show_content(render_chart(data, width, height))

    def on_resize(self, event: events.Resize) -> None:
        if self.data is not None:
            self.show(self.data)

    def plain_lines(self) -> Sequence[str]:
        """What the chart shows, as plain lines (for tests)."""
        return str(self.render()).split("\n") if self.data is not None else []
