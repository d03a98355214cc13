"""The lab screen: prompt bar, heat-coloured tokens, candidates, knobs, distribution strip, status.

Threading rule: the controller thread (a Textual thread worker running LabController.serve) owns the
engine and the generation and never touches a widget; it posts LabEventMessage. Every state change of
the screen happens in the handlers below, on the UI thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual.worker import Worker, WorkerState, get_current_worker

from tokenlab.lab.controller import (
    EngineReady,
    FrontierView,
    LabController,
    LabFailed,
    RunStarted,
    RunStopped,
    StateChanged,
    StepsAdded,
    RolloutProgress,
    RolloutsReady,
    ScoreReady,
    SessionSaved,
    StageViewReady,
    TokenResolved,
    TreeChanged,
)
from tokenlab.lab.knobs import KNOBS, move_stage, nudge, reset_knob, toggle_stage, with_bias
from tokenlab.lab.step import Candidate, Step
from tokenlab.render import COLOUR_MODES, mode_legend
from tokenlab.sampling import SamplerParams
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

HISTORY_SIZE = 15
ROLLOUT_N, ROLLOUT_LENGTH = 64, 16
HOT_FINE, HOT_COARSE = 0.5, 2.0
KNOB_KEYS = {"t": "temperature", "k": "top_k", "p": "top_p", "m": "min_p", "y": "typical_p"}


_KEY_NAMES = {
    "question_mark": "?", "plus": "+", "equals_sign": "=", "minus": "-", "greater_than_sign": ">",
    "less_than_sign": "<", "left_square_bracket": "[", "right_square_bracket": "]", "left": "←",
    "right": "→", "up": "↑", "down": "↓", "S": "S (shift+s)",
}


def key_label(keys: str) -> str:
    """A binding's keys as the help screen shows them."""
    return " ".join(_KEY_NAMES.get(key, key) for key in keys.split(","))


class LabScreen(Screen[None]):
    """Generation you can pause, inspect, re-sample and branch, with every knob on a key."""

    BINDINGS = [
        Binding("space", "toggle_run", "Pause", tooltip="Pause or resume generation"),
        Binding("n", "step", "Step", tooltip="Sample one token (pauses first)"),
        Binding("r", "regenerate", "Regen", tooltip="Start over from the prompt with the current knobs"),
        Binding("l", "toggle_loop", "Loop", tooltip="Regenerate over and over, keeping the last runs"),
        Binding("e", "edit_prompt", "Prompt", tooltip="Edit the prompt (enter runs it)"),
        Binding("c", "cycle_colours", "Colours", tooltip="Colour tokens by raw p, final p, rank or entropy"),
        Binding("question_mark", "help", "Help", tooltip="Every key"),
        Binding("q", "quit", "Quit", tooltip="Quit tokenlab"),
        Binding("left", "cursor(-1)", "Prev token", show=False, tooltip="Inspect the previous step"),
        Binding("right", "cursor(1)", "Next token", show=False, tooltip="Inspect the next step"),
        Binding("home", "cursor_home", "First token", show=False, tooltip="Inspect the first step"),
        Binding("end", "cursor_end", "Newest", show=False, tooltip="Follow the newest step / the live frontier"),
        Binding("up", "select_knob(-1)", "Knob up", show=False, tooltip="Select the knob above"),
        Binding("down", "select_knob(1)", "Knob down", show=False, tooltip="Select the knob below"),
        Binding("plus,equals_sign", "turn(1)", "Knob +", show=False, tooltip="Raise the selected knob (fine)"),
        Binding("minus", "turn(-1)", "Knob -", show=False, tooltip="Lower the selected knob (fine)"),
        Binding("greater_than_sign", "turn(1, True)", "Knob ++", show=False, tooltip="Raise the selected knob (coarse)"),
        Binding("less_than_sign", "turn(-1, True)", "Knob --", show=False, tooltip="Lower the selected knob (coarse)"),
        Binding("0", "reset_knob", "Reset knob", show=False, tooltip="Put the selected knob back to its default"),
        Binding("o", "toggle_stage", "Stage on/off", show=False, tooltip="Switch the selected knob's stage on or off"),
        Binding("t", "knob('temperature')", "Temperature", show=False, tooltip="Select the temperature knob"),
        Binding("k", "knob('top_k')", "Top-k", show=False, tooltip="Select the top-k knob"),
        Binding("p", "knob('top_p')", "Top-p", show=False, tooltip="Select the top-p knob"),
        Binding("m", "knob('min_p')", "Min-p", show=False, tooltip="Select the min-p knob"),
        Binding("y", "knob('typical_p')", "Typical-p", show=False, tooltip="Select the typical-p knob"),
        Binding("left_curly_bracket", "move_stage(-1)", "Stage earlier", show=False, tooltip="Move the selected knob's stage earlier in the order"),
        Binding("right_curly_bracket", "move_stage(1)", "Stage later", show=False, tooltip="Move the selected knob's stage later in the order"),
        Binding("s", "save_session", "Save", show=False, tooltip="Save the session (.json: prompt, knobs, the tree with every step) or export it (.md, .html, .svg screenshot)"),
        Binding("R", "rollouts", "Rollouts", show=False, tooltip="Sample 64 continuations of 16 tokens from the inspected step in one batch (again: cancel)"),
        Binding("i", "stage_view", "Stages", tooltip="The distribution after every stage at the inspected step"),
        Binding("P", "presets", "Presets", show=False, tooltip="Load a preset of all knobs, or save the current ones"),
        Binding("h", "hot_token", "Hot token", show=False, tooltip="Pick a token to boost or suppress with +/-"),
        Binding("S", "set_seed", "Seed", show=False, tooltip="Set the random seed (restarts the run)"),
        Binding("left_square_bracket", "candidate(-1)", "Cand. up", show=False, tooltip="Select the candidate above"),
        Binding("right_square_bracket", "candidate(1)", "Cand. down", show=False, tooltip="Select the candidate below"),
        Binding("enter", "choose", "Choose", show=False, tooltip="Force the selected candidate at this step and go on from there"),
        Binding("x", "expand", "5/20", show=False, tooltip="Show 5 or 20 candidates"),
        Binding("v", "history", "History", show=False, tooltip="The last runs; pick one to view it"),
        Binding("g", "score", "Score text", show=False, tooltip="Score a text you paste (GLTR): how likely the model finds each token"),
        Binding("b", "tree", "Tree", tooltip="The tree of branches from this prompt; enter switches to one"),
        Binding("escape", "back_to_live", "Live", show=False, tooltip="Back from a history run to the live one"),
    ]

    def __init__(self, controller: LabController) -> None:
        super().__init__()
        self.controller = controller
        settings = controller.settings
        self.params: SamplerParams = settings.params
        self.prompt = settings.prompt
        self.chat: bool | None = settings.chat
        self.seed = settings.seed
        self.max_tokens = settings.max_tokens
        self.model_name = "loading model…"
        self.model_ready = False
        self.run_id = 0
        self.steps: list[Step] = []
        self.frontier: FrontierView | None = None
        self.cursor: int | None = None
        """Inspected step; None follows the newest step (or the live frontier when paused)."""
        self.selected_knob = 0
        self.selected_candidate = 0
        self.candidate_limit = 5
        self.running = False
        self.loop = False
        self.stop_reason: str | None = None
        self.tokens_per_second = 0.0
        self.slow: str | None = None  # the controller's hint while the decoding speed has collapsed
        self.hot: tuple[int, str] | None = None
        self.history: deque[RunRecord] = deque(maxlen=HISTORY_SIZE)
        self.viewing: RunRecord | None = None
        self.branch_tree: TreeChanged | None = None
        self.save_path = controller.settings.save_path or "tokenlab-session.json"
        self.rollout_progress: tuple[int, int] | None = None
        """(steps done, total) while rollouts run."""
        self._legend_mode = ""

    # -- layout ------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield PromptBar(id="prompt-bar")
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield TokenView(id="tokens")
                yield Static(id="legend")
                yield DistributionStrip(id="strip")
            with Vertical(id="right"):
                yield KnobPanel(id="knobs")
                yield CandidatesTable(id="candidates")
        yield StatusLine(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.controller.emit = self._emit
        self.run_controller()
        self.refresh_view()

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
            self.notify(f"generation stopped: {event.worker.error}", severity="error", timeout=8)
            self.refresh_view()

    # -- events from the controller ------------------------------------------------------------------

    @on(LabEventMessage)
    def lab_event(self, message: LabEventMessage) -> None:
        event = message.event
        if isinstance(event, StepsAdded):
            if event.run_id != self.run_id:
                return
            del self.steps[event.start:]
            self.steps.extend(event.steps)
            self.tokens_per_second = event.tokens_per_second
            self.slow = event.slow
            if self.frontier is not None and self.frontier.index != len(self.steps):
                self.frontier = None
        elif isinstance(event, FrontierView):
            if event.run_id != self.run_id:
                return
            self.frontier = event
        elif isinstance(event, RunStarted):
            self.run_id = event.run_id
            self.seed = event.seed
            self.params = event.params
            self.prompt = event.prompt
            self.steps = []
            self.frontier = None
            self.cursor = None
            self.stop_reason = None
            self.tokens_per_second = 0.0
            self.slow = None
            self.chat = event.chat
        elif isinstance(event, RunStopped):
            if event.run_id == self.run_id:
                self.stop_reason = event.reason
                if not event.replayed:
                    self.tokens_per_second = event.tokens_per_second
                    self.history.append(RunRecord(event.run_id, self.seed, self.params, tuple(self.steps),
                                                  event.reason))
        elif isinstance(event, ScoreReady):
            from tokenlab.tui.screens.score import ScoreScreen

            self.app.push_screen(ScoreScreen(event.steps, event.summary))
        elif isinstance(event, SessionSaved):
            self.save_path = event.path
            self.notify(f"session saved to {event.path} (open it with tokenlab lab --load)")
        elif isinstance(event, RolloutProgress):
            self.rollout_progress = (event.done, event.total)
        elif isinstance(event, RolloutsReady):
            self.rollout_progress = None
            self.app.push_screen(RolloutScreen(event.index, event.result))
        elif isinstance(event, StageViewReady):
            self.app.push_screen(StageScreen(event.index, event.view))
        elif isinstance(event, TreeChanged):
            self.branch_tree = event
        elif isinstance(event, StateChanged):
            self.running = event.running
            self.loop = event.loop
            if self.running:
                self.stop_reason = None if self.stop_reason not in ("eos", "context_full", "max_tokens") else self.stop_reason
        elif isinstance(event, EngineReady):
            self.model_name = event.model_name
            self.model_ready = True
        elif isinstance(event, TokenResolved):
            self.hot = (event.token_id, event.text)
            self.selected_knob = len(KNOBS)
            self.controller.send("set_hot_tokens", (event.token_id,))
        elif isinstance(event, LabFailed):
            self.rollout_progress = None
            if not self.model_ready and self.model_name == "loading model…":
                self.model_name = "no model"
            self.notify(event.message, severity="error", timeout=8)
        self.refresh_view()

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

    def refresh_view(self) -> None:
        """Render every panel from the screen's state."""
        if not self.is_mounted:
            return
        steps = self.shown_steps()
        cursor = self.effective_cursor()
        token_view = self.query_one(TokenView)
        following = self.cursor is None and (self.running or self.viewing is not None)
        token_view.show(steps, None if following else cursor,
                        frontier=self.frontier is not None and self.viewing is None)
        if self._legend_mode != token_view.colour_mode:
            self._legend_mode = token_view.colour_mode
            self.query_one("#legend", Static).update(mode_legend(token_view.colour_mode), layout=False)
        candidates, chosen, title = self.inspected()
        table = self.query_one(CandidatesTable)
        rows = table.rows_for(candidates, chosen, self.candidate_limit, self.hot[0] if self.hot else None)
        self.selected_candidate = min(self.selected_candidate, max(0, len(rows) - 1))
        table.show(candidates, chosen=chosen, selected=self.selected_candidate, limit=self.candidate_limit,
                   title=title, hot=self.hot[0] if self.hot else None)
        strip = self.query_one(DistributionStrip)
        width = strip.size.width or 40
        if cursor is not None and cursor >= len(steps) and self.frontier is not None:
            strip.show_frontier(self.frontier, width)
        elif cursor is not None and cursor < len(steps):
            strip.show_step(steps[cursor], width)
        hot_bias = self.params.logit_bias.get(self.hot[0], 0.0) if self.hot else 0.0
        live = self.frontier.live if self.frontier is not None and self.viewing is None else ()
        self.query_one(KnobPanel).show(self.params, self.selected_knob, hot_text=self.hot[1] if self.hot else None,
                                       hot_bias=hot_bias, live=live)
        self.query_one(PromptBar).show(self.prompt, self.model_name, self.chat)
        state = "running" if self.running else ("stopped" if self.stop_reason else "paused")
        if self.rollout_progress is not None:
            done, total = self.rollout_progress
            state = f"rollouts {100 * done // max(1, total)}% (R cancels)"
        if not self.model_ready:
            state = "loading" if self.model_name == "loading model…" else "no model"
        self.query_one(StatusLine).show(
            state=state, model=self.model_name, tokens=len(steps), max_tokens=self.max_tokens,
            tokens_per_second=self.tokens_per_second, stop_reason=self.stop_reason, seed=self.seed,
            loop=self.loop, viewing=f"run #{self.viewing.run_id}" if self.viewing else None,
            branches=self.branch_tree.branches if self.branch_tree is not None else 0,
            slow=self.slow if self.running else None,
        )
        if self.cursor is None:
            token_view.follow()

    # -- actions: running ------------------------------------------------------------------------------

    def action_toggle_run(self) -> None:
        if self.viewing is not None:
            self.action_back_to_live()
            return
        self.cursor = None
        self.controller.send("toggle")

    def action_step(self) -> None:
        self.viewing = None
        self.cursor = None
        self.controller.send("step")

    def action_regenerate(self) -> None:
        self.viewing = None
        self.controller.send("regenerate")

    def action_toggle_loop(self) -> None:
        self.controller.send("set_loop", not self.loop)

    # -- actions: inspecting ---------------------------------------------------------------------------

    def action_cursor(self, delta: int) -> None:
        current = self.effective_cursor()
        steps = self.shown_steps()
        if current is None:
            return
        limit = len(steps) if (self.frontier is not None and self.viewing is None and not self.running) else len(steps) - 1
        self.cursor = max(0, min(limit, current + delta))
        self.selected_candidate = 0
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
        self.refresh_view()

    def action_expand(self) -> None:
        self.candidate_limit = 20 if self.candidate_limit == 5 else 5
        self.refresh_view()

    def action_cycle_colours(self) -> None:
        view = self.query_one(TokenView)
        view.colour_mode = COLOUR_MODES[(COLOUR_MODES.index(view.colour_mode) + 1) % len(COLOUR_MODES)]
        self.notify(f"colours: {view.colour_mode}", timeout=1.5)
        self.refresh_view()

    def action_choose(self) -> None:
        if self.viewing is not None:
            self.notify("choosing works on the live run; escape goes back to it", severity="warning")
            return
        candidates, chosen, _ = self.inspected()
        cursor = self.effective_cursor()
        if not candidates or cursor is None:
            return
        rows = self.query_one(CandidatesTable).rows_for(candidates, chosen, self.candidate_limit,
                                                        self.hot[0] if self.hot else None)
        candidate = rows[min(self.selected_candidate, len(rows) - 1)]
        del self.steps[cursor:]
        self.frontier = None
        self.cursor = None
        self.stop_reason = None
        self.controller.send("choose", cursor, candidate.id)
        self.controller.send("play")
        self.refresh_view()

    def action_history(self) -> None:
        if not self.history:
            self.notify("no finished runs yet: let a run finish, or turn on loop mode (l)")
            return
        records = list(self.history)

        def view(index: int | None) -> None:
            if index is None:
                return
            self.controller.send("pause")
            self.viewing = records[index]
            self.cursor = None
            self.refresh_view()

        self.app.push_screen(HistoryScreen(records), view)

    def action_tree(self) -> None:
        if self.branch_tree is None or not self.branch_tree.segments:
            self.notify("the tree is empty: finish a run, regenerate (r) or choose a candidate (enter)")
            return

        def switch(path: tuple[int, ...] | None) -> None:
            if path is not None:
                self.viewing = None
                self.cursor = None
                self.stop_reason = None
                self.controller.send("switch_branch", path)

        self.app.push_screen(TreeScreen(self.branch_tree.segments, self.branch_tree.runs, self.branch_tree.current), switch)

    def action_score(self) -> None:
        def edited(result: tuple[str, bool | None] | None) -> None:
            if result is None:
                return
            text = result[0]
            if not text.strip():
                self.notify("the text is empty: nothing to score", severity="error")
                return
            candidate = Path(text.strip()).expanduser()
            if "\n" not in text.strip() and len(text.strip()) < 1024 and candidate.is_file():
                try:
                    text = candidate.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    self.notify(f"cannot read {candidate}: {exc}", severity="error")
                    return
            self.notify("scoring…", timeout=2)
            self.controller.send("score", text)

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
                self.notify(str(exc), severity="warning")
                return
        self.params = params
        self.controller.send("set_params", params)
        self.refresh_view()

    def action_select_knob(self, delta: int) -> None:
        self.selected_knob = (self.selected_knob + delta) % (len(KNOBS) + 1)
        self.refresh_view()

    def action_knob(self, name: str) -> None:
        self.selected_knob = next(i for i, knob in enumerate(KNOBS) if knob.name == name)
        self.refresh_view()

    def action_turn(self, steps: int, coarse: bool = False) -> None:
        if self.selected_knob == len(KNOBS):
            if self.hot is None:
                self.notify("no hot token yet: press h and type one", severity="warning")
                return
            bias = self.params.logit_bias.get(self.hot[0], 0.0) + steps * (HOT_COARSE if coarse else HOT_FINE)
            self._set_params(with_bias(self.params, self.hot[0], round(bias, 3)))
            return
        self._set_params(lambda: nudge(self.params, KNOBS[self.selected_knob].name, steps, coarse=coarse))

    def action_reset_knob(self) -> None:
        if self.selected_knob == len(KNOBS):
            if self.hot is not None:
                self._set_params(with_bias(self.params, self.hot[0], 0.0))
            return
        self._set_params(lambda: reset_knob(self.params, KNOBS[self.selected_knob].name))

    def action_toggle_stage(self) -> None:
        if self.selected_knob == len(KNOBS):
            return
        self._set_params(lambda: toggle_stage(self.params, KNOBS[self.selected_knob].stage))

    def action_move_stage(self, delta: int) -> None:
        if self.selected_knob == len(KNOBS):
            return
        stage = KNOBS[self.selected_knob].stage
        if stage not in self.params.samplers:
            self.notify(f"{stage} is switched off (o switches it on)", severity="warning")
            return
        self._set_params(move_stage(self.params, stage, delta))
        order = " › ".join(self.params.samplers)
        self.notify(f"order: {order}", timeout=4)

    def action_save_session(self) -> None:
        def picked(path: str | None) -> None:
            if not path or not path.strip():
                return
            path = path.strip()
            if path.endswith(".svg"):
                target = Path(path).expanduser()
                try:
                    written = self.app.save_screenshot(filename=target.name, path=str(target.parent or "."))
                except OSError as exc:
                    self.notify(f"could not save the screenshot: {exc}", severity="error")
                    return
                self.notify(f"screenshot saved to {written}")
                return
            self.controller.send("save", path)

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
        self.controller.send("rollouts", cursor, ROLLOUT_N, ROLLOUT_LENGTH)
        self.refresh_view()

    def action_stage_view(self) -> None:
        cursor = self.effective_cursor()
        if cursor is None or self.viewing is not None:
            self.notify("pause on a step of the live run to see its stages", severity="warning")
            return
        self.controller.send("stage_view", cursor)

    def action_presets(self) -> None:
        from tokenlab.presets import PresetError, list_presets, load_preset, save_preset

        def chosen(result: tuple[str, str] | None) -> None:
            if result is None:
                return
            action, name = result
            try:
                if action == "save":
                    path = save_preset(name, self.params)
                    self.notify(f"saved preset {name!r} to {path}")
                else:
                    self._set_params(load_preset(name))
                    self.notify(f"loaded preset {name!r}")
            except (PresetError, ValueError, OSError) as exc:
                self.notify(str(exc), severity="error", timeout=8)

        try:
            presets = list_presets()
        except PresetError as exc:
            self.notify(str(exc), severity="error", timeout=8)
            return
        self.app.push_screen(PresetScreen(presets), chosen)

    def action_hot_token(self) -> None:
        def picked(text: str | None) -> None:
            if text:
                self.controller.send("resolve_token", text)

        self.app.push_screen(LineInput("Hot token: its exact text (e.g. ' Paris', with the space) or #ID",
                                       placeholder=" Paris"), picked)

    def action_set_seed(self) -> None:
        def picked(text: str | None) -> None:
            if text is None:
                return
            if not text.strip().isdigit():
                self.notify(f"the seed must be a non-negative whole number, got {text!r}", severity="error")
                return
            self.controller.send("set_seed", int(text.strip()))

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
            self.controller.send("set_prompt", prompt, chat)
            self.refresh_view()

        self.app.push_screen(PromptEditor(self.prompt, self.chat), edited)

    def action_help(self) -> None:
        keys = [(key_label(binding.key), binding.tooltip or binding.description)
                for binding in self.BINDINGS if isinstance(binding, Binding)]
        self.app.push_screen(HelpScreen(keys))

    async def action_quit(self) -> None:
        self.controller.quit()
        self.app.exit()
