"""Modal screens of the lab: help, the prompt editor, a one-line input, and the run history."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, Static, TextArea
from textual.widgets.option_list import Option

from tokenlab.lab.stages import StageView
from tokenlab.lab.step import Step
from tokenlab.lab.tree import Segment
from tokenlab.render import stage_view_tables, visible
from tokenlab.sampling import SamplerParams


HELP_PANELS: tuple[tuple[str, str], ...] = (
    ("text", "The generated text, after the prompt (dimmed). Each token's background says how likely the "
             "model found it; every other token is a shade darker so you can see where tokens start; an "
             "underlined token was forced (enter), an italic one by the grammar (the only token it allowed); ▍ marks the live next step while paused."),
    ("colours", "c cycles what the colours mean: raw p (the model's own probability, temperature 1, no knob), "
                "final p (after every knob), rank (GLTR: green top-10, yellow top-100, red top-1000, purple "
                "the rest) or entropy (how unsure the model was at that step). On the probability scales red "
                "is rare (under 0.01%), yellow about 1-10%, green likely (50% and up); the scale is "
                "logarithmic."),
    ("curve", "Under the text: the probabilities of the inspected step sorted from the most likely token "
              "(left) to the least likely (right), ranks on a log axis over the whole vocabulary, heights on "
              "a log scale from 1e-8 to 1. 'raw' is the model's distribution, 'final' the one the token is "
              "drawn from; where 'final' goes blank the knobs cut the tokens off. A past step shows only its "
              "recorded top candidates."),
    ("N can be drawn", "How many tokens still have a probability above zero after every stage: the dice can "
                       "only land on these. H a → b bits is the entropy before and after the knobs (1 bit: a "
                       "coin flip between two tokens; 0: certain)."),
    ("candidates", "The inspected step's most likely tokens: rank, raw p, final p and a bar of final p. "
                   "▶ is the token that was drawn, ✦ a hot token, ✗stage the stage that removed it."),
    ("dice", "Under the candidates' title of a drawn step: the uniform random number u the draw took, "
             "and the final distribution laid out on [0, 1) as a bar, most likely token first. The drawn "
             "token's slice is coloured and ┃ marks where u fell: inside that slice, so that token came out. "
             "A wide slice is a likely token; the seed fixes u."),
    ("chart", "d puts a large chart of the inspected step in place of the text: the top candidates as bars, "
              "raw p (blue) and final p (green) on one scale; a dashed line where each stage starts cutting "
              "(with its setting and how many tokens it keeps); the sorted curve with both axes log and the "
              "cut-offs as dotted lines; the entropy; and the dice of a drawn step. Turning a knob redraws it."),
    ("lesson", "L starts a lesson: a panel under the text says what to look at in each step; L goes on, B "
               "back, E ends it. Lessons are TOML files (tokenlab lesson --list says where to add yours)."),
    ("knobs", "The first line is the order the active stages run in (the selected knob's stage "
              "highlighted); a changed knob is yellow with a *, a knob whose stage is off is dim; the last "
              "line says what the selected knob does and whose semantics it follows. Rows after the knobs "
              "are hot tokens: a logit bias added before any stage."),
)
"""What each part of the lab shows, for the help screen."""


class HelpScreen(ModalScreen[None]):
    """Every key of the lab with what it does, and what each panel shows; scrolls when it does not fit."""

    BINDINGS = [
        Binding("escape,q,question_mark", "dismiss", "Close", tooltip="Close the help"),
    ]

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        super().__init__()
        self._keys = keys

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for key, description in self._keys:
            table.add_row(key, description)
        panels = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
        panels.add_column(style="bold green", no_wrap=True)
        panels.add_column()
        for name, description in HELP_PANELS:
            panels.add_row(name, description)
        with VerticalScroll(id="help-box", classes="dialog"):
            yield Label("[b]tokenlab keys[/b]  (↑/↓ page up/down scroll · escape closes)")
            yield Static(table, id="help-table")
            yield Label("\n[b]What you see[/b]")
            yield Static(panels, id="help-panels")

    def on_mount(self) -> None:
        self.query_one("#help-box", VerticalScroll).focus()


class PromptEditor(ModalScreen[tuple[str, bool | None] | None]):
    """A multi-line prompt editor: enter runs the prompt, ctrl+n adds a new line, ctrl+t toggles chat/raw."""

    BINDINGS = [
        Binding("enter", "run", "Run", priority=True, tooltip="Run this prompt"),
        Binding("ctrl+n", "newline", "New line", priority=True, tooltip="Insert a line break"),
        Binding("ctrl+t", "toggle_chat", "Chat/raw", priority=True, tooltip="Wrap in the chat template or not"),
        Binding("escape", "cancel", "Cancel", tooltip="Keep the old prompt"),
    ]

    def __init__(self, prompt: str, chat: bool | None, *, title: str | None = None) -> None:
        super().__init__()
        self._prompt = prompt
        self._chat = chat
        self._fixed_title = title

    def compose(self) -> ComposeResult:
        with Vertical(id="prompt-box", classes="dialog"):
            yield Label(self._title(), id="prompt-title")
            yield TextArea(self._prompt, id="prompt-area", soft_wrap=True, show_line_numbers=False)
            yield Label("[dim]enter: run · ctrl+n: new line · ctrl+t: chat/raw · escape: cancel[/dim]")

    def on_mount(self) -> None:
        area = self.query_one(TextArea)
        area.focus()
        area.move_cursor(area.document.end)

    def _title(self) -> str:
        if self._fixed_title:
            return f"[b]{self._fixed_title}[/b]"
        mode = "chat template" if self._chat else ("raw" if self._chat is not None else "chat template if the model has one")
        return f"[b]Prompt[/b] — {mode}"

    def action_run(self) -> None:
        self.dismiss((self.query_one(TextArea).text, self._chat))

    def action_newline(self) -> None:
        self.query_one(TextArea).insert("\n")

    def action_toggle_chat(self) -> None:
        self._chat = not self._chat if self._chat is not None else False
        self.query_one("#prompt-title", Label).update(self._title())

    def action_cancel(self) -> None:
        self.dismiss(None)


class LineInput(ModalScreen[str | None]):
    """Ask for one line of text (a seed, a token)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", tooltip="Close without changing anything")]

    def __init__(self, title: str, placeholder: str = "", value: str = "") -> None:
        super().__init__()
        self._title = title
        self._placeholder = placeholder
        self._value = value

    def compose(self) -> ComposeResult:
        with Vertical(id="input-box", classes="dialog"):
            yield Label(self._title)
            yield Input(value=self._value, placeholder=self._placeholder, id="line-input")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


@dataclass(frozen=True)
class RunRecord:
    """A finished run kept in the loop history."""

    run_id: int
    seed: int | None
    """None for a run of a loaded session (the tree does not keep seeds)."""
    params: SamplerParams | None
    """None for a run of a loaded session (the tree does not keep each run's knobs)."""
    steps: tuple[Step, ...]
    stop_reason: str | None

    @property
    def text(self) -> str:
        """The generated text."""
        return "".join(step.text for step in self.steps)

    def settings(self, names: Mapping[int, str] | None = None) -> str:
        """The knobs that differ from the defaults, briefly; `names` gives biased tokens' texts."""
        if self.params is None:
            return "from the saved tree"
        defaults = SamplerParams()
        changed = [
            f"{name}={getattr(self.params, name)}"
            for name in ("temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_penalty",
                         "frequency_penalty", "presence_penalty")
            if getattr(self.params, name) != getattr(defaults, name)
        ]
        if self.params.samplers != defaults.samplers:
            changed.append("samplers=" + ",".join(self.params.samplers))
        for token_id, bias in self.params.logit_bias.items():
            token = f"'{visible(names[token_id])}'" if names and token_id in names else f"#{token_id}"
            changed.append(f"bias {token}{'=ban' if bias == float('-inf') else f'{bias:+g}'}")
        return " ".join(changed) or "defaults"


class HistoryScreen(ModalScreen[int | None]):
    """The last runs (loop mode and regenerations) with their settings; enter views one."""

    BINDINGS = [Binding("escape", "cancel", "Close", tooltip="Back to the live run")]

    def __init__(self, records: list[RunRecord], names: Mapping[int, str] | None = None) -> None:
        super().__init__()
        self._records = records
        self._names = names

    def compose(self) -> ComposeResult:
        options = []
        for index, record in enumerate(reversed(self._records)):
            line = Text()
            seed = f"seed {record.seed:<10}" if record.seed is not None else "saved run      "
            line.append(f"#{record.run_id:<3} {seed} ", style="bold")
            line.append(f"{len(record.steps):>3} tok  {record.stop_reason or '':<12} ", style="dim")
            line.append(record.settings(self._names), style="cyan")
            line.append("\n   " + record.text.replace("\n", " ↵ ")[:90])
            options.append(Option(line, id=str(len(self._records) - 1 - index)))
        with Vertical(id="history-box", classes="dialog"):
            yield Label(f"[b]Run history[/b] — last {len(self._records)} runs · enter views · escape closes")
            yield OptionList(*options, id="history-list")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    @on(OptionList.OptionSelected)
    def selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id or 0))

    def action_cancel(self) -> None:
        self.dismiss(None)


class TreeScreen(ModalScreen[tuple[int, ...] | None]):
    """The generation tree: one row per branch segment, nested at forks; enter shows that branch."""

    BINDINGS = [
        Binding("escape,b", "cancel", "Close", tooltip="Back to the lab"),
        Binding("left", "parent", "Parent", tooltip="Go to the segment this one forked from"),
        Binding("right", "child", "Child", tooltip="Go to the first branch below this one"),
        Binding("left_square_bracket", "sibling(-1)", "Prev sibling", tooltip="The previous branch at this fork"),
        Binding("right_square_bracket", "sibling(1)", "Next sibling", tooltip="The next branch at this fork"),
    ]

    def __init__(self, rows: tuple[Segment, ...], runs: int, current: tuple[int, ...]) -> None:
        super().__init__()
        self._rows = rows
        self._runs = runs
        self._current = current

    def compose(self) -> ComposeResult:
        options = []
        for index, row in enumerate(self._rows):
            line = Text("  " * row.depth + ("└ " if row.depth else ""))
            on_path = self._current[: len(row.path)] == row.path or row.path[: len(self._current)] == self._current
            line.append(f"'{visible(row.token)}'", style="bold" if on_path else "")
            line.append(f" p {row.prob:.3f}", style="dim")
            line.append(f" ×{row.count}", style="cyan")
            preview = visible(row.text)
            line.append("  " + (preview[:70] + "…" if len(preview) > 70 else preview))
            if row.ends and row.stop_reason:
                line.append(f"  ⏹ {row.stop_reason}", style="dim")
            if row.children:
                line.append(f"  ▾{row.children}", style="yellow")
            options.append(Option(line, id=str(index)))
        with Vertical(id="tree-box", classes="dialog"):
            yield Label(f"[b]Generation tree[/b] — {self._runs} runs · enter shows a branch · ←/→ parent/child · "
                        "[ ] siblings · escape closes")
            yield OptionList(*options, id="tree-list")

    def on_mount(self) -> None:
        option_list = self.query_one(OptionList)
        option_list.focus()
        best = max(range(len(self._rows)), key=lambda i: self._match(i), default=0)
        option_list.highlighted = best if self._rows else None

    def _match(self, index: int) -> int:
        path = self._rows[index].path
        shared = 0
        for a, b in zip(path, self._current):
            if a != b:
                break
            shared += 1
        return shared * 1000 - len(path)

    def _highlighted(self) -> int:
        return self.query_one(OptionList).highlighted or 0

    def _move(self, index: int | None) -> None:
        if index is not None:
            self.query_one(OptionList).highlighted = index

    def action_parent(self) -> None:
        here = self._highlighted()
        depth = self._rows[here].depth
        self._move(next((i for i in range(here - 1, -1, -1) if self._rows[i].depth < depth), None))

    def action_child(self) -> None:
        here = self._highlighted()
        if here + 1 < len(self._rows) and self._rows[here + 1].depth > self._rows[here].depth:
            self._move(here + 1)

    def action_sibling(self, delta: int) -> None:
        here = self._highlighted()
        depth = self._rows[here].depth
        step = 1 if delta > 0 else -1
        index = here + step
        while 0 <= index < len(self._rows):
            if self._rows[index].depth < depth:
                return
            if self._rows[index].depth == depth:
                self._move(index)
                return
            index += step

    @on(OptionList.OptionSelected)
    def selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self._rows[int(event.option.id or 0)].path)

    def action_cancel(self) -> None:
        self.dismiss(None)


class StageScreen(ModalScreen[None]):
    """Stage by stage at one step: survivors, mass kept and cut-off per stage, candidates moving through."""

    BINDINGS = [Binding("escape,i,q", "dismiss", "Close", tooltip="Back to the lab")]

    def __init__(self, index: int, view: StageView) -> None:
        super().__init__()
        self._index = index
        self._view = view

    def compose(self) -> ComposeResult:
        summary, moves = stage_view_tables(self._view, token_width=14)
        summary.title = moves.title = None
        with VerticalScroll(id="stage-box", classes="dialog"):
            yield Label(f"[b]Stage by stage[/b] — step {self._index} with the current knobs · escape closes")
            yield Static(summary)
            yield Static(moves)


class PresetScreen(ModalScreen[tuple[str, str] | None]):
    """Load a preset of all knobs (built-in or saved), or save the current knobs under a name."""

    BINDINGS = [Binding("escape", "cancel", "Close", tooltip="Back to the lab")]

    def __init__(self, presets: dict[str, str]) -> None:
        super().__init__()
        self._presets = presets

    def compose(self) -> ComposeResult:
        options = [Option(Text.assemble((name, "bold"), f"  {kind}"), id=name) for name, kind in self._presets.items()]
        with Vertical(id="preset-box", classes="dialog"):
            yield Label("[b]Presets[/b] — enter loads one · type a name below and enter to save the current knobs")
            yield OptionList(*options, id="preset-list")
            yield Input(placeholder="save the current knobs as…", id="preset-name")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    @on(OptionList.OptionSelected)
    def selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(("load", event.option.id or ""))

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.dismiss(("save", event.value.strip()))

    def action_cancel(self) -> None:
        self.dismiss(None)


class RolloutScreen(ModalScreen[None]):
    """Rollouts from a step: the empirical check of the first token, and the continuations by first token."""

    BINDINGS = [Binding("escape,q,R", "dismiss", "Close", tooltip="Back to the lab (the rollouts are in the tree: b)")]

    def __init__(self, index: int, result: object) -> None:
        super().__init__()
        self._index = index
        self.result = result

    def compose(self) -> ComposeResult:
        from tokenlab.render import FittedCheckTable, check_verdict, continuations_table, headline

        result = self.result
        with VerticalScroll(id="rollout-box", classes="dialog"):
            yield Label(f"[b]Rollouts from step {self._index}[/b] — in the tree now (b) · escape closes"
                        + (" · cancelled" if result.cancelled else ""))  # type: ignore[attr-defined]
            yield Static(headline(result))  # type: ignore[arg-type]
            yield Static(FittedCheckTable(result.check))  # type: ignore[attr-defined]
            yield Static(check_verdict(result.check))  # type: ignore[attr-defined]
            yield Static(continuations_table(result))  # type: ignore[arg-type]
