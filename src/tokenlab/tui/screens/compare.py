"""A/B in the lab: the inspected step under the current knobs (A) and a preset (B), and two generations."""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from tokenlab.lab.compare import GenerationComparison, StepComparison
from tokenlab.render import compare_step_table, compared_text, only_one_can_draw

CompareAction = tuple[str, int]
"""What the A/B screen asks the lab for: ("step", preset index) to show another B, ("runs", preset index)
to generate with A and B."""


class CompareScreen(ModalScreen[CompareAction | None]):
    """One step under knob sets A (the lab's) and B (a preset): survivors, final p, what only one can draw."""

    BINDINGS = [
        Binding("escape,q,a", "dismiss_none", "Close", tooltip="Back to the lab", id="compare.close"),
        Binding("left", "other(-1)", "Previous B", tooltip="Compare with the previous preset", id="compare.prev"),
        Binding("right", "other(1)", "Next B", tooltip="Compare with the next preset", id="compare.next"),
        Binding("g", "runs", "Generate A and B", tooltip="Generate from this step with A and with B, same seed",
                id="compare.runs"),
    ]

    def __init__(self, index: int, label: str, preset: int, comparison: StepComparison, difference: str) -> None:
        super().__init__()
        self._index = index
        self._label = label
        self._preset = preset
        self.comparison = comparison
        self._difference = difference

    def compose(self) -> ComposeResult:
        step = self.comparison
        table = compare_step_table(step)
        table.title = None
        with VerticalScroll(id="compare-box", classes="dialog"):
            yield Label(f"[b]A/B[/b] — step {self._index} · A: the lab's knobs · B: preset "
                        f"[b]{escape(self._label)}[/b]")
            yield Label("← → another preset as B · g generates both from here · escape closes", classes="dim")
            yield Static(Text.assemble(("B differs from A in: ", "bold"), self._difference), id="compare-diff")
            yield Static(Text(f"A keeps {step.survivors_a:,} tokens ({step.entropy_a:.2f} bits) · "
                              f"B keeps {step.survivors_b:,} ({step.entropy_b:.2f} bits)"), id="compare-summary")
            yield Static(table, id="compare-table")
            yield Static(only_one_can_draw("A", step.only_a, step.only_a_mass), id="compare-only-a")
            yield Static(only_one_can_draw("B", step.only_b, step.only_b_mass), id="compare-only-b")

    def action_dismiss_none(self) -> None:
        self.dismiss(None)

    def action_other(self, delta: int) -> None:
        self.dismiss(("step", self._preset + delta))

    def action_runs(self) -> None:
        self.dismiss(("runs", self._preset))


class CompareRunsScreen(ModalScreen[None]):
    """Two generations from one step, A and B side by side, with the same seed."""

    BINDINGS = [Binding("escape,q,g", "dismiss", "Close", tooltip="Back to the lab", id="compare-runs.close")]

    def __init__(self, index: int, label: str, runs: GenerationComparison) -> None:
        super().__init__()
        self._index = index
        self._label = label
        self.runs = runs

    def compose(self) -> ComposeResult:
        runs = self.runs
        first = runs.first_difference
        parted = "the same text" if first is None else f"they part at token {first + 1}"
        with Vertical(id="compare-runs-box", classes="dialog"):
            yield Label(f"[b]A/B from step {self._index}[/b] — seed {runs.seed}, {parted} · heat: raw p · "
                        "escape closes")
            with Horizontal(id="compare-panes"):
                for side, steps, stop in (("A: the lab's knobs", runs.a, runs.stop_a),
                                          (f"B: {escape(self._label)}", runs.b, runs.stop_b)):
                    with VerticalScroll(classes="compare-pane"):
                        yield Label(f"[b]{side}[/b]", markup=True)
                        yield Label(f"{len(steps)} tokens · stop: {stop} · mean log-p {runs.mean_logprob(steps):.2f}",
                                    markup=False)
                        yield Static(compared_text(steps), classes="compare-text")
