"""Lessons in the lab: a panel that says what to look at, the list of lessons, and the guide that runs them.

The guide sets each step up through the controller (one `run_to` command: prompt, chat, seed, knobs and
how many tokens to sample), then, once the lab shows that run, opens the step's view (the chart, the stage
view, rollouts or GLTR) and waits for the student's key (L: next, B: back, E: end).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option

from tokenlab.lab.commands import RunTo, Score
from tokenlab.lab.lessons import Lesson, LessonStep

if TYPE_CHECKING:
    from tokenlab.tui.screens.lab import LabScreen


class LessonPanel(Static):
    """The lesson's current step: its title, what to look at, and the keys that go on."""

    DEFAULT_CSS = """
    LessonPanel {
        height: auto;
        max-height: 7;
        display: none;
        border: round $accent;
        border-title-color: $accent;
        padding: 0 1;
    }
    """

    def show_step(self, lesson: Lesson, index: int, *, ready: bool) -> None:
        """Show step `index` of `lesson` (`ready`: the lab has reached it, so the student can look)."""
        step = lesson.steps[index]
        self.border_title = f"lesson {index + 1}/{len(lesson.steps)}: {lesson.title}"
        text = Text()
        if ready:
            text.append(step.say)
        else:
            text.append("setting up: " + _setup_line(step), style="dim italic")
        last = index == len(lesson.steps) - 1
        text.append("\nL " + ("ends the lesson" if last else "next step"), style="bold")
        text.append((" · B back" if index else "") + " · E end · every other key works as usual", style="dim")
        self.update(text)


def _setup_line(step: LessonStep) -> str:
    """What the guide is doing for a step, while it does it."""
    sampling = f"sampling {step.tokens} tokens" if step.tokens else "pausing at the first step"
    return f"the prompt, the knobs and seed {step.seed}; {sampling}…"


class LessonPicker(ModalScreen[str | None]):
    """The lessons to choose from (built-in and the teacher's)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", tooltip="Close without starting a lesson")]

    def __init__(self, lessons: list[Lesson], problems: list[str]) -> None:
        super().__init__()
        self._lessons = lessons
        self._problems = problems

    def compose(self) -> ComposeResult:
        options = [Option(Text.assemble((lesson.title, "bold"), f"  ({len(lesson.steps)} steps)\n",
                                        (lesson.summary, "dim")), id=lesson.name)
                   for lesson in self._lessons]
        with Vertical(id="lesson-box", classes="dialog"):
            yield Label("[b]Lessons[/b]  (enter starts one · escape closes)")
            yield OptionList(*options, id="lesson-list")
            for problem in self._problems:
                yield Label(Text(problem, style="red"))

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    @on(OptionList.OptionSelected)
    def picked(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)


class LessonGuide:
    """Runs a lesson on the lab screen: one step at a time, each waiting for the student."""

    def __init__(self, screen: LabScreen, lesson: Lesson) -> None:
        self.screen = screen
        self.lesson = lesson
        self.index = 0
        self.ready = False
        """Whether the lab shows the current step as set up (its run reached its tokens)."""
        self._run_before = 0

    @property
    def step(self) -> LessonStep:
        """The current step."""
        return self.lesson.steps[self.index]

    def start(self) -> None:
        """Show the panel and set up the first step."""
        self.screen.query_one(LessonPanel).display = True
        self.go(0)

    def go(self, index: int) -> None:
        """Set up step `index`: the lab's prompt, knobs and seed, then sample its tokens."""
        self.index = max(0, min(index, len(self.lesson.steps) - 1))
        self.ready = False
        step = self.step
        screen = self.screen
        screen.viewing = None
        screen.cursor = None
        screen.prompt, screen.chat, screen.params = step.prompt, step.chat, step.params
        self._run_before = screen.run_id
        screen.set_chart(step.view == "chart")
        screen.controller.send(RunTo(step.prompt, step.chat, step.seed, step.params, step.tokens))
        self.show()

    def next(self) -> None:
        """The next step, or the end of the lesson after the last one."""
        if self.index + 1 >= len(self.lesson.steps):
            self.end()
        else:
            self.go(self.index + 1)

    def back(self) -> None:
        """The step before this one."""
        if self.index:
            self.go(self.index - 1)

    def end(self) -> None:
        """Close the panel; the lab stays as the last step left it."""
        self.screen.query_one(LessonPanel).display = False
        self.screen.lesson = None
        self.screen.notify(f"lesson {self.lesson.title!r} ended: the lab is yours (L: another lesson)",
                           markup=False)

    def show(self) -> None:
        """Redraw the panel."""
        self.screen.query_one(LessonPanel).show_step(self.lesson, self.index, ready=self.ready)

    def reached(self) -> bool:
        """Whether the lab now shows the run this step asked for, with its tokens sampled."""
        screen, step = self.screen, self.step
        # the run that opened the lab may come in after go(): it counts only if it is this very set-up
        if (screen.run_id <= self._run_before or screen.prompt != step.prompt or screen.seed != step.seed
                or screen.params != step.params):
            return False
        if screen.stop_reason is not None and screen.steps:
            return True  # stopped early (end of text): as far as it goes
        return (len(screen.steps) == step.tokens and screen.frontier is not None
                and screen.frontier.index == step.tokens and screen.frontier.params == step.params)

    def on_refresh(self) -> None:
        """Called after every change of the lab screen: once the step is reached, open its view."""
        if self.ready or not self.reached():
            return
        self.ready = True
        self.show()
        step, screen = self.step, self.screen
        if step.view == "stages":
            screen.action_stage_view()
        elif step.view == "rollouts":
            screen.action_rollouts()
        elif step.view == "score":
            text = "".join(s.text for s in screen.steps) if step.score_generated else step.score or ""
            screen.controller.send(Score(text))
