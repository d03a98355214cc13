"""The token view: generated text, each token's background coloured by how likely it was."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from tokenlab.lab.step import Step
from tokenlab.render import COLOUR_MODES, step_colour

NEWLINE_MARK = "↵"


def token_label(step: Step) -> str:
    """What a token shows: its text, with newlines marked and end-of-generation named."""
    if step.eog:
        return f"⟨{step.piece}⟩"
    shown = step.text
    if not shown:
        return "…" if step.piece else ""  # bytes held for an incomplete character
    return shown.replace("\n", f"{NEWLINE_MARK}\n")


class TokenView(Static, can_focus=True):
    """Heat-coloured tokens with a cursor on the inspected step."""

    DEFAULT_CSS = """
    TokenView {
        height: auto;
        padding: 0 1;
    }
    """

    colour_mode: reactive[str] = reactive("raw")
    """How tokens are coloured: raw, final, rank or entropy."""

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002 - Textual's own name
        super().__init__("", id=id)
        self._steps: list[Step] = []
        self._prompt = ""
        self._cursor: int | None = None
        self._frontier = False

    def validate_colour_mode(self, mode: str) -> str:
        return mode if mode in COLOUR_MODES else "raw"

    def watch_colour_mode(self) -> None:
        self.refresh_text()

    def show(self, steps: list[Step], cursor: int | None, *, prompt: str = "", frontier: bool = False) -> None:
        """Render these steps with the cursor on step `cursor` (len(steps) = the next, unsampled step)."""
        self._steps = steps
        self._cursor = cursor
        self._prompt = prompt
        self._frontier = frontier
        self.refresh_text()

    def build_text(self) -> Text:
        """The rich Text of the tokens (alternate tokens slightly darker so neighbours stay apart)."""
        text = Text(no_wrap=False)
        if self._prompt:
            text.append(self._prompt, style="dim italic")
        for step in self._steps:
            label = token_label(step)
            if not label:
                continue
            colour = step_colour(step, self.colour_mode)
            style = f"black on {colour}"
            if step.index % 2:
                style += " dim"
            if step.forced:
                style += " underline"
            if step.index == self._cursor:
                style = f"bold underline black on white"
            text.append(label, style=style)
        if self._cursor == len(self._steps) and self._frontier:
            text.append(" ▍", style="bold reverse")
        return text

    def refresh_text(self) -> None:
        """Re-render after steps, cursor or colour mode changed."""
        self.update(self.build_text())
