"""The lab's side panels: candidates table, knob panel, distribution strip, prompt bar and status line."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rich.text import Text
from textual.widgets import Static

from tokenlab.lab.controller import FrontierView
from tokenlab.lab.knobs import KNOBS, knob_changed, knob_enabled, knob_value
from tokenlab.lab.step import Candidate, Step
from tokenlab.render import heat_color, prob_heat, sparkline, visible
from tokenlab.sampling import Pipeline, SamplerParams

TOKEN_WIDTH = 13


def short_token(text: str, width: int = TOKEN_WIDTH) -> str:
    """A token quoted with whitespace made visible, cut to `width` characters."""
    shown = visible(text)
    if len(shown) > width - 2:
        shown = shown[: width - 3] + "…"
    return f"'{shown}'"


class Panel(Static):
    """A Static that skips re-rendering when what it shows has not changed (rendering is the UI's main cost)."""

    _shown: object = None
    LAYOUT_ON_UPDATE = False
    """Whether new content can change the panel's size (a relayout re-renders the whole screen)."""

    def show_content(self, content: object) -> None:
        """Replace what the panel shows, without a screen relayout unless its size can change."""
        self.update(content, layout=self.LAYOUT_ON_UPDATE)  # type: ignore[arg-type]

    def unchanged(self, key: object) -> bool:
        """True when `key` equals what is on screen already; otherwise remember it."""
        if self._shown is not None and self._shown == key:
            return True
        self._shown = key
        return False


class CandidatesTable(Panel):
    """The candidates of the inspected step: rank, token, raw and final probability, bar, who removed it."""

    HEADER_LINES = 3
    """The title, the dice line and the column names above the rows."""

    def fits(self) -> int:
        """How many candidate rows fit under the header."""
        return max(1, (self.content_region.height or 7) - self.HEADER_LINES)

    def show(
        self,
        candidates: Sequence[Candidate],
        *,
        chosen: int | None,
        selected: int,
        limit: int,
        title: str,
        hot: Sequence[int] = (),
        dice: Text | None = None,
    ) -> None:
        """Render the first `limit` candidates (plus the chosen and hot ones when they rank lower).

        `dice` is a line on the draw of the step (see dice_line) shown under the title.
        """
        width = max(20, self.content_region.width or 38)
        key_dice = dice.plain if dice is not None else None
        if self.unchanged((tuple(candidates), chosen, selected, limit, title, tuple(hot), width, key_dice)):
            return
        rows = self.rows_for(candidates, chosen, limit, hot)
        # plain aligned Text, not a rich Table: this re-renders with every batch of tokens
        text = Text(title + "\n", style="bold")
        if dice is not None:
            line = dice.copy()
            line.truncate(width, overflow="ellipsis")
            text.append_text(line)
            text.append("\n")
        text.append(f"{'#':>3} {'token':<{TOKEN_WIDTH}} {'raw':>6} {'final':>6}\n", style="dim")
        for row_index, candidate in enumerate(rows):
            removed = candidate.removed_by is not None
            marker = "▶" if candidate.id == chosen else ("✦" if candidate.id in hot else " ")
            rank = next((i + 1 for i, c in enumerate(candidates) if c.id == candidate.id), 0)
            style = "dim" if removed else ("bold" if candidate.id == chosen else "")
            if row_index == selected:
                style += " reverse"
            final = "     —" if removed else f"{candidate.final_prob:6.3f}"
            line = Text(f"{marker}{rank:>2} {short_token(candidate.text):<{TOKEN_WIDTH}} "
                        f"{candidate.prob:6.3f} {final} ", style=style.strip())
            if removed:
                line.append("✗" + STAGE_SHORT.get(candidate.removed_by or "", candidate.removed_by or ""),
                            style="dim")
            else:
                line.append("█" * round(candidate.final_prob * 5),
                            style=heat_color(prob_heat(candidate.final_prob)))
            line.truncate(width, overflow="ellipsis")  # one line per candidate, never wrapped
            text.append_text(line)
            text.append("\n")
        self.show_content(text)

    def rows_for(self, candidates: Sequence[Candidate], chosen: int | None, limit: int,
                 hot: Sequence[int] | None = ()) -> list[Candidate]:
        """The candidates in the order show() lists them: the first `limit`, then the chosen and hot ones."""
        rows = list(candidates[:limit])
        for extra in (chosen, *(hot or ())):
            if extra is not None and extra not in [c.id for c in rows]:
                rows.extend(c for c in candidates if c.id == extra)
        return rows


LIVE_MARKS = {"mirostat_tau": "μ", "adaptive_decay": "avg "}
"""Live values shown beside a knob that are not that knob's own value: mirostat's mu, adaptive-p's average."""


class KnobPanel(Panel):
    """Every knob of the pipeline with its value, then one row per hot token (logit bias).

    The first line is the order the active stages run in; the last one says what the selected knob
    does and whose semantics it follows. Knobs that differ from their defaults stand out; knobs whose
    stages are all off are dimmed. There are more knobs than rows on a small terminal, so the rows in
    between are a window that follows the selection, with "more" marks above and below.
    """

    def show(self, params: SamplerParams, selected: int, *, hot_rows: Sequence[tuple[str, float]] = (),
             live: tuple[tuple[str, float], ...] = ()) -> None:
        """Render the knobs; `hot_rows` are (token text, bias) after them; `live` adds per-step values."""
        rows_available = max(5, (self.content_region.height or len(KNOBS) + 3))
        width = max(20, self.content_region.width or 38)
        if self.unchanged((params, selected, tuple(hot_rows), live, rows_available, width)):
            return
        now = dict(live)
        lines: list[Text] = []
        for index, knob in enumerate(KNOBS):
            enabled = knob_enabled(params, knob)
            mark = "▸" if index == selected else " "
            value = knob.format(knob_value(params, knob.name)) if enabled else "off"
            extra = ""
            if knob.name in now and enabled:
                mark_live = LIVE_MARKS.get(knob.name)
                shown = knob.format(now[knob.name]) if mark_live is None else f"{now[knob.name]:.2f}"
                if shown != value or knob.name == "adaptive_decay":
                    extra = f" {mark_live or '→'}{shown}"
            changed = enabled and knob_changed(params, knob)
            line = Text(f"{mark} {knob.label:<16}")
            line.append(f"{value:>7}", style="bold yellow" if changed else "")
            line.append(extra)
            if changed:
                line.append(" *", style="yellow")
            if index == selected:
                line.stylize("bold reverse")
            elif not enabled:
                line.stylize("dim")
            lines.append(line)
        for offset, (text, bias) in enumerate(hot_rows):
            index = len(KNOBS) + offset
            mark = "▸" if index == selected else " "
            line = Text(f"{mark} hot {short_token(text, 11):<12}")
            line.append(f"{format_bias(bias):>7}", style="bold yellow" if bias else "")
            if index == selected:
                line.stylize("bold reverse")
            lines.append(line)
        if not hot_rows:
            mark = "▸" if selected == len(KNOBS) else " "
            line = Text(f"{mark} hot (h: pick a token)", style="dim")
            if selected == len(KNOBS):
                line.stylize("bold reverse")
            lines.append(line)
        window = rows_available - 2  # the order line above, the explanation below
        if len(lines) > window:
            start = max(0, min(selected - window // 2, len(lines) - window))
            shown_lines = lines[start:start + window]
            if start:
                shown_lines[0] = Text(f"  ▲ {start + 1} more", style="dim")
            below = len(lines) - start - window
            if below > 0:
                shown_lines[-1] = Text(f"  ▼ {below + 1} more", style="dim")
            lines = shown_lines
        order = Text("order ", style="dim")
        order.append(order_line(params, KNOBS[selected].stages if selected < len(KNOBS) else ()))
        order.truncate(width, overflow="ellipsis")
        explanation = Text(explain(selected, hot_rows), style="italic")
        explanation.truncate(width, overflow="ellipsis")
        self.show_content(Text("\n").join([order, *lines, explanation]))


def dice_line(step: Step | None, width: int, *, survivors: int | None = None) -> Text:
    """The draw of a step on one line: u, and the cumulative final distribution with the token's slice.

    The bar spans [0, 1): tokens by descending final probability, the chosen token's slice in colour,
    and ┃ where the uniform number u fell. `step` None is the live next step (not drawn yet).
    """
    text = Text()
    if step is None:
        text.append("dice: not rolled yet", style="dim")
        if survivors is not None:
            text.append(f" · {survivors:,} can be drawn", style="dim")
        return text
    if step.dice is None:
        if step.forced:
            reason = "none, the token was chosen (enter)"
        elif step.final_prob >= 1.0:
            reason = "none, one token was left"
        else:
            reason = "not recorded for this step"
        text.append(f"dice: {reason}", style="dim")
        return text
    u, before = step.dice
    after = before + step.final_prob
    text.append(f"u {u:.3f} ", style="bold")
    cells = max(6, width - len(text.plain))
    colour = heat_color(prob_heat(step.final_prob))
    marker = min(cells - 1, int(u * cells))
    for cell in range(cells):
        low, high = cell / cells, (cell + 1) / cells
        inside = high > before and low < after
        if cell == marker:
            text.append("┃", style=f"bold white on {colour}" if inside else "bold red")
        elif inside:
            text.append("█", style=colour)
        else:
            text.append("▁", style="dim")
    return text


STAGE_SHORT = {
    "penalties": "pen", "scaled_penalties": "scaled-pen", "no_repeat_ngram": "no-repeat",
    "dry": "dry", "top_n_sigma": "n-sigma", "top_k": "top-k", "typical_p": "typical", "top_p": "top-p",
    "min_p": "min-p", "epsilon": "epsilon", "eta": "eta", "top_a": "top-a", "xtc": "xtc",
    "temperature": "temp", "mirostat_v2": "mirostat", "logit_bias": "bias", "ban": "ban",
    "mirostat_v1": "mirostat1", "adaptive_p": "adaptive-p", "smoothing": "smooth", "tail_free": "tfs",
    "top_h": "top-h", "p_less": "p-less",
}
"""Stage names short enough for a narrow panel."""


def order_line(params: SamplerParams, highlight: Sequence[str] = ()) -> Text:
    """The stages that run, in order, as one line (stages whose knobs are off are not listed)."""
    names = [stage.name for stage in Pipeline(params).stages if stage.name not in ("logit_bias", "ban")]
    text = Text()
    for index, name in enumerate(names):
        if index:
            text.append("→", style="dim")
        text.append(STAGE_SHORT.get(name, name), style="bold reverse" if name in highlight else "")
    if not names:
        text.append("(no stage: plain softmax)", style="dim")
    return text


def format_bias(bias: float) -> str:
    """A logit bias as the knob panel shows it (-inf bans the token)."""
    return "ban" if bias == float("-inf") else f"{bias:+.1f}"


def explain(selected: int, hot_rows: Sequence[tuple[str, float]]) -> str:
    """One line on the selected knob: what it does and whose semantics it follows."""
    if selected < len(KNOBS):
        knob = KNOBS[selected]
        return f"{knob.origin}: {knob.help}"
    if hot_rows:
        return "logit bias added before every stage: +/- < > turn, 0 clears"
    return "h picks a token to boost or suppress (a logit bias)"


class DistributionStrip(Panel):
    """The sorted probability curve of the inspected step, raw and after the pipeline, on a log scale."""

    def show_frontier(self, view: FrontierView, width: int) -> None:
        """The full curve of the next step (log-spaced ranks over the whole vocabulary)."""
        if self.unchanged((id(view), width)):
            return
        points = max(8, width - 8)
        raw = _resample(view.raw_curve, points)
        final = _resample(view.final_curve, points)
        self._draw(raw, final, view.entropy, view.final_entropy, f"{view.survivors:,} can be drawn",
                   "ranks 1…vocab, log", width)

    def show_step(self, step: Step, width: int) -> None:
        """The recorded top candidates of a past step (full rows are kept only for the frontier)."""
        if self.unchanged((id(step), width)):
            return
        points = max(8, width - 8)
        raw = np.array(sorted((c.prob for c in step.top), reverse=True))
        final = np.array(sorted((c.final_prob for c in step.top), reverse=True))
        raw = np.pad(raw, (0, max(0, points - raw.shape[0])))[:points]
        final = np.pad(final, (0, max(0, points - final.shape[0])))[:points]
        self._draw(raw, final, step.entropy, step.final_entropy, f"top {len(step.top)} recorded", "", width)

    def _draw(self, raw: np.ndarray, final: np.ndarray, entropy: float, final_entropy: float, note: str,
              axis: str, width: int) -> None:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append("raw   ", style="dim")
        text.append(sparkline(raw), style="#6c8ebf")
        text.append("\nfinal ", style="dim")
        text.append(sparkline(final), style="#2f9e44")
        footer = f"H {entropy:.2f} → {final_entropy:.2f} bits · {note}"
        if axis and len(footer) + len(axis) + 3 <= width - 2:  # the axis note only where it fits
            footer += f" · {axis}"
        text.append("\n" + footer, style="dim")
        self.show_content(text)


def _resample(curve: np.ndarray, points: int) -> np.ndarray:
    """A curve stretched or shrunk to `points` values (nearest sample)."""
    if curve.shape[0] == 0:
        return np.zeros(points)
    index = np.minimum((np.arange(points) * curve.shape[0] / points).astype(np.int64), curve.shape[0] - 1)
    return curve[index]


class PromptBar(Panel):
    """The prompt, the model, chat or raw."""

    def show(self, prompt: str, model: str, chat: bool | None) -> None:
        """Render the prompt line."""
        if self.unchanged((prompt, model, chat)):
            return
        mode = "chat" if chat else ("raw" if chat is not None else "chat?")
        text = Text()
        text.append(" prompt ", style="bold reverse")
        text.append(" " + visible(prompt)[:200] + " ")
        text.append(f" {visible(model)} · {mode} ", style="dim")
        self.show_content(text)


class StatusLine(Panel):
    """Model, tokens, tokens/s, state, stop reason, seed."""

    def show(self, *, state: str, model: str, tokens: int, max_tokens: int, tokens_per_second: float,
             stop_reason: str | None, seed: int, loop: bool, viewing: str | None = None,
             branches: int = 0, slow: str | None = None) -> None:
        """Render the status line."""
        if self.unchanged((state, model, tokens, max_tokens, round(tokens_per_second, 1), stop_reason, seed, loop,
                           viewing, branches, slow)):
            return
        text = Text()
        colour = {"running": "green", "paused": "yellow"}.get(state, "red")
        text.append(f" ● {state} ", style=f"bold {colour}")
        if viewing:
            text.append(f"[viewing {viewing}] ", style="bold magenta")
        model = visible(model)
        short_model = model if len(model) <= 22 else model[:21] + "…"
        text.append(f"{short_model} · {tokens}/{max_tokens} tok · {tokens_per_second:.1f} tok/s · seed {seed}")
        if stop_reason:
            text.append(f" · stop: {stop_reason}")
        if branches > 1:
            text.append(f" · {branches} branches")
        if loop:
            text.append(" · loop", style="bold cyan")
        if slow:
            text.append(f" · {slow}", style="bold yellow")
        self.show_content(text)
