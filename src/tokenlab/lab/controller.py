"""The lab controller: one thread owns the engine and the generation; everyone else sends it commands.

The engine is not thread-safe, so a single thread runs `LabController.serve()`: it loads the model, steps
the generation while running, and applies commands (`tokenlab.lab.commands`: pause, step, knob changes,
choices) between steps, each through the handler its type maps to. What happens is reported through
`emit(event)` with the frozen events below; a UI turns them into messages. No UI code here: tests drive
the same controller directly.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tokenlab.engine import Engine, EngineError
from tokenlab.engine.chat import ChatTemplateError
from tokenlab.lab.commands import (
    Choose,
    CompareRuns,
    CompareStep,
    LabCommand,
    NameTokens,
    Pause,
    Play,
    Regenerate,
    ResolveToken,
    Rollouts,
    RunTo,
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
from tokenlab.lab.generation import Generation
from tokenlab.lab.speed import SpeedWatch
from tokenlab.lab.step import NEGATIVE_TOP_N, Candidate, Frontier, Step
from tokenlab.lab.tree import GenerationTree, Segment, segments
from tokenlab.sampling import PipelineResult, SamplerParams

TREE_CHILDREN = 8
"""Children shown per fork in the tree view (the most run ones), so 64 rollouts stay readable."""
CURVE_POINTS = 64
"""Points of the sorted-probability curve sent for the frontier step (log-spaced ranks)."""


# -- events (controller -> UI) --------------------------------------------------------------------


@dataclass(frozen=True)
class LabEvent:
    """Something the controller reports."""


@dataclass(frozen=True)
class EngineReady(LabEvent):
    """The model is loaded."""

    model_name: str
    n_vocab: int
    n_ctx: int
    has_chat_template: bool


@dataclass(frozen=True)
class RunStarted(LabEvent):
    """A new run from the prompt began (regenerate, new prompt, or the next loop run)."""

    run_id: int
    seed: int
    params: SamplerParams
    prompt: str
    chat: bool
    prompt_tokens: int


@dataclass(frozen=True)
class StepsAdded(LabEvent):
    """Steps from index `start` on are these (anything the UI held from `start` on is replaced)."""

    run_id: int
    start: int
    steps: tuple[Step, ...]
    tokens_per_second: float
    slow: str | None = None
    """Set while the decoding speed has collapsed: the likely cause and what to do (see SpeedWatch)."""


@dataclass(frozen=True)
class RunStopped(LabEvent):
    """The run stopped by itself: eos, max_tokens or context_full."""

    run_id: int
    reason: str
    tokens: int
    tokens_per_second: float
    replayed: bool = False
    """True when a branch switched to from the tree had stopped (not a run that just finished)."""


@dataclass(frozen=True)
class StateChanged(LabEvent):
    """Running or paused, loop mode on or off."""

    running: bool
    loop: bool


@dataclass(frozen=True)
class FrontierView(LabEvent):
    """The distribution of the next step (re-sampled live when knobs turn while paused)."""

    run_id: int
    index: int
    params: SamplerParams
    candidates: tuple[Candidate, ...]
    raw_curve: np.ndarray = field(compare=False)
    """Raw probabilities at CURVE_POINTS log-spaced ranks (1 .. n_vocab), most likely first."""
    final_curve: np.ndarray = field(compare=False)
    """Final probabilities at the same ranks of the final distribution (0 past the survivors)."""
    entropy: float
    final_entropy: float
    survivors: int
    stages: tuple[tuple[str, int], ...]
    """(stage name, tokens kept) for every stage that ran."""
    live: tuple[tuple[str, float], ...] = ()
    """Values the knobs do not show by themselves: the scheduled/dynamic temperature, mirostat's mu,
    adaptive-p's adapted target and moving average."""
    negative: tuple[tuple[int, str, float], ...] = ()
    """With guidance: the negative context's most likely next tokens, (id, text, raw probability)."""


@dataclass(frozen=True)
class TokenResolved(LabEvent):
    """A token typed as text (or #id) is this id."""

    token_id: int
    text: str


@dataclass(frozen=True)
class TokensNamed(LabEvent):
    """The texts of some token ids (e.g. the ones a logit bias names)."""

    names: tuple[tuple[int, str], ...]


@dataclass(frozen=True)
class RunsLoaded(LabEvent):
    """The finished runs of a loaded session's tree (the run history starts with them)."""

    runs: tuple[tuple[tuple[Step, ...], str | None], ...]
    """(steps, stop reason) of each run, in the tree's order."""


@dataclass(frozen=True)
class TreeChanged(LabEvent):
    """The generation tree of the current prompt changed (a run ended, a branch was made)."""

    segments: tuple[Segment, ...]
    runs: int
    branches: int
    current: tuple[int, ...]
    """Token ids of the branch on screen."""


@dataclass(frozen=True)
class ScoreReady(LabEvent):
    """A scored text (GLTR view), as step records so the token view and candidates table can show it."""

    steps: tuple[Step, ...]
    summary: dict[str, Any] = field(compare=False)
    watermark: tuple[tuple[bool | None, bool], ...] | None = None
    """Per token (green, counted) of the watermark test, when the lab's watermark key is set."""


@dataclass(frozen=True)
class LabNotice(LabEvent):
    """Something the user should know that is not a failure; `message` is one line."""

    message: str


@dataclass(frozen=True)
class LabFailed(LabEvent):
    """A command failed; `message` is one line for the user. The lab keeps running."""

    message: str


# -- the controller ---------------------------------------------------------------------------------


@dataclass
class LabSettings:
    """What a lab starts with."""

    prompt: str = "Write a short story about a lighthouse keeper."
    chat: bool | None = None
    params: SamplerParams = field(default_factory=SamplerParams)
    seed: int = 0
    max_tokens: int = 256
    top_n: int = 20
    autostart: bool = True
    session: Any = None
    """A loaded tokenlab.lab.session.Session to show instead of starting a run."""
    save_path: str | None = None
    """Where `s` in the lab saves the session by default."""
    files_dir: str | None = None
    """When set (a served lab), files are read and written only inside this directory, by relative paths."""
    prepare: Callable[[Engine], SamplerParams] | None = None
    """Called once the model is loaded to finish the params (token names need the vocabulary); a
    ValueError it raises is reported and the lab goes on with `params`."""


def log_ranks(n_vocab: int, points: int = CURVE_POINTS) -> np.ndarray:
    """0-based ranks spaced evenly on a log axis from the top token to the last one."""
    return np.unique(np.round(np.geomspace(1, n_vocab, points)).astype(np.int64) - 1)


def live_values(result: PipelineResult) -> list[tuple[str, float]]:
    """(knob name, value now) for knobs whose effect changes from step to step."""
    values = []
    for report in result.stages:
        params = report.params
        if report.name == "temperature" and "effective_temperature" in params:
            values.append(("temperature", float(params["effective_temperature"])))  # type: ignore[arg-type]
        if report.name.startswith("mirostat") and "mu" in params:
            values.append(("mirostat_tau", float(params["mu"])))  # type: ignore[arg-type]
        if report.name == "adaptive_p" and "adapted_target" in params:
            # the target this step aims at, and (beside the decay) the moving average it adapts to
            values.append(("adaptive_target", float(params["adapted_target"])))  # type: ignore[arg-type]
            values.append(("adaptive_decay", float(params["average"])))  # type: ignore[arg-type]
    return values


@dataclass(frozen=True)
class StageViewReady(LabEvent):
    """The stage-by-stage view of one step (recomputed on request)."""

    index: int
    view: Any = field(compare=False)


@dataclass(frozen=True)
class StepCompared(LabEvent):
    """Two knob sets on one step (see lab/compare.py)."""

    index: int
    label: str
    params_b: SamplerParams = field(compare=False)
    comparison: Any = field(compare=False)


@dataclass(frozen=True)
class RunsCompared(LabEvent):
    """Two generations from one step with two knob sets and the same seed."""

    index: int
    label: str
    params_b: SamplerParams = field(compare=False)
    comparison: Any = field(compare=False)


@dataclass(frozen=True)
class RolloutProgress(LabEvent):
    """Rollouts under way: steps done of the total."""

    done: int
    total: int


@dataclass(frozen=True)
class RolloutsReady(LabEvent):
    """Rollouts from step `index` finished (or were cancelled); they are in the tree as branches."""

    index: int
    result: Any = field(compare=False)


@dataclass(frozen=True)
class SessionSaved(LabEvent):
    """The session was written to `path`."""

    path: str


LOOP_FULL_RUNS = 50
"""Runs of one prompt whose steps the tree keeps in full in loop mode; later ones keep the chosen tokens."""


class LabController:
    """Owns the engine and the current Generation; applies commands between steps."""

    def __init__(
        self,
        engine: Engine | Callable[[], Engine],
        settings: LabSettings | None = None,
        emit: Callable[[LabEvent], None] | None = None,
        *,
        batch_interval: float = 0.25,
    ) -> None:
        self._engine_source = engine
        self.engine: Engine | None = engine if isinstance(engine, Engine) or hasattr(engine, "evaluate") else None  # type: ignore[assignment]
        self.settings = settings or LabSettings()
        self.emit = emit or (lambda event: None)
        self.batch_interval = batch_interval
        """Seconds between two batches of new steps: the screen repaints at this rate, never per token
        (a repaint costs a few milliseconds of the thread that also decodes, under the same GIL)."""
        self.generation: Generation | None = None
        self.run_id = 0
        self.running = False
        self.loop = False
        self.hot_tokens: tuple[int, ...] = ()
        self.tree = GenerationTree(self.settings.prompt)
        self._commands: queue.Queue[LabCommand | None] = queue.Queue()
        """Commands for the controller thread; None only wakes it (quit)."""
        self._handlers: dict[type[LabCommand], Callable[[Any], None]] = {
            Play: self._cmd_play,
            Pause: self._cmd_pause,
            Toggle: self._cmd_toggle,
            StepOnce: self._cmd_step,
            Regenerate: self._cmd_regenerate,
            SetParams: self._cmd_set_params,
            Choose: self._cmd_choose,
            SetPrompt: self._cmd_set_prompt,
            SetLoop: self._cmd_set_loop,
            SetSeed: self._cmd_set_seed,
            ResolveToken: self._cmd_resolve_token,
            NameTokens: self._cmd_name_tokens,
            SetHotTokens: self._cmd_set_hot_tokens,
            SwitchBranch: self._cmd_switch_branch,
            Score: self._cmd_score,
            ShowStages: self._cmd_stage_view,
            CompareStep: self._cmd_compare_step,
            CompareRuns: self._cmd_compare_runs,
            RunTo: self._cmd_run_to,
            Rollouts: self._cmd_rollouts,
            Save: self._cmd_save,
        }
        """The handler of each command type (the controller's whole front door)."""
        self._pending: list[Step] = []
        self._pending_start = 0
        self._last_emit = 0.0
        self._speed: SpeedWatch | None = None
        self._speed_mark: tuple[int, int, float] = (0, 0, 0.0)
        """(id of the generation, its step count, its stepping seconds) at the last batch."""
        self._quit = False
        self._counted = False
        """Whether the current run is already counted in the tree."""
        self.cancel_rollouts = threading.Event()
        """Set from any thread to stop rollouts under way (checked before every batch step)."""
        self.stopped = threading.Event()
        """Set when serve() has returned (the engine is free again)."""

    # -- commands (any thread) --------------------------------------------------------------------

    def send(self, command: LabCommand) -> None:
        """Queue a command for the controller thread; TypeError at once for anything it has no handler for."""
        if type(command) not in self._handlers:
            raise TypeError(f"the lab controller has no handler for {command!r} "
                            "(send one of the commands in tokenlab.lab.commands)")
        self._commands.put(command)

    def quit(self) -> None:
        """Ask serve() to return (it checks between steps, so within one token's time)."""
        self._quit = True
        self._commands.put(None)

    # -- the controller thread -------------------------------------------------------------------

    def serve(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Load the engine, then step and apply commands until quit() or should_stop()."""
        self.stopped.clear()
        try:
            self._serve(should_stop)
        finally:
            self.stopped.set()

    def _serve(self, should_stop: Callable[[], bool]) -> None:
        if self.engine is None:
            try:
                self.engine = self._engine_source()  # type: ignore[operator]
            except (EngineError, ValueError, OSError) as exc:
                self.emit(LabFailed(str(exc)))
            except Exception as exc:  # noqa: BLE001 - a model that fails to load must not kill the lab
                self.emit(LabFailed(f"the model failed to load: {exc}"))
        if self.engine is not None:
            self.emit(EngineReady(self.engine.name, self.engine.n_vocab, self.engine.n_ctx,
                                  self.engine.has_chat_template))
            if self.settings.prepare is not None:
                try:
                    self.settings.params = self.settings.prepare(self.engine)
                except ValueError as exc:
                    self.emit(LabFailed(str(exc)))
            self._guarded(self._start)
        while not self._quit and not should_stop():
            try:
                command = self._commands.get_nowait() if self.running else self._commands.get(timeout=0.05)
            except queue.Empty:
                if self.running:
                    self._advance()
                continue
            if command is not None:
                self._apply(command)

    def _apply(self, command: LabCommand) -> None:
        handler = self._handlers[type(command)]  # send() let in only commands with a handler
        if self.engine is None:
            self.emit(LabFailed("no model is loaded; restart tokenlab with a working --model"))
            return
        self._guarded(lambda: handler(command))

    def _guarded(self, action: Callable[[], None]) -> None:
        """Run a command's work; a failure the user can act on is reported and pauses the lab."""
        try:
            action()
        except (EngineError, ValueError, IndexError) as exc:
            self._flush()
            self.running = False
            self.emit(StateChanged(self.running, self.loop))
            self.emit(LabFailed(str(exc)))

    def _advance(self) -> None:
        generation = self.generation
        assert generation is not None
        try:
            step = generation.step()
        except EngineError as exc:
            self.running = False
            self._flush()
            self.emit(StateChanged(self.running, self.loop))
            self.emit(LabFailed(str(exc)))
            return
        if step is not None:
            self._queue(step)
        self._tell_notice(generation)
        now = time.perf_counter()
        if generation.done or now - self._last_emit >= self.batch_interval:
            self._flush()
        if generation.done:
            self.emit(RunStopped(self.run_id, generation.stop_reason or "", len(generation.steps),
                                 generation.tokens_per_second))
            self._record_branch(count=True)
            if self.loop:
                self._new_run(generation.seed + 1, start=True)
            else:
                self.running = False
                self.emit(StateChanged(self.running, self.loop))
                self._emit_frontier()

    def _queue(self, step: Step) -> None:
        """Add a new step to the next batch; a phrase-ban rewind restarts the batch where it went back to."""
        if self._pending and step.index < self._pending_start + len(self._pending):
            del self._pending[max(0, step.index - self._pending_start):]
        if not self._pending:
            self._pending_start = step.index  # StepsAdded replaces what the screen holds from here on
        self._pending.append(step)

    def _tell_notice(self, generation: Generation) -> None:
        """Pass on a message the generation left (a banned phrase let through)."""
        if generation.notice:
            self.emit(LabNotice(generation.notice))
            generation.notice = None

    def _flush(self) -> None:
        if self._pending and self.generation is not None:
            self.emit(StepsAdded(self.run_id, self._pending_start, tuple(self._pending),
                                 self.generation.tokens_per_second, self._watch_speed(self.generation)))
            self._pending = []
        self._last_emit = time.perf_counter()

    def _watch_speed(self, generation: Generation) -> str | None:
        """Feed this batch's stepping speed to the SpeedWatch; its hint when the speed collapsed."""
        if self._speed is None:
            self._speed = SpeedWatch(getattr(self.engine, "n_threads", 1))
        mark = (id(generation), len(generation.steps), generation.elapsed)
        previous, self._speed_mark = self._speed_mark, mark
        if previous[0] != mark[0] or mark[1] < previous[1] or mark[2] < previous[2]:
            return self._speed.hint  # a new run or a rewind: no batch to compare
        return self._speed.update(mark[1] - previous[1], mark[2] - previous[2])

    def _record_branch(self, *, count: bool) -> None:
        """Put the current run's text into the tree (once counted, a run is not counted again)."""
        generation = self.generation
        if generation is None or not generation.steps:
            return
        if count and not self._counted:
            steps = generation.steps
            if self.loop and self.tree.runs >= LOOP_FULL_RUNS:
                # loop mode runs unattended: past the cap, new branches keep only their chosen tokens
                if self.tree.runs == LOOP_FULL_RUNS:
                    self.emit(LabNotice(
                        f"loop mode keeps every candidate of the first {LOOP_FULL_RUNS} runs; "
                        "later runs keep only their chosen tokens (memory stays bounded)"
                    ))
                steps = [step.slim() for step in steps]
            self.tree.add(steps, stop_reason=generation.stop_reason or "interrupted")
            self._counted = True
        else:
            self.tree.add(generation.steps, count=False)
        self._emit_tree()

    def _emit_tree(self) -> None:
        generation = self.generation
        current = tuple(step.id for step in generation.steps) if generation is not None else ()
        self.emit(TreeChanged(tuple(segments(self.tree, max_children=TREE_CHILDREN)), self.tree.runs,
                              len(self.tree.branches()), current))

    def _new_run(self, seed: int, *, start: bool) -> None:
        assert self.engine is not None
        self._flush()
        if self.generation is not None and not self._counted:
            self._record_branch(count=True)  # a regenerated run keeps its text as a branch
        settings = self.settings
        if self.tree.prompt != settings.prompt:
            self.tree = GenerationTree(settings.prompt)
            self._emit_tree()
        if not settings.prompt.strip():
            self.running = False
            self.emit(StateChanged(self.running, self.loop))
            self.emit(LabFailed("the prompt is empty; press e to write one"))
            return
        chat = self.engine.has_chat_template if settings.chat is None else settings.chat
        try:
            tokens = self.engine.format_prompt(settings.prompt, chat=chat)
        except ChatTemplateError as exc:
            raise ChatTemplateError(f"{exc} (here: press e, then ctrl+t)") from None
        if self.generation is not None:
            self.generation.close()  # its guidance context, if any; the new run opens its own when needed
        self.generation = Generation(self.engine, tokens, settings.params, seed=seed,
                                     max_tokens=settings.max_tokens, top_n=settings.top_n, chat=chat)
        self._counted = False
        self.settings.seed = seed
        self.run_id += 1
        self.running = start
        self.emit(RunStarted(self.run_id, seed, settings.params, settings.prompt, chat, len(tokens)))
        self.emit(StateChanged(self.running, self.loop))
        if not start:
            self._emit_frontier()

    def _emit_frontier(self) -> None:
        generation = self.generation
        if generation is None or generation.stop_reason == "eos" or generation.stop_reason == "context_full":
            return
        frontier = generation.frontier()
        self.emit(self.frontier_view(frontier, len(generation.steps)))

    def frontier_view(self, frontier: Frontier, index: int) -> FrontierView:
        """The FrontierView of a frontier: candidates (with hot tokens), curves, entropies, stage counts."""
        assert self.engine is not None
        result = frontier.result
        ranks = log_ranks(frontier.logits.shape[0])
        raw_curve = frontier.raw_curve(ranks)
        final_sorted = result.sorted_final_probs()
        final_curve = np.where(ranks < final_sorted.shape[0], final_sorted[np.minimum(ranks, final_sorted.shape[0] - 1)], 0.0)
        return FrontierView(
            run_id=self.run_id,
            index=index,
            params=frontier.params,
            candidates=frontier.candidates(self.engine.token_text, self.settings.top_n, extra=self.hot_tokens),
            raw_curve=raw_curve,
            final_curve=final_curve,
            entropy=frontier.raw.entropy_bits,
            final_entropy=max(0.0, result.final_entropy_bits),
            survivors=result.n_final,
            stages=tuple((stage.name, int(stage.n_kept)) for stage in result.stages),
            live=tuple(live_values(result)),
            negative=tuple((token, self.engine.token_text(token), prob)
                           for token, prob in frontier.negative_top(NEGATIVE_TOP_N)),
        )

    # -- command handlers (controller thread) -----------------------------------------------------

    def _start(self) -> None:
        session = self.settings.session
        if session is None:
            self._new_run(self.settings.seed, start=self.settings.autostart)
            return
        # a loaded session: its tree and branch come from the file, nothing is generated
        self._new_run(session.seed, start=False)
        self.tree = session.tree
        generation = self.generation
        if generation is not None:
            node = self.tree.find(session.current)
            steps = session.current_steps()
            generation.load(steps, stop_reason=node.stop_reason if node is not None and node.ends else None)
            self._counted = True
            self.emit(StepsAdded(self.run_id, 0, tuple(steps), 0.0))
            if generation.stop_reason:
                self.emit(RunStopped(self.run_id, generation.stop_reason, len(steps), 0.0, replayed=True))
        self.emit(RunsLoaded(tuple((tuple(node.path()), node.stop_reason) for node in self.tree.finished())))
        self._emit_tree()
        self._emit_frontier()

    def session(self) -> Any:
        """The lab as a Session (call on the controller thread, or once serve() has returned)."""
        from tokenlab.lab.session import Session

        generation = self.generation
        if generation is not None and generation.steps and not self._counted:
            self.tree.add(generation.steps, count=False)  # the text on screen is in the saved tree
        return Session(
            prompt=self.settings.prompt, params=self.settings.params, chat=self.settings.chat,
            model=self.engine.name if self.engine is not None else "",
            model_path=str(getattr(self.engine, "model_path", "")),
            flash_attention=bool(getattr(getattr(self.engine, "options", None), "flash_attention", False)),
            seed=generation.seed if generation is not None else self.settings.seed,
            max_tokens=self.settings.max_tokens, tree=self.tree,
            current=tuple(step.id for step in generation.steps) if generation is not None else (),
        )

    def _cmd_save(self, command: Save) -> None:
        """Write the session to `command.path` with `command.write(session, path)`: the caller picks the format."""
        from tokenlab.files import confined_path

        session = self.session()
        path = command.path
        target = confined_path(path, self.settings.files_dir)  # a served lab writes inside its directory only
        path = str(target) if self.settings.files_dir is not None else path
        try:
            written = command.write(session, path)
        except OSError as exc:
            raise ValueError(f"could not save to {path}: {exc.strerror or exc}") from None
        self.emit(SessionSaved(str(written)))

    def _cmd_play(self, command: Play | None = None) -> None:
        generation = self.generation
        if generation is None:
            self._new_run(self.settings.seed, start=True)
            return
        if generation.done:
            self._new_run(generation.seed + 1 if self.loop else generation.seed, start=True)
            return
        self.running = True
        self.emit(StateChanged(self.running, self.loop))

    def _cmd_pause(self, command: Pause | None = None) -> None:
        self.running = False
        self._flush()
        self.emit(StateChanged(self.running, self.loop))
        self._emit_frontier()

    def _cmd_toggle(self, command: Toggle) -> None:
        if self.running:
            self._cmd_pause()
        else:
            self._cmd_play()

    def _cmd_step(self, command: StepOnce) -> None:
        generation = self.generation
        if generation is None:
            return
        if self.running:
            self._cmd_pause()
        if generation.done:
            self.emit(LabFailed(f"the run stopped ({generation.stop_reason}); press r to regenerate"))
            return
        step = generation.step()
        if step is not None:
            self.emit(StepsAdded(self.run_id, step.index, (step,), generation.tokens_per_second))
        self._tell_notice(generation)
        if generation.done:
            self.emit(RunStopped(self.run_id, generation.stop_reason or "", len(generation.steps),
                                 generation.tokens_per_second))
            self._record_branch(count=True)
        self._emit_frontier()

    def _cmd_regenerate(self, command: Regenerate) -> None:
        current = self.generation.seed if self.generation is not None else self.settings.seed
        self._new_run(current if command.seed is None else command.seed, start=True)

    def _cmd_set_params(self, command: SetParams) -> None:
        params = command.params
        self.settings.params = params
        if self.generation is None:
            return
        self.generation.set_params(params)
        if not self.running:
            self._emit_frontier()

    def _cmd_choose(self, command: Choose) -> None:
        index, token_id = command.index, command.token_id
        generation = self.generation
        if generation is None:
            return
        self._flush()
        if len(generation.steps) > index:
            self._record_branch(count=generation.done)  # the old text stays in the tree as a branch
        step = generation.choose(index, token_id)
        self._counted = False
        self.emit(StepsAdded(self.run_id, index, (step,), generation.tokens_per_second))
        if generation.done:
            self.emit(RunStopped(self.run_id, generation.stop_reason or "", len(generation.steps),
                                 generation.tokens_per_second))
            self._record_branch(count=True)
        if not self.running:
            self._emit_frontier()

    def _cmd_set_prompt(self, command: SetPrompt) -> None:
        self.settings.prompt = command.prompt
        self.settings.chat = command.chat
        self._new_run(self.settings.seed, start=True)

    def _cmd_set_loop(self, command: SetLoop) -> None:
        self.loop = command.loop
        self.emit(StateChanged(self.running, self.loop))
        if self.loop and not self.running:
            self._cmd_play()  # loop mode means generating: finish this run, then the next ones

    def _cmd_set_seed(self, command: SetSeed) -> None:
        self.settings.seed = command.seed
        self._new_run(command.seed, start=self.running or self.settings.autostart)

    def _cmd_resolve_token(self, command: ResolveToken) -> None:
        assert self.engine is not None
        text = command.text
        if text.startswith("#") and text[1:].isdigit():
            token_id = int(text[1:])
            if token_id >= self.engine.n_vocab:
                raise ValueError(f"token #{token_id} is outside the vocabulary (0..{self.engine.n_vocab - 1})")
        else:
            token_id = self.engine.find_token(text)
        self.emit(TokenResolved(token_id, self.engine.token_text(token_id)))

    def _cmd_name_tokens(self, command: NameTokens) -> None:
        assert self.engine is not None
        token_ids = command.token_ids
        n_vocab = self.engine.n_vocab
        self.emit(TokensNamed(tuple((token_id, self.engine.token_text(token_id) if token_id < n_vocab
                                     else f"#{token_id}") for token_id in token_ids)))

    def _cmd_set_hot_tokens(self, command: SetHotTokens) -> None:
        self.hot_tokens = tuple(command.token_ids)
        if not self.running:
            self._emit_frontier()

    def _cmd_switch_branch(self, command: SwitchBranch) -> None:
        """Show the newest branch through the path; the KV cache keeps the prefix it shares with the last one."""
        generation = self.generation
        node = self.tree.find(command.path)
        if generation is None or node is None:
            raise ValueError("that branch is not in the tree any more")
        self._flush()
        if generation.steps and not self._counted:
            self._record_branch(count=False)
        leaf = node.deepest_leaf()
        self.running = False
        generation.load(leaf.path(), stop_reason=leaf.stop_reason if leaf.ends else None)
        self._counted = leaf.ends > 0
        self.emit(StateChanged(self.running, self.loop))
        self.emit(StepsAdded(self.run_id, 0, tuple(generation.steps), generation.tokens_per_second))
        if generation.stop_reason:
            self.emit(RunStopped(self.run_id, generation.stop_reason, len(generation.steps), 0.0, replayed=True))
        self._emit_tree()
        self._emit_frontier()

    def _cmd_score(self, command: Score) -> None:
        """Score a text on this thread (all decoding of the process stays here), as step records."""
        from tokenlab.lab.score import WatermarkTest, score_text, scored_steps

        assert self.engine is not None
        if self.running:
            self._cmd_pause()
        params = self.settings.params
        # the lab's own watermark knobs say which watermark to test for
        watermark = (None if params.watermark_key is None
                     else WatermarkTest(params.watermark_key, params.watermark_gamma, params.watermark_scheme))
        result = score_text(self.engine, command.text, top_n=self.settings.top_n, watermark=watermark)
        marks = None
        if result.watermark is not None:
            marks = tuple(zip(result.watermark.green, result.watermark.counted))
        self.emit(ScoreReady(scored_steps(result), result.summary(), marks))

    def _cmd_stage_view(self, command: ShowStages) -> None:
        """The distribution after every stage at step `index` (len(steps) = the next step), current knobs."""
        from tokenlab.lab.stages import stage_view

        index, n = command.index, command.n
        generation = self.generation
        assert generation is not None and self.engine is not None
        frontier = self._inspected_frontier(index)
        ids = [int(i) for i in frontier.top_ids(n)]
        if index < len(generation.steps) and generation.steps[index].id not in ids:
            ids.append(generation.steps[index].id)
        for token_id in self.hot_tokens:
            if token_id not in ids:
                ids.append(token_id)
        view = stage_view(frontier.result, frontier.raw, ids, self.engine.token_text,
                          rest_mass=frontier.rest_mass, seen=frontier.seen)
        self.emit(StageViewReady(index, view))

    def _inspected_frontier(self, index: int) -> Frontier:
        """Step `index` as it stood before its token was drawn, through the current knobs (pauses a run)."""
        generation = self.generation
        assert generation is not None and self.engine is not None
        if self.running:
            self._cmd_pause()
        if index >= len(generation.steps):
            return generation.frontier()
        return generation.frontier_at(index, self.settings.params)  # an earlier step, through today's knobs

    def _cmd_compare_step(self, command: CompareStep) -> None:
        """The current knobs (A) and B on step `index`: survivors, final p, tokens only one can draw."""
        from tokenlab.lab.compare import compare_frontier

        assert self.engine is not None
        frontier = self._inspected_frontier(command.index)
        comparison = compare_frontier(frontier, command.params_b, self.engine.token_text, top_n=12)
        self.emit(StepCompared(command.index, command.label, command.params_b, comparison))

    def _cmd_compare_runs(self, command: CompareRuns) -> None:
        """Both knob sets generate from step `index` as two sequences of one context, with the run's seed."""
        from tokenlab.lab.compare import compare_generations

        generation = self.generation
        assert generation is not None and self.engine is not None
        if self.running:
            self._cmd_pause()
        index = min(command.index, len(generation.steps))
        prefix = [*generation.prompt_tokens, *generation.generated_ids[:index]]
        state = generation.steps[index - 1].sampler_state if index else None
        comparison = compare_generations(self.engine, prefix, self.settings.params, command.params_b,
                                         seed=generation.seed, max_tokens=command.length, start_index=index,
                                         state=state)
        self.emit(RunsCompared(index, command.label, command.params_b, comparison))

    def _cmd_rollouts(self, command: Rollouts) -> None:
        """Sample n continuations of `length` tokens from step `index` in one batch; add them to the tree."""
        from tokenlab.engine import Utf8Stream
        from tokenlab.lab.rollouts import run_rollouts

        index, n, length = command.index, command.n, command.length
        generation = self.generation
        assert generation is not None and self.engine is not None
        if self.running:
            self._cmd_pause()
        index = max(0, min(index, len(generation.steps)))
        prefix = generation.steps[:index]
        context = [*generation.prompt_tokens, *(step.id for step in prefix)]
        self.cancel_rollouts.clear()
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.perf_counter()
            if now - last[0] >= self.batch_interval or done == total:
                last[0] = now
                self.emit(RolloutProgress(done, total))

        result = run_rollouts(self.engine, context, self.settings.params, n=n, length=length,
                              seed=generation.seed, top_n=self.settings.top_n, progress=progress,
                              cancel=self.cancel_rollouts.is_set, first_step=index,
                              state=prefix[-1].sampler_state if prefix else None)
        for rollout in result.rollouts:
            stream = Utf8Stream()
            for step in prefix:
                stream.push(self.engine.piece(step.id))
            steps = list(prefix)
            for offset, (token_id, final_prob) in enumerate(zip(rollout.ids, rollout.final_probs)):
                eog = self.engine.is_eog(token_id)
                text = "" if eog else stream.push(self.engine.piece(token_id))
                steps.append(Step(index=index + offset, id=token_id, piece=self.engine.token_text(token_id),
                                  text=text, logit=math.nan, prob=math.nan, final_prob=final_prob, rank=0,
                                  entropy=math.nan, final_entropy=math.nan, top=(), eog=eog))
            self.tree.add(steps, stop_reason="eos" if rollout.eog else "rollout")
        self._emit_tree()
        self.emit(RolloutsReady(index, result))
        self._emit_frontier()

    def _cmd_run_to(self, command: RunTo) -> None:
        """Start a run of the prompt with these knobs and seed, sample `tokens` tokens, then pause (a lesson's step)."""
        self.loop = False
        settings = self.settings
        settings.prompt, settings.chat, settings.params = command.prompt, command.chat, command.params
        tokens = command.tokens
        settings.max_tokens = max(settings.max_tokens, tokens + 1)  # the student can sample on from there
        self._new_run(command.seed, start=False)
        generation = self.generation
        if generation is None:
            return
        start = 0
        while len(generation.steps) < tokens and not generation.done and not self._quit:
            step = generation.step()
            if step is None:
                break
            if len(generation.steps) - start >= 8 or len(generation.steps) == tokens or generation.done:
                # in batches, so the text appears as it is written
                self.emit(StepsAdded(self.run_id, start, tuple(generation.steps[start:]),
                                     generation.tokens_per_second))
                start = len(generation.steps)
        if generation.done:
            self.emit(RunStopped(self.run_id, generation.stop_reason or "", len(generation.steps),
                                 generation.tokens_per_second))
            self._record_branch(count=True)
        self._emit_frontier()
