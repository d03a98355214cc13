"""The lab's side panels: candidates table, knob panel, distribution strip, prompt bar and status line."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rich.text import Text
from textual.widgets import Static

from tokenlab.engine.text import visible
from tokenlab.lab.controller import FrontierView
from tokenlab.lab.knobs import KNOBS, knob_value, stage_enabled
from tokenlab.lab.step import Candidate, Step
from tokenlab.render import heat_color, prob_heat, sparkline
from tokenlab.sampling import SamplerParams

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

    def show(
        self,
        candidates: Sequence[Candidate],
        *,
        chosen: int | None,
        selected: int,
        limit: int,
        title: str,
        hot: int | None = None,
    ) -> None:
        """Render the first `limit` candidates (plus the chosen and hot ones when they rank lower)."""
        if self.unchanged((tuple(candidates), chosen, selected, limit, title, hot)):
            return
        rows = self.rows_for(candidates, chosen, limit, hot)
        # plain aligned Text, not a rich Table: this re-renders with every batch of tokens
        text = Text(title + "\n", style="bold")
        text.append(f"{'#':>3} {'token':<{TOKEN_WIDTH}} {'raw':>6} {'final':>6}\n", style="dim")
        for row_index, candidate in enumerate(rows):
            removed = candidate.removed_by is not None
            marker = "▶" if candidate.id == chosen else ("✦" if candidate.id == hot else " ")
            rank = next((i + 1 for i, c in enumerate(candidates) if c.id == candidate.id), 0)
            style = "dim" if removed else ("bold" if candidate.id == chosen else "")
            if row_index == selected:
                style += " reverse"
            final = "     —" if removed else f"{candidate.final_prob:6.3f}"
            line = Text(f"{marker}{rank:>2} {short_token(candidate.text):<{TOKEN_WIDTH}} "
                        f"{candidate.prob:6.3f} {final} ", style=style.strip())
            if removed:
                line.append(candidate.removed_by or "", style="dim")
            else:
                line.append("█" * round(candidate.final_prob * 5),
                            style=heat_color(prob_heat(candidate.final_prob)))
            text.append_text(line)
            text.append("\n")
        self.show_content(text)

    def rows_for(self, candidates: Sequence[Candidate], chosen: int | None, limit: int, hot: int | None) -> list[Candidate]:
        """The candidates in the order show() lists them (for choosing the selected row)."""
        rows = list(candidates[:limit])
        for extra in (chosen, hot):
            if extra is not None and extra not in [c.id for c in rows]:
                rows.extend(c for c in candidates if c.id == extra)
        return rows


class KnobPanel(Panel):
    """Every knob of the pipeline with its value; the selected one marked, switched-off stages dimmed.

    There are more knobs than rows on a small terminal, so the panel shows a window that follows the
    selected knob, with "more" marks above and below.
    """

    def show(self, params: SamplerParams, selected: int, *, hot_text: str | None, hot_bias: float,
             live: tuple[tuple[str, float], ...] = ()) -> None:
        """Render the knobs (the last row is the hot token's bias); `live` adds values that move per step."""
        rows_available = max(3, (self.content_region.height or len(KNOBS) + 1))
        if self.unchanged((params, selected, hot_text, hot_bias, live, rows_available)):
            return
        now = dict(live)
        lines: list[Text] = []
        for index, knob in enumerate(KNOBS):
            enabled = stage_enabled(params, knob.stage)
            mark = "▸" if index == selected else " "
            value = knob.format(knob_value(params, knob.name)) if enabled else "off"
            extra = ""
            if knob.name in now and enabled:
                shown = knob.format(now[knob.name]) if knob.name != "mirostat_tau" else f"{now[knob.name]:.2f}"
                if shown != value:
                    extra = f" {'μ' if knob.name == 'mirostat_tau' else '→'}{shown}"
            line = Text(f"{mark} {knob.label:<16}{value:>7}{extra}")
            if index == selected:
                line.stylize("bold reverse")
            elif not enabled:
                line.stylize("dim")
            lines.append(line)
        mark = "▸" if selected == len(KNOBS) else " "
        token = short_token(hot_text, 10) if hot_text is not None else "(h: pick)"
        line = Text(f"{mark} hot {token:<12}{hot_bias:>+7.1f}")
        if selected == len(KNOBS):
            line.stylize("bold reverse")
        lines.append(line)
        if len(lines) > rows_available:
            window = rows_available - 2
            start = max(0, min(selected - window // 2, len(lines) - window))
            if start == 0:
                window += 1  # no "more above" line needed
            below = len(lines) - start - window
            if below <= 0:
                window += 1
                start = max(0, len(lines) - window)
                below = 0
            shown_lines = [Text(f"  ▲ {start} more", style="dim")] if start else []
            shown_lines += lines[start:start + window]
            if below > 0:
                shown_lines.append(Text(f"  ▼ {below} more", style="dim"))
            lines = shown_lines
        self.show_content(Text("\n").join(lines))


class DistributionStrip(Panel):
    """The sorted probability curve of the inspected step, raw and after the pipeline, on a log scale."""

    def show_frontier(self, view: FrontierView, width: int) -> None:
        """The full curve of the next step (log-spaced ranks over the whole vocabulary)."""
        if self.unchanged((id(view), width)):
            return
        points = max(8, width - 8)
        raw = _resample(view.raw_curve, points)
        final = _resample(view.final_curve, points)
        self._draw(raw, final, view.entropy, view.final_entropy,
                     f"{view.survivors:,} can be drawn · ranks 1…vocab (log)")

    def show_step(self, step: Step, width: int) -> None:
        """The recorded top candidates of a past step (full rows are kept only for the frontier)."""
        if self.unchanged((id(step), width)):
            return
        points = max(8, width - 8)
        raw = np.array(sorted((c.prob for c in step.top), reverse=True))
        final = np.array(sorted((c.final_prob for c in step.top), reverse=True))
        raw = np.pad(raw, (0, max(0, points - raw.shape[0])))[:points]
        final = np.pad(final, (0, max(0, points - final.shape[0])))[:points]
        self._draw(raw, final, step.entropy, step.final_entropy, f"top {len(step.top)} recorded")

    def _draw(self, raw: np.ndarray, final: np.ndarray, entropy: float, final_entropy: float, note: str) -> None:
        text = Text()
        text.append("raw   ", style="dim")
        text.append(sparkline(raw), style="#6c8ebf")
        text.append("\nfinal ", style="dim")
        text.append(sparkline(final), style="#2f9e44")
        text.append(f"\nH {entropy:.2f} → {final_entropy:.2f} bits · {note}", style="dim")
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
        text.append(f" {model} · {mode} ", style="dim")
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
