"""The lab controller driven with no app: typed commands in, events out, on the real default model."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest

import tokenlab.lab.commands as commands
from tokenlab.engine import Engine
from tokenlab.lab.commands import (
    Choose,
    LabCommand,
    Play,
    ResolveToken,
    SetParams,
    StepOnce,
)
from tokenlab.lab.controller import (
    EngineReady,
    FrontierView,
    LabController,
    LabEvent,
    LabFailed,
    LabSettings,
    RunStarted,
    RunStopped,
    StateChanged,
    StepsAdded,
    TokenResolved,
)
from tokenlab.sampling import SamplerParams

PROMPT = "The capital of France is"


class Lab:
    """A controller serving on its own thread, with the events it emits collected in order."""

    def __init__(self, engine: Engine, **settings: object) -> None:
        self.events: queue.Queue[LabEvent] = queue.Queue()
        self.seen: list[LabEvent] = []
        defaults: dict[str, object] = {"prompt": PROMPT, "chat": False, "seed": 7, "max_tokens": 6,
                                       "autostart": False, "params": SamplerParams(ban=(engine.eos_id,))}
        defaults.update(settings)
        self.controller = LabController(engine, LabSettings(**defaults), emit=self.events.put)  # type: ignore[arg-type]
        self.thread = threading.Thread(target=self.controller.serve, daemon=True)
        self.thread.start()

    def next(self, wanted: Callable[[LabEvent], bool], timeout: float = 60.0) -> LabEvent:
        """The next event (after the ones already taken) that `wanted` accepts."""
        while True:
            try:
                event = self.events.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no such event within {timeout} s; saw {[type(e).__name__ for e in self.seen]}") from None
            self.seen.append(event)
            if wanted(event):
                return event

    def close(self) -> None:
        self.controller.quit()
        assert self.controller.stopped.wait(10), "the controller thread did not stop"


@pytest.fixture
def lab(engine: Engine) -> Iterator[Lab]:
    running = Lab(engine)
    yield running
    running.close()


def is_(kind: type[LabEvent]) -> Callable[[LabEvent], bool]:
    return lambda event: isinstance(event, kind)


def test_a_paused_lab_opens_at_the_live_frontier(lab: Lab, engine: Engine) -> None:
    ready = lab.next(is_(EngineReady))
    assert isinstance(ready, EngineReady) and ready.n_vocab == engine.n_vocab
    started = lab.next(is_(RunStarted))
    assert isinstance(started, RunStarted) and started.prompt == PROMPT and started.seed == 7
    frontier = lab.next(is_(FrontierView))
    assert isinstance(frontier, FrontierView)
    assert frontier.index == 0 and frontier.params == started.params
    assert frontier.candidates[0].text == " Paris" and frontier.survivors > 1
    assert not any(isinstance(event, StepsAdded) for event in lab.seen)  # paused: nothing generated


def test_set_params_while_paused_resamples_the_frontier_with_them(lab: Lab, engine: Engine) -> None:
    lab.next(is_(FrontierView))
    greedy = SamplerParams(temperature=0.0, ban=(engine.eos_id,))
    lab.controller.send(SetParams(greedy))
    frontier = lab.next(is_(FrontierView))
    assert isinstance(frontier, FrontierView)
    assert frontier.params == greedy and frontier.index == 0
    assert frontier.survivors == 1 and frontier.candidates[0].final_prob == 1.0
    assert lab.controller.settings.params == greedy


def test_step_adds_one_step_then_shows_the_next_frontier(lab: Lab) -> None:
    lab.next(is_(FrontierView))
    lab.controller.send(SetParams(SamplerParams(temperature=0.0)))
    lab.next(is_(FrontierView))
    lab.controller.send(StepOnce())
    added = lab.next(is_(StepsAdded))
    assert isinstance(added, StepsAdded)
    assert added.start == 0 and [step.text for step in added.steps] == [" Paris"]
    frontier = lab.next(is_(FrontierView))
    assert isinstance(frontier, FrontierView) and frontier.index == 1


def test_choose_forces_a_token_and_play_runs_to_max_tokens(lab: Lab) -> None:
    frontier = lab.next(is_(FrontierView))
    assert isinstance(frontier, FrontierView)
    second = frontier.candidates[1]
    lab.controller.send(Choose(0, second.id))
    added = lab.next(is_(StepsAdded))
    assert isinstance(added, StepsAdded) and added.start == 0
    assert added.steps[0].id == second.id and added.steps[0].forced
    lab.controller.send(Play())
    assert lab.next(lambda event: isinstance(event, StateChanged) and event.running)
    stopped = lab.next(is_(RunStopped))
    assert isinstance(stopped, RunStopped) and stopped.reason == "max_tokens" and stopped.tokens == 6
    steps = [step for event in lab.seen if isinstance(event, StepsAdded) for step in event.steps]
    assert steps[0].id == second.id and [step.index for step in steps] == list(range(6))
    assert lab.next(lambda event: isinstance(event, StateChanged) and not event.running)


def test_a_failing_command_is_reported_and_the_lab_goes_on(lab: Lab, engine: Engine) -> None:
    lab.next(is_(FrontierView))
    lab.controller.send(ResolveToken(f"#{engine.n_vocab + 5}"))
    failed = lab.next(is_(LabFailed))
    assert isinstance(failed, LabFailed) and "outside the vocabulary" in failed.message
    lab.controller.send(ResolveToken(" Paris"))
    resolved = lab.next(is_(TokenResolved))
    assert isinstance(resolved, TokenResolved) and resolved.text == " Paris"


@dataclass(frozen=True)
class Unknown(LabCommand):
    """A command no handler was written for."""


def test_unknown_commands_fail_loudly_when_sent(engine: Engine) -> None:
    controller = LabController(engine, LabSettings(prompt=PROMPT, autostart=False))
    for wrong in (Unknown(), "set_params", object()):
        with pytest.raises(TypeError, match="no handler"):
            controller.send(wrong)  # type: ignore[arg-type]


def test_every_command_has_a_handler(engine: Engine) -> None:
    declared = {value for value in vars(commands).values()
                if isinstance(value, type) and issubclass(value, LabCommand) and value is not LabCommand}
    controller = LabController(engine, LabSettings(prompt=PROMPT, autostart=False))
    assert declared and declared == set(controller._handlers)


@pytest.mark.parametrize("knobs", [{}, {"top_k": 0, "top_p": 1.0, "min_p": 0.0}, {"top_k": 0}])
def test_the_frontier_curves_match_a_full_ranking(knobs: dict) -> None:
    """The lab's curves come from a ranking made once per frontier (raw) and from sorted values (final),
    not from argsorts of the whole row on every knob turn: the same numbers as those argsorts."""
    from tokenlab.lab.controller import log_ranks
    from tokenlab.lab.step import Frontier
    from tokenlab.sampling import SamplerParams

    rng = np.random.default_rng(3)
    logits = (rng.standard_normal(70_000) * 2.0).astype(np.float32)
    logits[::1_000] = -np.inf
    logits[7] = np.nan  # counts as -inf
    frontier = Frontier(logits=logits, history=(), params=SamplerParams(**knobs))
    ranks = log_ranks(logits.shape[0])
    cleaned = np.where(np.isnan(logits), -np.inf, logits)
    expected_raw = frontier.raw.probs(np.argsort(-cleaned, kind="stable")[ranks])
    np.testing.assert_array_equal(frontier.raw_curve(ranks), expected_raw)
    np.testing.assert_array_equal(frontier.raw_curve(ranks), expected_raw)  # from the kept ranking
    result = frontier.result
    np.testing.assert_array_equal(result.sorted_final_probs(), np.sort(result.final_probs)[::-1])
    assert result.n_final == result.final_ids.shape[0]
