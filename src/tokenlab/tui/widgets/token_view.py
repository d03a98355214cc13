"""The token view: generated text, each token's background coloured by how likely it was.

Rendering is the UI's main cost while generating, so the view lays tokens out into lines itself (the
Line API) and, as tokens arrive, re-lays only the last line: the cost of a refresh does not grow with
the length of the text.
"""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from tokenlab.lab.step import Step
from tokenlab.render import COLOUR_MODES, step_colour, terminal_safe, watermark_colour

NEWLINE_MARK = "↵"
FRONTIER_MARK = "▍"
PROMPT_LINES = 6
"""Lines of the prompt shown above the text at most (a longer prompt ends in an ellipsis)."""
PROMPT_STYLE = Style(dim=True, italic=True)
VIRTUAL_HEADROOM = 16
"""Blank lines of scroll room kept below the text, so the virtual size changes every 16 lines only."""


def token_label(step: Step) -> str:
    """What a token shows: its text, newlines marked, end-of-generation named, held bytes as an ellipsis."""
    if step.eog:
        return f"⟨{terminal_safe(step.piece)}⟩"
    if not step.text:
        return "…" if step.piece else ""  # bytes held for an incomplete character
    # segments go to the terminal as they are: a token's ESC or BEL must be shown, not obeyed
    return terminal_safe(step.text).replace("\n", NEWLINE_MARK + "\n")


class TokenView(ScrollView, can_focus=True):
    """Heat-coloured tokens with a cursor on the inspected step."""

    DEFAULT_CSS = """
    TokenView {
        padding: 0 1;
        overflow-x: hidden;
    }
    """

    colour_mode: reactive[str] = reactive("raw")
    """How tokens are coloured: raw, final, rank or entropy (or watermark, once `set_watermark` was called)."""

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002 - Textual's own name
        super().__init__(id=id)
        self._steps: list[Step] = []
        self._cursor: int | None = None
        self._frontier = False
        self._lines: list[list[Segment]] = [[]]
        self._start_line: list[int] = []
        """Line on which each laid-out step's text begins (where an incremental layout restarts)."""
        self._end_line: list[int] = []
        """Line of each laid-out step's last piece of text."""
        self._laid_out = 0
        self._last_step: Step | None = None
        self._layout_key: tuple[object, ...] = ()
        self._styles: dict[tuple[str, bool, bool, bool], Style] = {}
        self._strips: dict[tuple[int, int], tuple[list[Segment], Strip]] = {}
        """Rendered lines, reused while the line's segment list is the same object."""
        self._watermark: tuple[tuple[bool | None, bool], ...] | None = None
        """Per step (green, counted) of a watermark test, for the "watermark" colour mode."""
        self._prompt = ""
        self._prompt_lines: list[list[Segment]] = []
        """The prompt, dimmed, above the text (its own lines: the text's layout never depends on it)."""

    def validate_colour_mode(self, mode: str) -> str:
        if mode == "watermark" and self._watermark is not None:
            return mode
        return mode if mode in COLOUR_MODES else "raw"

    def set_watermark(self, marks: tuple[tuple[bool | None, bool], ...] | None) -> None:
        """Per step (green, counted) of a watermark test: the "watermark" colour mode shows them."""
        self._watermark = marks

    def watch_colour_mode(self) -> None:
        self._relayout(full=True)

    def on_resize(self) -> None:
        self._relayout(full=True)

    def show(self, steps: list[Step], cursor: int | None, *, frontier: bool = False) -> None:
        """Show these steps, the cursor on step `cursor` (len(steps) = the live frontier), None for no cursor."""
        key = (cursor, frontier, self.colour_mode, self._content_width())
        appended = (
            key == self._layout_key
            and self._laid_out <= len(steps)
            and (self._laid_out == 0 or steps[self._laid_out - 1] is self._last_step)
            and self._steps is steps
        )
        self._steps = steps
        self._cursor = cursor
        self._frontier = frontier
        self._layout_key = key
        self._relayout(full=not appended)

    def show_prompt(self, prompt: str) -> None:
        """Show `prompt` (dimmed) above the generated text."""
        if prompt != self._prompt:
            self._prompt = prompt
            self._relayout(full=True)

    def plain_text(self) -> str:
        """The generated text as the view lays it out, as plain text (for tests and the smoke script)."""
        return "\n".join("".join(segment.text for segment in line) for line in self._lines)

    def prompt_text(self) -> str:
        """The prompt lines above the text, as plain text."""
        return "\n".join("".join(segment.text for segment in line) for line in self._prompt_lines)

    def _layout_prompt(self, width: int) -> None:
        lines: list[list[Segment]] = []
        for paragraph in self._prompt.strip("\n").split("\n"):
            paragraph = paragraph.replace("\t", " ")
            while True:
                lines.append([Segment(paragraph[:width], PROMPT_STYLE)])
                paragraph = paragraph[width:]
                if not paragraph:
                    break
        if len(lines) > PROMPT_LINES:
            lines = lines[:PROMPT_LINES]
            last = lines[-1][0].text
            lines[-1] = [Segment(last[: max(0, width - 1)] + "…", PROMPT_STYLE)]
        self._prompt_lines = lines if self._prompt.strip() else []

    # -- layout ----------------------------------------------------------------------------------------

    def _content_width(self) -> int:
        return max(8, self.scrollable_content_region.width or self.size.width or 40)

    def _style(self, colour: str, dim: bool, underline: bool, cursor: bool) -> Style:
        key = (colour, dim, underline, cursor)
        style = self._styles.get(key)
        if style is None:
            if cursor:
                style = Style(color="black", bgcolor="white", bold=True, underline=True)
            else:
                style = Style(color="black", bgcolor=colour, dim=dim, underline=underline)
            self._styles[key] = style
        return style

    def _relayout(self, *, full: bool) -> None:
        """Lay tokens out into lines; incrementally (from the tokens on the last line) unless `full`."""
        steps = self._steps
        restart = 0
        if not full and self._laid_out > 0:
            # re-lay every token that has text on the line where the last laid-out token starts
            restart = self._laid_out - 1
            line = self._start_line[restart]
            while restart > 0 and (self._start_line[restart - 1] >= line or self._end_line[restart - 1] >= line):
                restart -= 1
                line = min(line, self._start_line[restart])
            del self._lines[line:]
            del self._start_line[restart:]
            del self._end_line[restart:]
            self._lines.append([])
        else:
            self._strips.clear()
            self._lines = [[]]
            self._start_line = []
            self._end_line = []
            self._layout_prompt(self._content_width())
        width = self._content_width()
        used = 0
        mode = self.colour_mode
        for index in range(restart, len(steps)):
            step = steps[index]
            label = token_label(step)
            first_line: int | None = None
            if mode == "watermark" and self._watermark is not None and index < len(self._watermark):
                colour = watermark_colour(*self._watermark[index])
            else:
                colour = step_colour(step, mode)
            style = self._style(colour, bool(index % 2), step.forced, index == self._cursor)
            for number, piece in enumerate(label.split("\n") if label else ()):
                if number:  # a newline inside the token
                    self._lines.append([])
                    used = 0
                while piece:
                    room = width - used
                    if len(piece) > room and used > 0 and len(piece) <= width:
                        self._lines.append([])  # wrap before the token rather than split it
                        used, room = 0, width
                    chunk, piece = piece[:room], piece[room:]
                    self._lines[-1].append(Segment(chunk, style))
                    used += len(chunk)
                    if first_line is None:
                        first_line = len(self._lines) - 1
                    if piece:
                        self._lines.append([])
                        used = 0
            current = len(self._lines) - 1
            self._start_line.append(current if first_line is None else first_line)
            self._end_line.append(current if first_line is None else self._last_text_line(first_line))
        if self._frontier and self._cursor == len(steps):
            self._lines[-1].append(Segment(" " + FRONTIER_MARK, Style(bold=True, reverse=True)))
        self._laid_out = len(steps)
        self._last_step = steps[-1] if steps else None
        # Growing the virtual size relayouts the whole screen, so grow it in steps, not line by line.
        lines = len(self._prompt_lines) + len(self._lines)
        height = self.virtual_size.height
        visible = self.scrollable_content_region.height or 1
        wanted = visible if lines <= visible else lines + VIRTUAL_HEADROOM  # no scroll bar until it is needed
        if lines > height or wanted + VIRTUAL_HEADROOM < height or self.virtual_size.width != width \
                or (lines <= visible and height != visible):
            self.virtual_size = Size(width, wanted)
        self.refresh()

    def follow(self) -> None:
        """Scroll so the newest line is the last one visible."""
        visible = self.scrollable_content_region.height or 1
        lines = len(self._prompt_lines) + len(self._lines)
        self.scroll_to(y=max(0, lines - visible), animate=False, immediate=True)

    def _last_text_line(self, first_line: int) -> int:
        """The last line at or after `first_line` that holds any text (a trailing newline adds an empty one)."""
        line = len(self._lines) - 1
        while line > first_line and not self._lines[line]:
            line -= 1
        return line

    def render_line(self, y: int) -> Strip:
        _, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width
        line_index = y + scroll_y - len(self._prompt_lines)
        if line_index < 0:
            return Strip(self._prompt_lines[line_index]).extend_cell_length(width, self.rich_style).crop(0, width)
        if line_index >= len(self._lines):
            return Strip.blank(width, self.rich_style)
        key = (line_index, width)
        cached = self._strips.get(key)
        if cached is not None and cached[0] is self._lines[line_index]:
            return cached[1]
        strip = Strip(self._lines[line_index]).extend_cell_length(width, self.rich_style).crop(0, width)
        self._strips[key] = (self._lines[line_index], strip)
        return strip
