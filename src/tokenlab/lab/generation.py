"""The generation loop: ask the engine for logits, run the pipeline, draw, record a Step."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING


import numpy as np

from tokenlab.engine import Engine, EngineError, Utf8Stream
from tokenlab.engine.batch import BatchDecoder
from tokenlab.lab.step import DEFAULT_TOP_N, NEGATIVE_TOP_N, Candidate, Frontier, Rewind, Step, mass_before
from tokenlab.sampling import Pipeline, PipelineResult, SamplerParams
from tokenlab.sampling.constraint import Grammar, constraint_of

if TYPE_CHECKING:
    from tokenlab.engine.grammar import GrammarConstraint

STOP_EOS = "eos"
STOP_MAX_TOKENS = "max_tokens"
STOP_CONTEXT_FULL = "context_full"

MAX_REWINDS_PER_STEP = 16
"""Phrase-ban rewinds to one step (after the same prefix) before a phrase is let through, with a notice."""
MAX_REWINDS_PER_RUN = 256
"""Phrase-ban rewinds in one run before phrases are let through (rewinds can move back and forth)."""


def top_rank(top: Sequence[Candidate], token_id: int, n: int) -> tuple[float, int]:
    """(raw prob, 1-based raw rank) of `token_id` from a step's candidates; rank 0 when not in the top n.

    The first n candidates are the n highest raw logits in order, so every token with a greater logit
    than a token among them is among them too: its rank is a count over n candidates, not the row.
    """
    for position, candidate in enumerate(top):
        if candidate.id == token_id:
            if position >= n:
                return candidate.prob, 0
            rank = sum(1 for other in top[:position] if other.logit > candidate.logit)
            return candidate.prob, rank + 1
    raise ValueError(f"token {token_id} is not among the candidates")


class Generation:
    """One run from a prompt: steps so far, the frontier step, and why it stopped.

    Drive it with `step()` (one token) or `run()` (until it stops). `choose(i, token)` forces a token
    at step i and drops what came after; `rewind(i)` and `regenerate()` go back. The engine's KV cache
    keeps the shared prefix in every case, so only the new suffix is decoded.
    """

    def __init__(
        self,
        engine: Engine,
        prompt_tokens: Sequence[int],
        params: SamplerParams | None = None,
        *,
        seed: int = 0,
        max_tokens: int = 256,
        top_n: int = DEFAULT_TOP_N,
        record: bool = True,
        chat: bool | None = None,
    ) -> None:
        if not prompt_tokens:
            raise EngineError("the prompt is empty; give some text to continue")
        if len(prompt_tokens) >= engine.n_ctx:
            raise EngineError(
                f"the prompt is {len(prompt_tokens)} tokens but the context holds {engine.n_ctx}; "
                "shorten the prompt or raise --ctx-size"
            )
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        if top_n < 1:
            raise ValueError(f"top_n must be at least 1, got {top_n}")
        self.engine = engine
        self.prompt_tokens: tuple[int, ...] = tuple(int(t) for t in prompt_tokens)
        self.params = params or SamplerParams()
        self.seed = int(seed)
        self.max_tokens = int(max_tokens)
        self.top_n = int(top_n)
        self.record = record
        """False for lean runs (plain text output): steps then carry no raw statistics or candidates."""
        self.steps: list[Step] = []
        self._ids: list[int] = []
        """Token ids of `steps`, kept alongside so a step's context is one list copy, not a Python loop."""
        self.stop_reason: str | None = None
        self._frontier: Frontier | None = None
        self._pipeline: Pipeline | None = None
        self._utf8 = Utf8Stream()
        self.started_at: float | None = None
        """perf_counter() when the first step began (wall-clock timing of a whole run)."""
        self.finished_at: float | None = None
        """perf_counter() when the run stopped."""
        self.elapsed = 0.0
        """Seconds spent inside step() (decode + pipeline + record)."""
        self.chat = chat
        """How the negative prompt is formatted (the prompt's own mode: chat template or raw; None = the model's default)."""
        self._negative: tuple[str, tuple[int, ...]] | None = None
        """(negative prompt, its token ids), formatted once per text."""
        self._guide: BatchDecoder | None = None
        """The BatchDecoder holding the positive (0) and negative (1) contexts while guidance is on."""
        self._phrase_bans: dict[tuple[int, ...], set[int]] = {}
        """Tokens phrase bans removed, by the generated ids before the step they apply to."""
        self._rewound_at: tuple[int, tuple[Rewind, ...]] | None = None
        """(step index, rewinds) to attach to the next step recorded at that index."""
        self.rewinds = 0
        """Phrase-ban rewinds in this run."""
        self.notice: str | None = None
        """A one-line message for the user (a phrase let through); the caller shows it and clears it."""
        self._grammar: GrammarConstraint | None = None
        self._grammar_for(self.params)  # a constraint that does not parse fails here, before any decode

    def _grammar_for(self, params: SamplerParams) -> GrammarConstraint | None:
        """The engine-side grammar of `params`' constraint (built once per constraint), or None."""
        wanted = constraint_of(params)
        if wanted is None:
            return None
        current = self._grammar
        if current is None or (current.kind, current.source) != wanted:
            from tokenlab.engine.grammar import GrammarConstraint

            self._grammar = GrammarConstraint(self.engine, *wanted)
            if current is not None:
                current.close()
        return self._grammar

    # -- state -----------------------------------------------------------------------------------

    @property
    def generated_ids(self) -> list[int]:
        """Token ids generated so far."""
        return list(self._ids)

    @property
    def context(self) -> list[int]:
        """Prompt and generated token ids: what the model has seen (or will see next)."""
        return [*self.prompt_tokens, *self._ids]

    @property
    def text(self) -> str:
        """The generated text (characters still incomplete at the end are not included)."""
        return "".join(step.text for step in self.steps)

    @property
    def held_text(self) -> str:
        """Bytes held back at the end for an incomplete character, shown with U+FFFD."""
        return self._utf8.pending.decode("utf-8", errors="replace")

    @property
    def done(self) -> bool:
        """Whether generation stopped (eos, max_tokens or context_full)."""
        return self.stop_reason is not None

    @property
    def wall_tokens_per_second(self) -> float:
        """Generated tokens per wall-clock second from the first step to the stop (0 while running)."""
        if self.started_at is None or self.finished_at is None or self.finished_at <= self.started_at:
            return 0.0
        return len(self.steps) / (self.finished_at - self.started_at)

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per second of step() time."""
        return len(self.steps) / self.elapsed if self.elapsed > 0 else 0.0

    def frontier(self) -> Frontier:
        """The next step's retained logits and pipeline result (decodes what the cache lacks)."""
        index = len(self.steps)
        if self._frontier is not None and self._rows_key(self._frontier.params) != self._rows_key(self.params):
            self._frontier = None  # guidance switched on or off, or a new negative prompt: other rows
        if self._frontier is None:
            params = self.params
            if self._pipeline is None or self._pipeline.params is not self.params:
                self._pipeline = Pipeline(self.params)
            self._frontier = self.frontier_at(index, params, self._pipeline)
        else:
            params = self._params_at(index, self.params)
            if self._frontier.params != params:
                self._frontier.resample(params)
        return self._frontier

    def frontier_at(self, index: int, params: SamplerParams, pipeline: Pipeline | None = None) -> Frontier:
        """Step `index` as it stood before its token was drawn: its logits (decoded again for an earlier step;
        the KV cache keeps the prefix), that step's sampler state and random stream, through `params`."""
        context = [*self.prompt_tokens, *self._ids[:index]]
        banned = self._params_at(index, params)
        if banned is not params:
            params, pipeline = banned, None
        grammar = self._grammar_for(params)
        # the grammar's state follows the path: replayed from the generated tokens up to this step
        constraint = grammar.at(self._ids[:index]) if grammar is not None else None
        negative = None
        if params.guidance_scale != 1.0:
            logits, negative = self._guided_rows(context, self._ids[:index], params)
        elif not self.record and index == len(self.steps) and not getattr(self.engine, "remote", True):
            # a lean run draws and moves on before the next decode: llama.cpp's own buffer will do
            logits = self.engine.evaluate(context, copy=False)
        else:
            logits = self.engine.evaluate(context)
        return Frontier(logits=logits, history=tuple(context), params=params,
                        pipeline=pipeline, rng_key=(self.seed, index),
                        state=self.steps[index - 1].sampler_state if index else None, step_index=index,
                        rest_mass=getattr(self.engine, "last_rest_mass", None), negative_logits=negative,
                        constraint=constraint)

    # -- guidance and phrase bans ----------------------------------------------------------------

    @staticmethod
    def _rows_key(params: SamplerParams) -> tuple[bool, str]:
        """What the frontier's logits rows depend on besides the context: whether and against what it is guided."""
        guided = params.guidance_scale != 1.0
        return guided, params.negative_prompt if guided else ""

    def negative_context(self, params: SamplerParams | None = None) -> tuple[int, ...]:
        """Token ids of the negative prompt (formatted as the prompt is), or the prompt's last token without one."""
        text = (params or self.params).negative_prompt
        if not text:
            return self.prompt_tokens[-1:]  # transformers' unconditional context: the last prompt token
        if self._negative is None or self._negative[0] != text:
            self._negative = (text, tuple(self.engine.format_prompt(text, chat=self.chat)))
        return self._negative[1]

    def _guided_rows(self, context: list[int], generated: Sequence[int],
                     params: SamplerParams) -> tuple[np.ndarray, np.ndarray]:
        """(positive row, negative row): both contexts as two sequences of one llama.cpp context, one decode."""
        if getattr(self.engine, "remote", False):
            raise EngineError("guidance needs a local model (a server's top K has no second sequence); "
                              "drop --engine or set --guidance-scale 1")
        negative = [*self.negative_context(params), *generated]
        if len(negative) > self.engine.n_ctx:
            raise EngineError(f"the negative prompt and the text are {len(negative)} tokens but the context holds "
                              f"{self.engine.n_ctx}; shorten the negative prompt or raise --ctx-size")
        if self._guide is None:
            self._guide = BatchDecoder(self.engine, n_seq=2, n_cells=2 * self.engine.n_ctx)
        positive_row, negative_row = self._guide.evaluate([context, negative])
        return positive_row, negative_row

    def close(self) -> None:
        """Free the second llama.cpp context that guidance opened, if any (the engine stays loaded)."""
        if self._guide is not None:
            self._guide.close()
            self._guide = None

    def _params_at(self, index: int, params: SamplerParams) -> SamplerParams:
        """`params` with the tokens phrase bans removed at step `index` (after this very prefix) added to `ban`."""
        if not self._phrase_bans:
            return params
        extra = self._phrase_bans.get(tuple(self._ids[:index]))
        if not extra:
            return params
        missing = tuple(sorted(extra.difference(params.ban)))
        return params.replace(ban=(*params.ban, *missing)) if missing else params

    def _phrase_match(self, step: Step) -> tuple[int, str] | None:
        """(character offset, phrase) of the earliest banned phrase that the newest token's text completes."""
        if not step.text:
            return None
        text = self.text
        added = len(step.text)
        found: tuple[int, str] | None = None
        for phrase in self.params.ban_phrases:
            # earlier occurrences were checked when their last token came: look only at the new ones
            start = text.find(phrase, max(0, len(text) - added - len(phrase) + 1))
            if start >= 0 and (found is None or start < found[0]):
                found = (start, phrase)
        return found

    def _step_at_offset(self, offset: int) -> int:
        """The step whose token began the character at `offset` of the text (held bytes count as their character's)."""
        position = len(self.text)
        index = len(self.steps)
        while index > 0 and position > offset:
            index -= 1
            position -= len(self.steps[index].text)
        while index > 0 and not self.steps[index - 1].text and not self.steps[index - 1].eog:
            index -= 1  # tokens that held the first bytes of this character
        return index

    def _rewind_phrase(self, step: Step) -> bool:
        """Rewind to where a banned phrase the new token completed began, banning that token there; False if none."""
        match = self._phrase_match(step)
        if match is None:
            return False
        offset, phrase = match
        index = self._step_at_offset(offset)
        banned = self._phrase_bans.setdefault(tuple(self._ids[:index]), set())
        shown = phrase if len(phrase) <= 40 else phrase[:37] + "..."
        if any(old.forced for old in self.steps[index:]):  # a rewind would undo the user's own choice
            self.notice = f"the banned phrase {shown!r} holds a token you chose (from step {index} on); it was let through"
            return False
        if len(banned) >= MAX_REWINDS_PER_STEP or self.rewinds >= MAX_REWINDS_PER_RUN:
            limit = (f"{MAX_REWINDS_PER_STEP} rewinds to step {index}" if len(banned) >= MAX_REWINDS_PER_STEP
                     else f"{MAX_REWINDS_PER_RUN} rewinds in this run")
            self.notice = (f"the banned phrase {shown!r} was let through at step {index} after {limit}; "
                           "the model insists: ban a shorter phrase or add a logit bias against it")
            return False
        dropped = self.steps[index:]
        earlier = tuple(rewind for old in dropped for rewind in old.rewound)
        rewind = Rewind(phrase=phrase, ids=tuple(s.id for s in dropped), texts=tuple(s.text for s in dropped))
        banned.add(dropped[0].id)
        self.rewind(index)
        self._rewound_at = (index, (*earlier, rewind))
        self.rewinds += 1
        return True


    def set_params(self, params: SamplerParams) -> PipelineResult | None:
        """Use new knobs from the next token on; returns the frontier re-sampled with them, if any."""
        if constraint_of(params) != constraint_of(self.params):
            self._grammar_for(params)
            self._frontier = None  # another constraint: the frontier needs its grammar's mask
        self.params = params
        if self._frontier is not None:
            if self._rows_key(self._frontier.params) != self._rows_key(params):
                return self.frontier().result  # guidance changed: the rows are decoded again
            return self._frontier.resample(self._params_at(len(self.steps), params))
        return None

    # -- moving ----------------------------------------------------------------------------------

    def step(self) -> Step | None:
        """Sample one token; None once generation has stopped."""
        if self.stop_reason is not None:
            return None
        if len(self.steps) >= self.max_tokens:
            self.stop_reason = STOP_MAX_TOKENS
            return None
        started = time.perf_counter()
        if self.started_at is None:
            self.started_at = started
        while True:
            frontier = self.frontier()
            token_id = frontier.draw()
            self._prefetch(frontier, token_id)
            step = self._record(frontier, token_id, forced=False)
            # a banned phrase: back to where it began and draw there again (bounded by the rewind caps)
            if not self.params.ban_phrases or not self._rewind_phrase(step):
                break
        self.elapsed += time.perf_counter() - started
        return step

    def _prefetch(self, frontier: Frontier, token_id: int) -> None:
        """Start decoding the drawn token in the background while this step is recorded (Engine.prefetch).

        Only where the record has work worth hiding (raw statistics and candidates), the run goes on
        after this token, and the next rows come from the engine's own context (not guidance's pair).
        """
        prefetch = getattr(self.engine, "prefetch", None)
        if prefetch is None or not self.record or frontier.negative_logits is not None:
            return
        after = len(self.steps) + 1
        if after >= self.max_tokens or len(self.prompt_tokens) + after >= self.engine.n_ctx:
            return
        if self.engine.is_eog(token_id):
            return
        prefetch([*frontier.history, token_id])

    @property
    def settled(self) -> int:
        """How many steps no phrase ban can take back any more (all of them without phrase bans or once done).

        The steps from there on end in text that could still grow into a banned phrase; an output
        that must never show a banned phrase holds them back.
        """
        if not self.params.ban_phrases or self.stop_reason is not None:
            return len(self.steps)
        longest = max(len(phrase) for phrase in self.params.ban_phrases)
        tail, index = "", len(self.steps)
        while index > 0 and len(tail) < longest:
            index -= 1
            tail = self.steps[index].text + tail
        reach = 0  # the longest end of the text that begins a banned phrase
        for phrase in self.params.ban_phrases:
            for size in range(min(len(phrase) - 1, len(tail)), reach, -1):
                if tail.endswith(phrase[:size]):
                    reach = size
                    break
        if reach == 0:
            index = len(self.steps)
        else:
            index = self._step_at_offset(len(self.text) - reach)
        while index > 0 and not self.steps[index - 1].text and not self.steps[index - 1].eog:
            index -= 1  # bytes held for a character not written yet may begin a phrase
        return index

    def force(self, token_id: int) -> Step:
        """Append `token_id` at the frontier as if the sampler had drawn it."""
        if not 0 <= token_id < self.engine.n_vocab:
            raise ValueError(f"token id {token_id} is outside the vocabulary (0..{self.engine.n_vocab - 1})")
        self._check_allowed(len(self.steps), token_id)
        self.stop_reason = None
        return self._record(self.frontier(), int(token_id), forced=True)

    def _check_allowed(self, index: int, token_id: int) -> None:
        """ValueError when the constraint does not allow `token_id` at step `index` (forcing it would break it)."""
        grammar = self._grammar_for(self.params)
        if grammar is not None and not grammar.at(self._ids[:index]).allows(token_id):
            kind = grammar.kind.replace("_", " ")
            raise ValueError(f"the {kind} constraint does not allow {self.engine.token_text(token_id)!r} at "
                             "this step; choose a token it allows (one not marked as removed by grammar)")

    def run(self) -> Iterator[Step]:
        """Steps until eos, max_tokens or a full context."""
        while (step := self.step()) is not None:
            yield step

    def rewind(self, index: int) -> None:
        """Drop steps from `index` on; the next step() samples position `index` again."""
        if not 0 <= index <= len(self.steps):
            raise IndexError(f"step {index} does not exist (0..{len(self.steps)})")
        del self.steps[index:]
        del self._ids[index:]
        self.stop_reason = None
        self.finished_at = None
        self._frontier = None
        self._rewound_at = None
        self._utf8 = Utf8Stream()
        for step in self.steps:
            self._utf8.push(self.engine.piece(step.id))

    def load(self, steps: Sequence[Step], stop_reason: str | None = None) -> None:
        """Show another branch: these steps become the run (the KV cache catches up lazily, reusing the prefix)."""
        if any(step.index != position for position, step in enumerate(steps)):
            raise ValueError("a branch's steps must be numbered 0, 1, 2, ... in order")
        self.steps = list(steps)
        self._ids = [step.id for step in self.steps]
        self.stop_reason = stop_reason
        self.finished_at = None
        self._frontier = None
        self._rewound_at = None
        self._utf8 = Utf8Stream()
        for step in self.steps:
            self._utf8.push(self.engine.piece(step.id))

    def choose(self, index: int, token_id: int) -> Step:
        """Replace the token at step `index` with `token_id`; the text after it is dropped."""
        if 0 <= index <= len(self.steps) and 0 <= token_id < self.engine.n_vocab:
            self._check_allowed(index, token_id)  # before anything is dropped
        self.rewind(index)
        return self.force(token_id)

    def regenerate(self, seed: int | None = None) -> None:
        """Start over from the prompt (the prompt stays in the KV cache), optionally with a new seed."""
        if seed is not None:
            self.seed = int(seed)
        self.rewind(0)
        self.elapsed = 0.0
        self.started_at = None
        self._phrase_bans.clear()  # a new run: bans belong to the run that met the phrase
        self.rewinds = 0

    # -- recording -------------------------------------------------------------------------------

    def _record(self, frontier: Frontier, token_id: int, *, forced: bool) -> Step:
        index = len(self.steps)
        result = frontier.result
        eog = self.engine.is_eog(token_id)
        piece_bytes = self.engine.piece(token_id)
        text = "" if eog else self._utf8.push(piece_bytes)
        dice = None
        if self.record and not forced and frontier.drawn_u is not None and result.n_final > 1:
            dice = (frontier.drawn_u, mass_before(result, token_id))
        if self.record:
            raw = frontier.raw
            top = frontier.candidates(self.engine.token_text, self.top_n, extra=(token_id,))
            prob, rank = top_rank(top, token_id, self.top_n)
            if rank == 0:  # the token ranks below the top-N: count over the whole row
                rank = raw.rank(token_id) + 1
            entropy = raw.entropy_bits
            final_entropy = max(0.0, result.final_entropy_bits)
        else:
            prob, rank, entropy, top, final_entropy = math.nan, 0, math.nan, (), math.nan
        step = Step(
            index=index,
            id=token_id,
            piece=self.engine.token_text(token_id),
            text=text,
            logit=float(frontier.logits[token_id]),
            prob=prob,
            final_prob=result.prob_of(token_id),
            rank=rank,
            entropy=entropy,
            final_entropy=final_entropy,
            top=top,
            forced=forced,
            eog=eog,
            sampler_state=result.next_state(token_id) or None,
            dice=dice,
            rest_mass=frontier.rest_mass,
            allowed=next((report.n_kept for report in result.stages if report.name == Grammar.name), None),
            rewound=self._rewound_at[1] if self._rewound_at is not None and self._rewound_at[0] == index else (),
            negative=tuple((token, self.engine.token_text(token), prob)
                           for token, prob in frontier.negative_top(NEGATIVE_TOP_N)) if self.record else (),
        )
        self._rewound_at = None
        self.steps.append(step)
        self._ids.append(token_id)
        self._frontier = None
        if eog:
            self.stop_reason = STOP_EOS
        elif len(self.prompt_tokens) + len(self.steps) >= self.engine.n_ctx:
            self.stop_reason = STOP_CONTEXT_FULL
        elif len(self.steps) >= self.max_tokens:
            self.stop_reason = STOP_MAX_TOKENS
        if self.stop_reason is not None:
            self.finished_at = time.perf_counter()
        return step
