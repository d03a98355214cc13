"""The score screen (GLTR lens): a text coloured by how likely the model found each of its tokens.

It also shows Fast-DetectGPT's criterion and, when the lab's watermark key is set, the watermark test
(green-list tokens coloured, the z-score and p-value in the summary).
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Static

from tokenlab.lab.step import Step
from tokenlab.render import COLOUR_MODES, detectgpt_text, mode_legend, watermark_legend, watermark_line
from tokenlab.tui.widgets import CandidatesTable, TokenView


class ScoreScreen(Screen[None]):
    """A scored text: move the cursor over its tokens to see what the model expected at each."""

    BINDINGS = [
        Binding("escape,q", "dismiss", "Back", tooltip="Back to the lab"),
        Binding("left", "cursor(-1)", "Prev token", tooltip="The previous token"),
        Binding("right", "cursor(1)", "Next token", tooltip="The next token"),
        Binding("home", "cursor_to(0)", "First", show=False, tooltip="The first token"),
        Binding("end", "cursor_to(-1)", "Last", show=False, tooltip="The last token"),
        Binding("c", "cycle_colours", "Colours", tooltip="Colour by probability, rank (GLTR), entropy or the watermark test"),
    ]

    def __init__(self, steps: tuple[Step, ...], summary: dict[str, Any],
                 watermark: tuple[tuple[bool | None, bool], ...] | None = None) -> None:
        super().__init__()
        self.steps = list(steps)
        self.summary = summary
        self.watermark = watermark
        """Per token (green, counted) of the watermark test, or None when no key was set."""
        self.cursor = 1 if len(self.steps) > 1 else 0

    def compose(self) -> ComposeResult:
        ranks = self.summary.get("ranks", {})
        scored = max(1, int(self.summary.get("scored", 0)))
        histogram = " · ".join(f"{label} {count} ({100 * count / scored:.0f}%)" for label, count in ranks.items())
        watermark = f"\n {watermark_line(self.summary['watermark'])}" if "watermark" in self.summary else ""
        yield Static(
            f" [b]score[/b]  {self.summary.get('tokens', 0)} tokens · mean log-prob "
            f"{self.summary.get('mean_logprob', 0.0):.3f} nats · perplexity {self.summary.get('perplexity', 0.0):.2f}"
            f" · {detectgpt_text(self.summary.get('fast_detectgpt'))}"
            f"\n ranks: {histogram}{watermark}",
            id="score-summary",
        )
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield TokenView(id="score-tokens")
                yield Static(id="score-legend")
            yield CandidatesTable(id="score-candidates")
        yield Footer()

    def on_mount(self) -> None:
        if self.watermark is not None:
            view = self.query_one(TokenView)
            view.set_watermark(self.watermark)
            view.colour_mode = "watermark"  # a watermark test was asked for: show it first
        self.refresh_view()

    def _modes(self) -> list[str]:
        modes = [mode for mode in COLOUR_MODES if mode != "final"]  # a scored text has no pipeline
        return modes + ["watermark"] if self.watermark is not None else modes

    def refresh_view(self) -> None:
        """Render the tokens with the cursor, and what the model expected at the cursor."""
        view = self.query_one(TokenView)
        view.show(self.steps, self.cursor)
        legend = watermark_legend() if view.colour_mode == "watermark" else mode_legend(view.colour_mode)
        self.query_one("#score-legend", Static).update(legend)
        if not self.steps:
            return
        step = self.steps[self.cursor]
        title = (f"token {self.cursor} · p {step.prob:.4f} · rank {step.rank}" if step.rank
                 else f"token {self.cursor} · nothing before it to predict it")
        if self.watermark is not None and self.cursor < len(self.watermark):
            green, counted = self.watermark[self.cursor]
            title += (" · no context for the watermark test" if green is None
                      else f" · {'green' if green else 'red'}{'' if counted else ' (repeat, not counted)'}")
        self.query_one(CandidatesTable).show(step.top, chosen=step.id, selected=-1, limit=20, title=title)

    def action_cursor(self, delta: int) -> None:
        self.cursor = max(0, min(len(self.steps) - 1, self.cursor + delta))
        self.refresh_view()

    def action_cursor_to(self, index: int) -> None:
        self.cursor = index % max(1, len(self.steps))
        self.refresh_view()

    def action_cycle_colours(self) -> None:
        view = self.query_one(TokenView)
        modes = self._modes()
        view.colour_mode = modes[(modes.index(view.colour_mode) + 1) % len(modes)] if view.colour_mode in modes else "raw"
        self.refresh_view()
