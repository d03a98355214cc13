"""Commands to the lab controller: one frozen dataclass per thing a UI (or a test) can ask the lab to do.

`LabController.send(command)` queues one; the controller thread applies it between two steps through a
table keyed by the command's type, so a command without a handler fails when it is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tokenlab.sampling import SamplerParams


@dataclass(frozen=True)
class LabCommand:
    """Something a UI asks the lab controller to do."""


@dataclass(frozen=True)
class Play(LabCommand):
    """Generate: resume the paused run, or start the next one if it stopped."""


@dataclass(frozen=True)
class Pause(LabCommand):
    """Stop generating after the current step; the live next step is re-sampled for inspection."""


@dataclass(frozen=True)
class Toggle(LabCommand):
    """Pause when running, play when paused."""


@dataclass(frozen=True)
class StepOnce(LabCommand):
    """Sample exactly one token (pausing first); named so it is not confused with the `Step` record."""


@dataclass(frozen=True)
class Regenerate(LabCommand):
    """Start over from the prompt with the current knobs (with `seed`, or the current run's seed)."""

    seed: int | None = None


@dataclass(frozen=True)
class SetParams(LabCommand):
    """Sample with these knobs from the next token on (the live next step is re-sampled while paused)."""

    params: SamplerParams


@dataclass(frozen=True)
class Choose(LabCommand):
    """Force `token_id` at step `index` and continue from there (the old text stays as a branch)."""

    index: int
    token_id: int


@dataclass(frozen=True)
class SetPrompt(LabCommand):
    """Run this prompt (chat: apply the model's chat template; None lets the model decide)."""

    prompt: str
    chat: bool | None


@dataclass(frozen=True)
class SetLoop(LabCommand):
    """Loop mode: when a run stops, start the next one with the next seed."""

    loop: bool


@dataclass(frozen=True)
class SetSeed(LabCommand):
    """Use this seed and restart the run from the prompt."""

    seed: int


@dataclass(frozen=True)
class ResolveToken(LabCommand):
    """Find the token whose text is `text` (or `#id`); answered with TokenResolved."""

    text: str


@dataclass(frozen=True)
class NameTokens(LabCommand):
    """Look up the texts of these token ids; answered with TokensNamed."""

    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class SetHotTokens(LabCommand):
    """List these tokens among the candidates of the live next step, however unlikely they are."""

    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class SwitchBranch(LabCommand):
    """Show the newest branch of the tree through these token ids."""

    path: tuple[int, ...]


@dataclass(frozen=True)
class Score(LabCommand):
    """Score a text token by token (GLTR); answered with ScoreReady."""

    text: str


@dataclass(frozen=True)
class ShowStages(LabCommand):
    """The distribution after every stage at step `index` (the live next step when past the last one)."""

    index: int
    n: int = 8
    """Candidates shown (the chosen and hot tokens are added when they rank lower)."""


@dataclass(frozen=True)
class CompareStep(LabCommand):
    """Step `index` under the current knobs (A) and `params_b` (B); answered with StepCompared."""

    index: int
    params_b: SamplerParams
    label: str
    """What B is called on screen (a preset's name)."""


@dataclass(frozen=True)
class CompareRuns(LabCommand):
    """Generate `length` tokens from step `index` with A and with B, same seed; answered with RunsCompared."""

    index: int
    params_b: SamplerParams
    label: str
    length: int = 48


@dataclass(frozen=True)
class RunTo(LabCommand):
    """Start a run of `prompt` with these knobs and seed, sample `tokens` tokens, then pause (a lesson's step)."""

    prompt: str
    chat: bool | None
    seed: int
    params: SamplerParams
    tokens: int


@dataclass(frozen=True)
class Rollouts(LabCommand):
    """Sample `n` continuations of `length` tokens from step `index` in one batch; they join the tree."""

    index: int
    n: int
    length: int


@dataclass(frozen=True)
class Save(LabCommand):
    """Write the session to `path` with `write(session, path)` (export.write_session picks the format by
    suffix); answered with SessionSaved."""

    path: str
    write: Callable[[Any, str], Any]
