"""The lab screen: prompt bar, heat-coloured tokens, candidates, knobs, distribution strip, status.

Threading rule: the controller thread (a Textual thread worker running LabController.serve) owns the
engine and the generation and never touches a widget; it posts LabEventMessage. Every state change of
the screen happens in the handlers below, on the UI thread: one small handler per event type
(`_EVENT_HANDLERS`). The screen talks back only with the typed commands of `tokenlab.lab.commands`.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

from rich.text import Text

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual.worker import Worker, WorkerState, get_current_worker

from tokenlab.export import SESSION_FORMAT, format_for, write_session
from tokenlab.files import OutsideDirectoryError, confined_path, write_text_atomic
from tokenlab.lab.commands import (
    Choose,
    CompareRuns,
    CompareStep,
    NameTokens,
    Pause,
    Play,
    Regenerate,
    ResolveToken,
    Rollouts,
    Save,
    Score,
    SetHotTokens,
    SetLoop,
    SetParams,
    SetPrompt,
    SetSeed,
    ShowStages,
    StepOnce,
    SwitchBranch,
    Toggle,
)
from tokenlab.lab.controller import (
    EngineReady,
    FrontierView,
    LabController,
    LabEvent,
    LabFailed,
    LabNotice,
    RunStarted,
    RunStopped,
    RunsCompared,
    StateChanged,
    StepCompared,
    StepsAdded,
    RolloutProgress,
    RolloutsReady,
    RunsLoaded,
    ScoreReady,
    SessionSaved,
    StageViewReady,
    TokenResolved,
    TokensNamed,
    TreeChanged,
)
from tokenlab.lab.knobs import KNOBS, move_stage, nudge, parse_knob_value, reset_knob, toggle_stage, with_bias
from tokenlab.lab.score import file_text
from tokenlab.lab.step import Candidate, Step
from tokenlab.render import COLOUR_MODES, mode_legend
from tokenlab.sampling import STAGE_NAMES, SamplerParams
from tokenlab.tui.messages import LabEventMessage
from tokenlab.tui.screens.dialogs import (
    HelpScreen,
    HistoryScreen,
    LineInput,
    PromptEditor,
    PresetScreen,
    RolloutScreen,
    RunRecord,
    StageScreen,
    TreeScreen,
)
from tokenlab.tui.widgets import CandidatesTable, DistributionStrip, KnobPanel, PromptBar, StatusLine, TokenView
from tokenlab.tui.screens.lesson import LessonGuide, LessonPanel, LessonPicker
from tokenlab.tui.widgets.chart import DistributionChart, frontier_data, step_data
from tokenlab.tui.widgets.panels import dice_line

HISTORY_SIZE = 15
ROLLOUT_N, ROLLOUT_LENGTH = 64, 16
HOT_FINE, HOT_COARSE = 0.5, 2.0
KNOB_KEYS = {"t": "temperature", "k": "top_k", "p": "top_p", "m": "min_p", "y": "typical_p"}
NEEDS_MODEL = frozenset({"toggle_run", "step", "regenerate", "toggle_loop", "choose", "rollouts", "stage_view",
                         "score", "hot_token", "set_seed", "compare", "lesson"})
"""Actions that ask the model something: dimmed until it is loaded (and for good if it failed to load)."""
DIMMABLE = (*sorted(NEEDS_MODEL), "cursor", "cursor_home", "candidate", "back_to_live", "toggle_stage",
            "move_stage", "reset_knob")
"""Every action check_action can dim."""


_KEY_NAMES = {
    "question_mark": "?", "plus": "+", "equals_sign": "=", "minus": "-", "greater_than_sign": ">",
    "less_than_sign": "<", "left_square_bracket": "[", "right_square_bracket": "]", "left": "←",
    "right": "→", "up": "↑", "down": "↓", "S": "S (shift+s)", "left_curly_bracket": "{",
    "right_curly_bracket": "}", "R": "R (shift+r)", "P": "P (shift+p)",
    "L": "L (shift+l)", "B": "B (shift+b)", "E": "E (shift+e)",
}


def existing_file(text: str, root: Path | None = None) -> Path | None:
    """The file a pasted one-line text names, or None (a paragraph is text, not a path, whatever its length).

    With a root (a served lab), a path outside it raises OutsideDirectoryError.
    """
    line = text.strip()
    if not line or "\n" in line:
        return None
    try:
        path = confined_path(line, root)
        return path if path.is_file() else None
    except OutsideDirectoryError:
        raise
    except (OSError, ValueError, RuntimeError):  # too long for a file name, a NUL byte, no home directory
        return None


def key_label(keys: str) -> str:
    """A binding's keys as the help screen shows them."""
    return " ".join(_KEY_NAMES.get(key, key) for key in keys.split(","))


class LabScreen(Screen[None]):
    """Generation you can pause, inspect, re-sample and branch, with every knob on a key."""

    BINDINGS = [
        Binding("space", "toggle_run", "Pause", tooltip="Pause or resume generation", id="pause"),
        Binding("n", "step", "Step", tooltip="Sample one token (pauses first)", id="step"),
        Binding("r", "regenerate", "Regen", tooltip="Start over from the prompt with the current knobs", id="regenerate"),
        Binding("l", "toggle_loop", "Loop", tooltip="Regenerate over and over, keeping the last runs", id="loop"),
        Binding("e", "edit_prompt", "Prompt", tooltip="Edit the prompt (enter runs it)", id="edit-prompt"),
        Binding("c", "cycle_colours", "Colours", tooltip="Colour tokens by raw p, final p, rank or entropy", id="colours"),
        Binding("question_mark", "help", "Help", tooltip="Every key", id="help"),
        Binding("q", "quit", "Quit", tooltip="Quit tokenlab", id="quit"),
        Binding("left", "cursor(-1)", "Prev token", show=False, tooltip="Inspect the previous step", id="previous-token"),
        Binding("right", "cursor(1)", "Next token", show=False, tooltip="Inspect the next step", id="next-token"),
        Binding("home", "cursor_home", "First token", show=False, tooltip="Inspect the first step", id="first-token"),
        Binding("end", "cursor_end", "Newest", show=False, tooltip="Follow the newest step / the live frontier", id="newest-token"),
        Binding("up", "select_knob(-1)", "Knob up", show=False, tooltip="Select the knob above", id="knob-up"),
        Binding("down", "select_knob(1)", "Knob down", show=False, tooltip="Select the knob below", id="knob-down"),
        Binding("plus,equals_sign", "turn(1)", "Knob +", show=False, tooltip="Raise the selected knob (fine)", id="knob-raise"),
        Binding("minus", "turn(-1)", "Knob -", show=False, tooltip="Lower the selected knob (fine)", id="knob-lower"),
        Binding("greater_than_sign", "turn(1, True)", "Knob ++", show=False, tooltip="Raise the selected knob (coarse)", id="knob-raise-coarse"),
        Binding("less_than_sign", "turn(-1, True)", "Knob --", show=False, tooltip="Lower the selected knob (coarse)", id="knob-lower-coarse"),
        Binding("0", "reset_knob", "Reset knob", show=False, tooltip="Put the selected knob back to its default", id="knob-reset"),
        Binding("o", "toggle_stage", "Stage on/off", show=False, tooltip="Switch the selected knob's stage on or off", id="stage-on-off"),
        Binding("t", "knob('temperature')", "Temperature", show=False, tooltip="Select the temperature knob", id="knob-temperature"),
        Binding("k", "knob('top_k')", "Top-k", show=False, tooltip="Select the top-k knob", id="knob-top-k"),
        Binding("p", "knob('top_p')", "Top-p", show=False, tooltip="Select the top-p knob", id="knob-top-p"),
        Binding("m", "knob('min_p')", "Min-p", show=False, tooltip="Select the min-p knob", id="knob-min-p"),
        Binding("y", "knob('typical_p')", "Typical-p", show=False, tooltip="Select the typical-p knob", id="knob-typical-p"),
        Binding("left_curly_bracket", "move_stage(-1)", "Stage earlier", show=False, tooltip="Move the selected knob's stage earlier in the order", id="stage-earlier"),
        Binding("right_curly_bracket", "move_stage(1)", "Stage later", show=False, tooltip="Move the selected knob's stage later in the order", id="stage-later"),
        Binding("s", "save_session", "Save", show=False, tooltip="Save the session (.json: prompt, knobs, the tree with every step) or export it (.md, .html, .svg screenshot)", id="save"),
        Binding("R", "rollouts", "Rollouts", show=False, tooltip="Sample 64 continuations of 16 tokens from the inspected step in one batch (again: cancel)", id="rollouts"),
        Binding("a", "compare", "A/B", show=False, tooltip="A/B: the inspected step under the current knobs and a preset side by side (← → other presets, g generates both)", id="compare"),
        Binding("i", "stage_view", "Stages", tooltip="The distribution after every stage at the inspected step", id="stages"),
        Binding("P", "presets", "Presets", show=False, tooltip="Load a preset of all knobs, or save the current ones", id="presets"),
        Binding("h", "hot_token", "Hot token", show=False, tooltip="Pick a token to boost or suppress with +/-", id="hot-token"),
        Binding("S", "set_seed", "Seed", show=False, tooltip="Set the random seed (restarts the run)", id="seed"),
        Binding("left_square_bracket", "candidate(-1)", "Cand. up", show=False, tooltip="Select the candidate above", id="candidate-up"),
        Binding("right_square_bracket", "candidate(1)", "Cand. down", show=False, tooltip="Select the candidate below", id="candidate-down"),
        Binding("enter", "choose", "Choose / type", show=False, tooltip="Force the selected candidate at this step and go on from there; after picking a knob (↑ ↓ t k p m y), type its value instead", id="choose"),
        Binding("x", "expand", "More cand.", show=False, tooltip="Show 5 candidates or as many as fit", id="more-candidates"),
        Binding("v", "history", "History", show=False, tooltip="The last runs; pick one to view it", id="history"),
        Binding("g", "score", "Score text", show=False, tooltip="Score a text you paste (GLTR): how likely the model finds each token", id="score"),
        Binding("d", "chart", "Chart", show=False, tooltip="The distribution chart in place of the text: bars, cut-offs, log curve, entropy, dice", id="chart"),
        Binding("L", "lesson", "Lessons", show=False, tooltip="Lessons: pick one; during a lesson, the next step", id="lesson"),
        Binding("B", "lesson_back", "Lesson back", show=False, tooltip="During a lesson: the step before", id="lesson-back"),
        Binding("E", "lesson_end", "End lesson", show=False, tooltip="During a lesson: end it (the lab stays as it is)", id="lesson-end"),
        Binding("b", "tree", "Tree", tooltip="The tree of branches from this prompt; enter switches to one", id="tree"),
        Binding("escape", "back_to_live", "Live", show=False, tooltip="Back from a history run to the live one", id="back-to-live"),
    ]

    params: reactive[SamplerParams] = reactive(SamplerParams, init=False, repaint=False)
    """The knobs: the one copy the keys edit; each change reaches the controller as SetParams (watch_params)."""
    running: reactive[bool] = reactive(False, init=False, repaint=False)
    """Whether the controller is generating, as its last StateChanged said."""
    cursor: reactive[int | None] = reactive(None, init=False, repaint=False)
    """Inspected step; None follows the newest step (or the live frontier when paused)."""
    selected_knob: reactive[int] = reactive(0, init=False, repaint=False)
    """Row of the knob panel the knob keys act on: the knobs, then one row per hot token."""
    candidate_limit: reactive[int] = reactive(5, init=False, repaint=False)
    """Candidates listed now (5, or as many as fit when expanded)."""

    def __init__(self, controller: LabController) -> None:
        super().__init__()
        self.controller = controller
        settings = controller.settings
        # the controller's own copy: it has them already, so no SetParams goes back
        self.set_reactive(LabScreen.params, settings.params)
        self.prompt = settings.prompt
        self.chat: bool | None = settings.chat
        self.seed = settings.seed
        self.model_name = "loading model…"
        self.model_ready = False
        self._compare_preset = 0
        """The preset the A/B view compares with (an index into the preset list)."""
        self.run_id = 0
        self.steps: list[Step] = []
        self.frontier: FrontierView | None = None
        self.selected_candidate = 0
        self.knob_focus = False
        """Whether enter types a knob's value (a knob was picked last) or forces a candidate."""
        self.expanded = False
        """x: as many candidates as fit instead of 5."""
        self.loop = False
        self.stop_reason: str | None = None
        self.tokens_per_second = 0.0
        self.token_names: dict[int, str] = {}
        """Texts of the token ids the lab has named (hot tokens, biases)."""
        self.picked_hot: list[int] = []
        """Hot tokens picked with h that have no bias yet (they get a row anyway)."""
        self._hot_sent: tuple[int, ...] = ()
        self.slow: str | None = None  # the controller's hint while the decoding speed has collapsed
        self.history: deque[RunRecord] = deque(maxlen=HISTORY_SIZE)
        self.viewing: RunRecord | None = None
        self.branch_tree: TreeChanged | None = None
        self.save_path = controller.settings.save_path or "tokenlab-session.json"
        self.rollout_progress: tuple[int, int] | None = None
        """(steps done, total) while rollouts run."""
        self._legend_mode: tuple[str, int] | None = None
        self._key_state: tuple[object, ...] | None = None
        self._keys_pending = False
        """What check_action last decided from; the footer is refreshed when it changes."""
        self.lesson: LessonGuide | None = None
        """The lesson under way (L), if any."""

    # -- layout ------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield PromptBar(id="prompt-bar")
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield TokenView(id="tokens")
                yield DistributionChart(id="chart")
                yield Static(id="legend")
                yield DistributionStrip(id="strip")
            with Vertical(id="right"):
                yield KnobPanel(id="knobs")
                yield CandidatesTable(id="candidates")
        yield LessonPanel(id="lesson")
        yield StatusLine(id="status")
        yield Footer()

    PAINT_SHARE = 0.05
    """Share of a core the screen may use while generating: when showing a batch of new steps costs
    the UI thread more than PAINT_SHARE of the batch interval (Textual's screen update included), the
    controller sends batches less often (up to MAX_BATCH_INTERVAL apart), so a slow terminal or a busy
    machine takes its time from the screen, not from the generation it shows."""
    MAX_BATCH_INTERVAL = 1.0

    _paint_mark: tuple[float, float] | None = None
    """(UI thread CPU seconds, wall seconds) when the previous batch was painted, during a run."""
    _paint_cost: float | None = None
    """UI thread CPU seconds per batch of steps (smoothed)."""
    _base_interval: float = 0.25
    paced_interval: float | None = None
    """The batch interval the pacing chose last (None before a run has been paced)."""

    def on_mount(self) -> None:
        self._base_interval = self.controller.batch_interval
        self.controller.emit = self._emit
        self.run_controller()
        self.refresh_view()
        lesson = getattr(self.app, "startup_lesson", None)  # tokenlab lesson NAME
        if lesson is not None:
            self.start_lesson(lesson)

    def on_unmount(self) -> None:
        self.controller.quit()

    def _emit(self, event: object) -> None:
        """Called on the controller thread: hand the event to the UI thread."""
        self.post_message(LabEventMessage(event))  # type: ignore[arg-type]

    @work(thread=True, exclusive=True, exit_on_error=False, group="engine", description="tokenlab generation")
    def run_controller(self) -> None:
        """The controller thread: owns the engine; returns when the screen goes away."""
        worker = get_current_worker()
        self.controller.serve(should_stop=lambda: worker.is_cancelled)

    @on(Worker.StateChanged)
    def worker_failed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            self.running = False
            self.notify(f"generation stopped: {event.worker.error}", severity="error", timeout=8, markup=False)
            self.refresh_view()

    # -- events from the controller ------------------------------------------------------------------

    @on(LabEventMessage)
    def lab_event(self, message: LabEventMessage) -> None:
        """Hand the event to the handler of its type, then render."""
        handler = self._EVENT_HANDLERS.get(type(message.event))
        if handler is None:
            raise TypeError(f"the lab screen has no handler for {type(message.event).__name__}")
        handler(self, message.event)
        if type(message.event) is StepsAdded and self.running:
            self._pace_batches()
        elif self._paint_mark is not None and not self.running:
            self._paint_mark = None  # a pause: the next run starts at the base rate and measures afresh
            self.controller.batch_interval = self._base_interval
        self.refresh_view()

    def _pace_batches(self) -> None:
        """Set the controller's batch interval from what the UI thread spent since the last batch."""
        cpu, wall = time.thread_time(), time.perf_counter()
        mark, self._paint_mark = self._paint_mark, (cpu, wall)
        if mark is None or wall - mark[1] > 4 * self.MAX_BATCH_INTERVAL:
            return
        cost = cpu - mark[0]
        self._paint_cost = cost if self._paint_cost is None else 0.5 * self._paint_cost + 0.5 * cost
        wanted = self._paint_cost / self.PAINT_SHARE
        self.paced_interval = min(self.MAX_BATCH_INTERVAL, max(self._base_interval, wanted))
        self.controller.batch_interval = self.paced_interval

    def _got_steps_added(self, event: StepsAdded) -> None:
        if event.run_id != self.run_id:
            return  # a batch of a run that has been replaced
        del self.steps[event.start:]
        self.steps.extend(event.steps)
        self.tokens_per_second = event.tokens_per_second
        self.slow = event.slow
        if self.frontier is not None and self.frontier.index != len(self.steps):
            self.frontier = None

    def _got_frontier(self, event: FrontierView) -> None:
        if event.run_id == self.run_id:
            self.frontier = event

    def _got_run_started(self, event: RunStarted) -> None:
        self.run_id = event.run_id
        self.seed = event.seed
        self.set_reactive(LabScreen.params, event.params)  # the controller's: nothing to send back
        self._sync_hot()
        self.prompt = event.prompt
        self.steps = []
        self.frontier = None
        self.cursor = None
        self.stop_reason = None
        self.tokens_per_second = 0.0
        self.slow = None
        self.chat = event.chat

    def _got_run_stopped(self, event: RunStopped) -> None:
        if event.run_id != self.run_id:
            return
        self.stop_reason = event.reason
        if not event.replayed:
            self.tokens_per_second = event.tokens_per_second
            self.history.append(RunRecord(event.run_id, self.seed, self.params, tuple(self.steps), event.reason))

    def _got_score(self, event: ScoreReady) -> None:
        from tokenlab.tui.screens.score import ScoreScreen

        self.app.push_screen(ScoreScreen(event.steps, event.summary, event.watermark))

    def _got_session_saved(self, event: SessionSaved) -> None:
        files_dir = self.controller.settings.files_dir
        # a served lab takes relative paths only: offer the saved file as one next time
        self.save_path = event.path if files_dir is None else os.path.relpath(event.path, files_dir)
        if not format_for(event.path, default=SESSION_FORMAT).loadable:
            self.notify(f"exported to {event.path} (an export cannot be loaded back; save .json for that)",
                        markup=False)
        else:
            self.notify(f"session saved to {event.path} (open it with tokenlab lab --load)", markup=False)

    def _got_rollout_progress(self, event: RolloutProgress) -> None:
        self.rollout_progress = (event.done, event.total)

    def _got_rollouts(self, event: RolloutsReady) -> None:
        self.rollout_progress = None
        self.app.push_screen(RolloutScreen(event.index, event.result))

    def _got_stage_view(self, event: StageViewReady) -> None:
        self.app.push_screen(StageScreen(event.index, event.view))

    def _got_step_compared(self, event: StepCompared) -> None:
        from tokenlab.render import describe_difference
        from tokenlab.tui.screens.compare import CompareScreen

        def then(answer: tuple[str, int] | None) -> None:
            if answer is None:
                return
            what, preset = answer
            if what == "runs":
                self.controller.send(CompareRuns(event.index, event.params_b, event.label))
            else:
                self._compare_with(event.index, preset)

        screen = CompareScreen(event.index, event.label, self._compare_preset, event.comparison,
                               describe_difference(self.params, event.params_b))
        self.app.push_screen(screen, then)

    def _got_runs_compared(self, event: RunsCompared) -> None:
        from tokenlab.tui.screens.compare import CompareRunsScreen

        self.app.push_screen(CompareRunsScreen(event.index, event.label, event.comparison))

    def _got_tree(self, event: TreeChanged) -> None:
        self.branch_tree = event

    def _got_state(self, event: StateChanged) -> None:
        self.running = event.running
        self.loop = event.loop

    def _got_engine_ready(self, event: EngineReady) -> None:
        self.model_name = event.model_name
        self.model_ready = True

    def _got_token_resolved(self, event: TokenResolved) -> None:
        self.token_names[event.token_id] = event.text
        if event.token_id not in self.hot_ids():
            self.picked_hot.append(event.token_id)
        self.selected_knob = len(KNOBS) + self.hot_ids().index(event.token_id)
        self._sync_hot()

    def _got_tokens_named(self, event: TokensNamed) -> None:
        self.token_names.update(event.names)

    def _got_runs_loaded(self, event: RunsLoaded) -> None:
        for number, (steps, reason) in enumerate(event.runs[-HISTORY_SIZE:], start=1):
            self.history.append(RunRecord(number, None, None, steps, reason))

    def _got_notice(self, event: LabNotice) -> None:
        self.notify(event.message, timeout=8)

    def _got_failure(self, event: LabFailed) -> None:
        self.rollout_progress = None
        if not self.model_ready and self.model_name == "loading model…":
            self.model_name = "no model"
        self.notify(event.message, severity="error", timeout=8, markup=False)

    _EVENT_HANDLERS: ClassVar[dict[type[LabEvent], Callable[[LabScreen, Any], None]]] = {
        StepsAdded: _got_steps_added,
        FrontierView: _got_frontier,
        RunStarted: _got_run_started,
        RunStopped: _got_run_stopped,
        ScoreReady: _got_score,
        SessionSaved: _got_session_saved,
        RolloutProgress: _got_rollout_progress,
        RolloutsReady: _got_rollouts,
        StageViewReady: _got_stage_view,
        StepCompared: _got_step_compared,
        RunsCompared: _got_runs_compared,
        TreeChanged: _got_tree,
        StateChanged: _got_state,
        EngineReady: _got_engine_ready,
        TokenResolved: _got_token_resolved,
        TokensNamed: _got_tokens_named,
        RunsLoaded: _got_runs_loaded,
        LabNotice: _got_notice,
        LabFailed: _got_failure,
    }
    """The handler of each event type the controller emits."""

    # -- typed state: validation and reactions -------------------------------------------------------

    def validate_cursor(self, cursor: int | None) -> int | None:
        """Keep the inspected step within the shown steps (and the live next step while it is shown)."""
        if cursor is None:
            return None
        steps = self.shown_steps()
        live = self.frontier is not None and self.viewing is None and not self.running
        return max(0, min(len(steps) if live else len(steps) - 1, cursor))

    def watch_cursor(self) -> None:
        self.selected_candidate = 0  # another step lists other candidates

    def validate_selected_knob(self, row: int) -> int:
        """Keep the selected row within the knob panel's rows."""
        return max(0, min(row, self._knob_rows() - 1))

    def validate_candidate_limit(self, limit: int) -> int:
        """At least one candidate is always listed."""
        return max(1, limit)

    def watch_params(self, params: SamplerParams) -> None:
        self.controller.send(SetParams(params))
        self._sync_hot()

    # -- which keys do something now -------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """None (dimmed in the footer, the key does nothing) for a key that cannot act in this state."""
        if action == "choose" and self.knob_focus and self.selected_knob < len(KNOBS):
            return True  # enter types the picked knob's value (no model or step needed)
        if action in NEEDS_MODEL and not self.model_ready:
            return None
        if action in ("cursor", "cursor_home") and not self.shown_steps():
            return None
        if action in ("choose", "candidate", "stage_view", "compare") and self.effective_cursor() is None:
            return None
        if action == "rollouts" and self.rollout_progress is None and self.effective_cursor() is None:
            return None  # (while rollouts run, R cancels them)
        if action == "back_to_live" and self.viewing is None:
            return None
        if action in ("toggle_stage", "move_stage") and self._row_stage() is None:
            return None
        if action == "reset_knob" and self.selected_knob >= len(KNOBS) and self.hot is None:
            return None
        return True

    KEYS_SETTLE = 0.15
    """Seconds the footer waits for the keys' states to settle while generating: a run's first steps
    flip them twice within a few dozen milliseconds, and every footer refresh restyles each key."""

    def _refresh_keys(self) -> None:
        """Refresh the footer when what check_action decides has changed (not on every render)."""
        state = tuple(self.check_action(action, ()) for action in DIMMABLE)
        if state == self._key_state:
            return
        self._key_state = state
        if not self.running:
            self.refresh_bindings()
        elif not self._keys_pending:
            self._keys_pending = True
            self.set_timer(self.KEYS_SETTLE, self._settled_keys)

    def _settled_keys(self) -> None:
        self._keys_pending = False
        self.refresh_bindings()

    # -- hot tokens ----------------------------------------------------------------------------------

    def hot_ids(self) -> list[int]:
        """Every hot token: each token with a logit bias, then the ones picked with h and not biased yet."""
        biased = list(self.params.logit_bias)
        return biased + [token_id for token_id in self.picked_hot if token_id not in biased]

    @property
    def hot(self) -> tuple[int, str] | None:
        """The hot token the selected row stands for, with its text (None when a knob is selected)."""
        ids = self.hot_ids()
        offset = self.selected_knob - len(KNOBS)
        if not 0 <= offset < len(ids):
            return None
        token_id = ids[offset]
        return token_id, self.token_names.get(token_id, f"#{token_id}")

    def _sync_hot(self) -> None:
        """Tell the controller which tokens to list among the candidates; ask it for unknown names."""
        ids = tuple(self.hot_ids())
        if ids != self._hot_sent:
            self._hot_sent = ids
            self.controller.send(SetHotTokens(ids))
        unnamed = tuple(token_id for token_id in ids if token_id not in self.token_names)
        if unnamed:
            self.controller.send(NameTokens(unnamed))

    def _knob_rows(self) -> int:
        """Rows of the knob panel: every knob, then one per hot token (or one to pick the first)."""
        return len(KNOBS) + max(1, len(self.hot_ids()))

    # -- what is inspected -------------------------------------------------------------------------

    def shown_steps(self) -> list[Step]:
        """The steps on screen: a history run being viewed, or the live run."""
        return list(self.viewing.steps) if self.viewing is not None else self.steps

    def effective_cursor(self) -> int | None:
        """The inspected step index (len(steps) is the live frontier)."""
        steps = self.shown_steps()
        if self.cursor is not None:
            return min(self.cursor, len(steps))
        if self.viewing is None and not self.running and self.frontier is not None \
                and self.frontier.index == len(steps):
            return len(steps)
        return len(steps) - 1 if steps else None

    def inspected(self) -> tuple[list[Candidate], int | None, str]:
        """Candidates, chosen id and title of the inspected step."""
        cursor = self.effective_cursor()
        steps = self.shown_steps()
        if cursor is None:
            return [], None, "candidates"
        if cursor >= len(steps):
            if self.frontier is None:
                return [], None, f"next step {cursor}"
            return list(self.frontier.candidates), None, f"next step {cursor} · live"
        step = steps[cursor]
        return list(step.top), step.id, f"step {cursor} · p {step.prob:.3f} · rank {step.rank}"

    # -- rendering -----------------------------------------------------------------------------------

    def on_resize(self) -> None:
        # the curve strip and the legend are drawn for a width: draw them again once the new layout is done
        self.call_after_refresh(self.refresh_view)

    def refresh_view(self) -> None:
        """Render every panel from the screen's state."""
        if not self.is_mounted:
            return
        steps = self.shown_steps()
        cursor = self.effective_cursor()
        token_view = self.query_one(TokenView)
        following = self.cursor is None and (self.running or self.viewing is not None)
        token_view.show_prompt(self.prompt)
        token_view.show(steps, None if following else cursor,
                        frontier=self.frontier is not None and self.viewing is None)
        legend = self.query_one("#legend", Static)
        legend_key = (token_view.colour_mode, legend.content_region.width)
        if self._legend_mode != legend_key:
            self._legend_mode = legend_key
            legend.update(mode_legend(token_view.colour_mode, legend.content_region.width or None), layout=False)
        candidates, chosen, title = self.inspected()
        table = self.query_one(CandidatesTable)
        hot_ids = self.hot_ids()
        self.candidate_limit = self._candidate_limit(table, candidates, chosen, hot_ids)
        rows = table.rows_for(candidates, chosen, self.candidate_limit, hot_ids)
        self.selected_candidate = min(self.selected_candidate, max(0, len(rows) - 1))
        if cursor is not None and cursor < len(steps):
            negative = steps[cursor].negative
        else:
            negative = self.frontier.negative if self.frontier is not None and cursor is not None else ()
        table.show(candidates, chosen=chosen, selected=self.selected_candidate, limit=self.candidate_limit,
                   title=title, hot=hot_ids, dice=self._dice(table, steps, cursor), negative=negative)
        strip = self.query_one(DistributionStrip)
        width = strip.size.width or 40
        if cursor is not None and cursor >= len(steps) and self.frontier is not None:
            strip.show_frontier(self.frontier, width)
        elif cursor is not None and cursor < len(steps):
            strip.show_step(steps[cursor], width)
        chart = self.query_one(DistributionChart)
        if chart.display and cursor is not None and cursor >= len(steps) and self.frontier is not None:
            chart.show(frontier_data(self.frontier, title, getattr(self.controller.engine, "n_vocab", None)))
        elif chart.display and cursor is not None and cursor < len(steps):
            chart.show(step_data(steps[cursor], title))
        hot_rows = [(self.token_names.get(token_id, f"#{token_id}"), self.params.logit_bias.get(token_id, 0.0))
                    for token_id in hot_ids]
        live = self.frontier.live if self.frontier is not None and self.viewing is None else ()
        self.selected_knob = self.selected_knob  # validated again: a hot token's row may have gone
        self.query_one(KnobPanel).show(self.params, self.selected_knob, hot_rows=hot_rows, live=live)
        self.query_one(PromptBar).show(self.prompt, self.model_name, self.chat)
        state = "running" if self.running else ("stopped" if self.stop_reason else "paused")
        if self.rollout_progress is not None:
            done, total = self.rollout_progress
            state = f"rollouts {100 * done // max(1, total)}% (R cancels)"
        if not self.model_ready:
            state = "loading" if self.model_name == "loading model…" else "no model"
        self.query_one(StatusLine).show(
            state=state, model=self.model_name, tokens=len(steps), max_tokens=self.controller.settings.max_tokens,
            tokens_per_second=self.tokens_per_second, stop_reason=self.stop_reason, seed=self.seed,
            loop=self.loop, viewing=f"run #{self.viewing.run_id}" if self.viewing else None,
            branches=self.branch_tree.branches if self.branch_tree is not None else 0,
            slow=self.slow if self.running else None,
        )
        if self.cursor is None:
            token_view.follow()
        self._refresh_keys()
        if self.lesson is not None:
            self.lesson.on_refresh()

    def _dice(self, table: CandidatesTable, steps: list[Step], cursor: int | None) -> Text | None:
        """The dice line of the inspected step (the live next step has not been drawn yet)."""
        if cursor is None:
            return None
        width = max(20, table.content_region.width or 38)
        if cursor < len(steps):
            return dice_line(steps[cursor], width)
        return dice_line(None, width, survivors=self.frontier.survivors if self.frontier is not None else None)

    def _candidate_limit(self, table: CandidatesTable, candidates: list[Candidate], chosen: int | None,
                         hot_ids: list[int]) -> int:
        """5 candidates, or as many as fit with the chosen and hot ones that rank lower (x)."""
        if not self.expanded:
            return 5
        fits = table.fits()
        listed = {c.id for c in candidates[:fits]}
        extras = sum(1 for token_id in {chosen, *hot_ids} if token_id is not None and token_id not in listed
                     and any(c.id == token_id for c in candidates))
        return max(1, fits - extras)

    # -- actions: running ------------------------------------------------------------------------------

    def action_toggle_run(self) -> None:
        if self.viewing is not None:
            self.action_back_to_live()
            return
        self.cursor = None
        self.controller.send(Toggle())

    def action_step(self) -> None:
        self.viewing = None
        self.cursor = None
        self.controller.send(StepOnce())

    def action_regenerate(self) -> None:
        self.viewing = None
        self.controller.send(Regenerate())

    def action_toggle_loop(self) -> None:
        self.controller.send(SetLoop(not self.loop))

    # -- actions: inspecting ---------------------------------------------------------------------------

    def action_cursor(self, delta: int) -> None:
        current = self.effective_cursor()
        if current is None:
            return
        self.cursor = current + delta  # validate_cursor keeps it on a step
        self.knob_focus = False
        self.refresh_view()

    def action_cursor_home(self) -> None:
        if self.shown_steps():
            self.cursor = 0
            self.refresh_view()

    def action_cursor_end(self) -> None:
        self.cursor = None
        self.refresh_view()

    def action_candidate(self, delta: int) -> None:
        self.selected_candidate = max(0, self.selected_candidate + delta)
        self.knob_focus = False
        self.refresh_view()

    def action_expand(self) -> None:
        self.expanded = not self.expanded
        self.refresh_view()

    def action_chart(self) -> None:
        self.set_chart(not self.query_one(DistributionChart).display)

    def set_chart(self, shown: bool) -> None:
        """Show the distribution chart in place of the text, or the text again."""
        self.query_one(DistributionChart).display = shown
        for widget in (self.query_one(TokenView), self.query_one("#legend"), self.query_one(DistributionStrip)):
            widget.display = not shown  # the chart has its own curve and takes the text's place
        self.refresh_view()

    def start_lesson(self, lesson: object) -> None:
        """Run a lesson (a lab.lessons.Lesson) from its first step."""
        self.lesson = LessonGuide(self, lesson)  # type: ignore[arg-type]
        self.lesson.start()

    def action_lesson(self) -> None:
        if self.lesson is not None:
            self.lesson.next()
            return
        from tokenlab.lab.lessons import find_lessons

        lessons, problems = find_lessons()
        by_name = {lesson.name: lesson for lesson in lessons}

        def picked(name: str | None) -> None:
            if name is not None:
                self.start_lesson(by_name[name])

        self.app.push_screen(LessonPicker(lessons, problems), picked)

    def action_lesson_back(self) -> None:
        if self.lesson is not None:
            self.lesson.back()

    def action_lesson_end(self) -> None:
        if self.lesson is not None:
            self.lesson.end()

    def action_cycle_colours(self) -> None:
        view = self.query_one(TokenView)
        view.colour_mode = COLOUR_MODES[(COLOUR_MODES.index(view.colour_mode) + 1) % len(COLOUR_MODES)]
        self.notify(f"colours: {view.colour_mode}", timeout=1.5)
        self.refresh_view()

    def action_choose(self) -> None:
        if self.knob_focus and self.selected_knob < len(KNOBS):
            self.action_type_knob()
            return
        if self.viewing is not None:
            self.notify("choosing works on the live run; escape goes back to it", severity="warning")
            return
        candidates, chosen, _ = self.inspected()
        cursor = self.effective_cursor()
        if not candidates or cursor is None:
            return
        rows = self.query_one(CandidatesTable).rows_for(candidates, chosen, self.candidate_limit, self.hot_ids())
        candidate = rows[min(self.selected_candidate, len(rows) - 1)]
        del self.steps[cursor:]
        self.frontier = None
        self.cursor = None
        self.stop_reason = None
        self.controller.send(Choose(cursor, candidate.id))
        self.controller.send(Play())
        self.refresh_view()

    def action_history(self) -> None:
        if not self.history:
            self.notify("no finished runs yet: let a run finish, or turn on loop mode (l)")
            return
        records = list(self.history)

        def view(index: int | None) -> None:
            if index is None:
                return
            self.controller.send(Pause())
            self.viewing = records[index]
            self.cursor = None
            self.refresh_view()

        self.app.push_screen(HistoryScreen(records, self.token_names), view)

    def action_tree(self) -> None:
        if self.branch_tree is None or not self.branch_tree.segments:
            self.notify("the tree is empty: finish a run, regenerate (r) or choose a candidate (enter)")
            return

        def switch(path: tuple[int, ...] | None) -> None:
            if path is not None:
                self.viewing = None
                self.cursor = None
                self.stop_reason = None
                self.controller.send(SwitchBranch(path))

        self.app.push_screen(TreeScreen(self.branch_tree.segments, self.branch_tree.runs, self.branch_tree.current), switch)

    def action_score(self) -> None:
        def edited(result: tuple[str, bool | None] | None) -> None:
            if result is None:
                return
            text = result[0]
            if not text.strip():
                self.notify("the text is empty: nothing to score", severity="error")
                return
            try:
                candidate = existing_file(text, self.controller.settings.files_dir)
            except OutsideDirectoryError as exc:
                self.notify(str(exc), severity="error", markup=False)
                return
            if candidate is not None:
                try:
                    text = file_text(candidate.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError) as exc:
                    self.notify(f"cannot read {candidate}: {exc}", severity="error", markup=False)
                    return
            self.notify("scoring…", timeout=2)
            self.controller.send(Score(text))

        self.app.push_screen(PromptEditor("", None, title="Text to score, or a file's path (enter scores it)"),
                             edited)

    def action_back_to_live(self) -> None:
        if self.viewing is not None:
            self.viewing = None
            self.cursor = None
            self.refresh_view()

    # -- actions: knobs ------------------------------------------------------------------------------

    def _set_params(self, params: SamplerParams | Callable[[], SamplerParams]) -> None:
        if callable(params):
            try:
                params = params()
            except ValueError as exc:  # e.g. an exponential schedule cannot reach temperature 0
                self.notify(str(exc), severity="warning", markup=False)
                return
        self.params = params  # watch_params sends it to the controller
        self.refresh_view()

    def action_select_knob(self, delta: int) -> None:
        self.selected_knob = (self.selected_knob + delta) % self._knob_rows()
        self.knob_focus = True
        self.refresh_view()

    def action_knob(self, name: str) -> None:
        self.selected_knob = next(i for i, knob in enumerate(KNOBS) if knob.name == name)
        self.knob_focus = True
        self.refresh_view()

    def action_turn(self, steps: int, coarse: bool = False) -> None:
        if self.selected_knob >= len(KNOBS):
            hot = self.hot
            if hot is None:
                self.notify("no hot token yet: press h and type one", severity="warning")
                return
            old = self.params.logit_bias.get(hot[0], 0.0)
            if old == float("-inf"):
                old = -HOT_COARSE * 5  # a banned token comes back as a strong suppression
            bias = old + steps * (HOT_COARSE if coarse else HOT_FINE)
            if hot[0] not in self.picked_hot:
                self.picked_hot.append(hot[0])  # keep its row when the bias passes through 0
            self._set_params(with_bias(self.params, hot[0], round(bias, 3)))
            return
        self._set_params(lambda: nudge(self.params, KNOBS[self.selected_knob].name, steps, coarse=coarse))

    def action_type_knob(self) -> None:
        knob = KNOBS[self.selected_knob]

        def typed(text: str | None) -> None:
            if text is None:
                return
            try:
                value = parse_knob_value(knob.name, text)
                params = self.params.replace(**{knob.name: value})
            except ValueError as exc:  # nothing changes: the knob keeps its value
                self.notify(f"{exc}; {knob.label} stays {knob.format(getattr(self.params, knob.name))}",
                            severity="error", timeout=8, markup=False)
                return
            self._set_params(params)

        if math.isinf(knob.minimum) and math.isinf(knob.maximum):
            bounds = "any number"
        elif math.isinf(knob.maximum):
            bounds = f"{knob.minimum:g} or more"
        else:
            bounds = f"{knob.minimum:g} to {knob.maximum:g}"
        self.app.push_screen(LineInput(f"{knob.label} ({bounds}{', or off' if knob.optional else ''}): "
                                       f"{knob.help}; enter sets it, escape keeps it",
                                       value=knob.format(getattr(self.params, knob.name))), typed)

    def action_reset_knob(self) -> None:
        if self.selected_knob >= len(KNOBS):
            hot = self.hot
            if hot is not None:  # 0 clears a hot token: its bias and its row
                if hot[0] in self.picked_hot:
                    self.picked_hot.remove(hot[0])
                self._set_params(with_bias(self.params, hot[0], 0.0))
            return
        self._set_params(lambda: reset_knob(self.params, KNOBS[self.selected_knob].name))

    def _row_stage(self) -> str | None:
        """The stage of the selected knob; None on a hot token's row or a knob of several stages."""
        if self.selected_knob >= len(KNOBS):
            return None  # a hot token is a logit bias: it always runs first
        return KNOBS[self.selected_knob].stage or None

    def action_toggle_stage(self) -> None:
        stage = self._row_stage()
        if stage is not None:  # check_action dims o otherwise
            self._set_params(lambda: toggle_stage(self.params, stage))

    def action_move_stage(self, delta: int) -> None:
        stage = self._row_stage()
        if stage is None:  # check_action dims { } otherwise
            return
        if stage not in self.params.samplers and stage in STAGE_NAMES:
            self.notify(f"{stage} is switched off (o switches it on)", severity="warning")
            return
        self._set_params(lambda: move_stage(self.params, stage, delta))  # the knob panel's first line shows the order

    def action_save_session(self) -> None:
        def picked(path: str | None) -> None:
            if not path or not path.strip():
                return
            path = path.strip()
            try:
                target = confined_path(path, self.controller.settings.files_dir)
            except OutsideDirectoryError as exc:
                self.notify(str(exc), severity="error", markup=False)
                return
            try:
                file_format = format_for(path)
            except ValueError as exc:
                self.notify(str(exc), severity="error", markup=False)
                return
            if file_format.from_screen:
                try:
                    written = write_text_atomic(target, self.app.export_screenshot())
                except OSError as exc:
                    self.notify(f"could not save the screenshot: {exc}", severity="error", markup=False)
                    return
                self.notify(f"screenshot saved to {written}", markup=False)
                return
            self.controller.send(Save(path, write_session))

        self.app.push_screen(LineInput("Save the session (.json) or export it (.md, .html, .svg screenshot)",
                                       value=self.save_path), picked)

    def action_rollouts(self) -> None:
        if self.rollout_progress is not None:
            self.controller.cancel_rollouts.set()  # read by the controller thread between batch steps
            self.notify("cancelling rollouts…", timeout=2)
            return
        cursor = self.effective_cursor()
        if cursor is None or self.viewing is not None:
            self.notify("rollouts start from a step of the live run", severity="warning")
            return
        self.rollout_progress = (0, ROLLOUT_N * ROLLOUT_LENGTH)
        self.controller.send(Rollouts(cursor, ROLLOUT_N, ROLLOUT_LENGTH))
        self.refresh_view()

    def action_stage_view(self) -> None:
        cursor = self.effective_cursor()
        if cursor is None or self.viewing is not None:
            self.notify("pause on a step of the live run to see its stages", severity="warning")
            return
        self.controller.send(ShowStages(cursor))

    def action_compare(self) -> None:
        cursor = self.effective_cursor()
        if cursor is None or self.viewing is not None:
            self.notify("pause on a step of the live run to compare knob sets on it", severity="warning")
            return
        self._compare_with(cursor, None)

    def _compare_with(self, index: int, preset: int | None) -> None:
        """Ask for step `index` under the current knobs and preset number `preset` (None: the first that differs)."""
        from tokenlab.presets import PresetError, list_presets, load_preset

        try:
            names = list(list_presets())
            sets = [load_preset(name) for name in names]
        except (PresetError, OSError) as exc:
            self.notify(str(exc), severity="error", timeout=8, markup=False)
            return
        if preset is None:
            preset = next((i for i, params in enumerate(sets) if params != self.params), 0)
        preset %= len(names)
        self._compare_preset = preset
        self.controller.send(CompareStep(index, sets[preset], names[preset]))

    def action_presets(self) -> None:
        from tokenlab.presets import PresetError, list_presets, load_preset, save_preset
        from tokenlab.sampling.constraint import CONSTRAINT_FIELDS

        def chosen(result: tuple[str, str] | None) -> None:
            if result is None:
                return
            action, name = result
            try:
                if action == "save":
                    path = save_preset(name, self.params)
                    self.notify(f"saved preset {name!r} to {path}", markup=False)
                else:
                    # a preset holds knobs; the run's grammar, regex or schema stays
                    constraint = {field: getattr(self.params, field) for field in CONSTRAINT_FIELDS}
                    self._set_params(load_preset(name).replace(**constraint))
                    self.notify(f"loaded preset {name!r}", markup=False)
            except (PresetError, ValueError, OSError) as exc:
                self.notify(str(exc), severity="error", timeout=8, markup=False)

        try:
            presets = list_presets()
        except PresetError as exc:
            self.notify(str(exc), severity="error", timeout=8, markup=False)
            return
        self.app.push_screen(PresetScreen(presets), chosen)

    def action_hot_token(self) -> None:
        def picked(text: str | None) -> None:
            if text:
                self.controller.send(ResolveToken(text))

        self.app.push_screen(LineInput("Hot token: its exact text (e.g. ' Paris', with the space) or #ID",
                                       placeholder=" Paris"), picked)

    def action_set_seed(self) -> None:
        def picked(text: str | None) -> None:
            if text is None:
                return
            if not text.strip().isdigit():
                self.notify(f"the seed must be a non-negative whole number, got {text!r}", severity="error",
                            markup=False)
                return
            self.controller.send(SetSeed(int(text.strip())))

        self.app.push_screen(LineInput("Seed (restarts the run from the prompt)", value=str(self.seed)), picked)

    def action_edit_prompt(self) -> None:
        def edited(result: tuple[str, bool | None] | None) -> None:
            if result is None:
                return
            prompt, chat = result
            if not prompt.strip():
                self.notify("the prompt is empty; type something to continue", severity="error")
                return
            self.prompt, self.chat = prompt, chat
            self.viewing = None
            self.controller.send(SetPrompt(prompt, chat))
            self.refresh_view()

        self.app.push_screen(PromptEditor(self.prompt, self.chat), edited)

    def action_help(self) -> None:
        keys = [(key_label(binding.key), binding.tooltip or binding.description)
                for binding in self.BINDINGS if isinstance(binding, Binding)]
        self.app.push_screen(HelpScreen(keys))

    async def action_quit(self) -> None:
        self.controller.quit()
        self.app.exit()
