"""Rollouts: batched multi-sequence decoding, seeded per-sequence draws, the chi-square check, output."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from rich.console import Console

from tokenlab.commands.rollouts import print_rollouts
from tokenlab.engine import Engine, EngineError
from tokenlab.engine.batch import BatchDecoder, max_parallel_sequences
from tokenlab.lab.rollouts import (
    CHECK_ALPHA,
    RolloutResult,
    chi2_sf,
    chi_square_check,
    regularized_gamma_p,
    regularized_gamma_q,
    rollout_rng,
    run_rollouts,
)
from tokenlab.sampling import Pipeline, PipelineResult, SamplerParams

# -- chi-square survival function ------------------------------------------------------------------


def chi2_sf_even(x: float, dof: int) -> float:
    """Closed form for even dof: exp(-x/2) * sum_{i < dof/2} (x/2)^i / i!."""
    half = x / 2
    return math.exp(-half) * sum(half**i / math.factorial(i) for i in range(dof // 2))


@pytest.mark.parametrize(("statistic", "dof", "expected"), [
    (3.841458820694124, 1, 0.05),
    (6.634896601021214, 1, 0.01),
    (11.070497693516351, 5, 0.05),
    (18.307038053275146, 10, 0.05),
    (3.84, 1, 0.05004352),
    (11.07, 5, 0.05000962),
])
def test_chi2_sf_known_values(statistic: float, dof: int, expected: float) -> None:
    assert chi2_sf(statistic, dof) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dof", [2, 4, 10, 50])
@pytest.mark.parametrize("x", [0.01, 0.5, 1.0, 3.0, 9.9, 30.0, 80.0, 250.0])
def test_chi2_sf_matches_closed_forms(x: float, dof: int) -> None:
    # both branches (series below a + 1, continued fraction above) and the far tail, to relative precision
    assert chi2_sf(x, dof) == pytest.approx(chi2_sf_even(x, dof), rel=1e-9, abs=1e-300)
    assert chi2_sf(x, 1) == pytest.approx(math.erfc(math.sqrt(x / 2)), rel=1e-9, abs=1e-300)


def test_incomplete_gamma_edges() -> None:
    assert regularized_gamma_q(3.0, 0.0) == 1.0
    assert regularized_gamma_q(3.0, math.inf) == 0.0
    assert regularized_gamma_p(1.0, 2.0) == pytest.approx(1 - math.exp(-2.0), rel=1e-12)
    assert chi2_sf(math.inf, 3) == 0.0
    with pytest.raises(ValueError, match="a must be positive"):
        regularized_gamma_q(0.0, 1.0)
    with pytest.raises(ValueError, match="x must be >= 0"):
        regularized_gamma_q(1.0, -1.0)
    with pytest.raises(ValueError, match="dof"):
        chi2_sf(1.0, 0)


def test_chi_square_pools_small_categories() -> None:
    expected = {1: 50.0, 2: 30.0, 3: 12.0, 4: 4.0, 5: 3.0, 6: 1.0}
    observed = {1: 52, 2: 27, 3: 13, 4: 5, 5: 2, 6: 1}
    categories, statistic, dof, p_value = chi_square_check(expected, observed)
    assert [label for label, _, _ in categories] == ["1", "2", "3", "other"]
    assert categories[-1][1:] == (8.0, 8)
    assert dof == 3
    manual = (2**2 / 50) + (3**2 / 30) + (1**2 / 12) + 0
    assert statistic == pytest.approx(manual)
    assert p_value == pytest.approx(chi2_sf(manual, 3))


def test_chi_square_small_other_joins_the_smallest_category() -> None:
    categories, _, dof, _ = chi_square_check({1: 90.0, 2: 8.0, 3: 2.0}, {1: 91, 2: 7, 3: 2})
    assert [(label, e, o) for label, e, o in categories] == [("1", 90.0, 91), ("2 + other", 10.0, 9)]
    assert dof == 1


def test_chi_square_impossible_draw_and_nothing_to_test() -> None:
    _, statistic, _, p_value = chi_square_check({1: 100.0, 2: 0.0}, {1: 99, 2: 1})
    assert statistic == math.inf and p_value == 0.0
    # greedy: one possible token, drawn every time -> one category, nothing to test
    categories, _, dof, p_value = chi_square_check({1: 40.0}, {1: 40})
    assert len(categories) == 1 and dof == 0 and p_value is None


# -- the batch decoder ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def context(engine: Engine) -> list[int]:
    return engine.format_prompt("Write a story about a cat.", chat=True)


def test_batch_rows_match_single_sequence_decoding(engine: Engine, context: list[int]) -> None:
    reference = engine.evaluate(context)
    first = [int(t) for t in np.argsort(-reference)[:4]]
    with BatchDecoder(engine, n_seq=4, n_cells=len(context) + 16) as decoder:
        prefix_row = decoder.decode_prefix(context)
        rows = decoder.step([0, 1, 2, 3], first)
        assert decoder.decoded_tokens == len(context) + 4 and decoder.lengths == [len(context) + 1] * 4
    # the prefix is decoded exactly as the Engine decodes it
    np.testing.assert_array_equal(prefix_row, reference)
    for row, token in zip(rows, first):
        single = engine.evaluate([*context, token])
        # llama.cpp's kernels depend on the number of tokens in a batch, so a 4-token step and a
        # 1-token decode agree only approximately (logits differ by up to ~0.7 for some tokens);
        # compare the distributions
        p_batch, p_single = softmax(row), softmax(single)
        assert 0.5 * np.abs(p_batch - p_single).sum() < 0.1
        assert int(np.argmax(row)) == int(np.argmax(single)) or np.sort(p_single)[-2] > 0.3 * p_single.max()


def softmax(row: np.ndarray) -> np.ndarray:
    z = np.exp(row.astype(np.float64) - row.max())
    return z / z.sum()


def test_batch_decoder_errors_and_close(engine: Engine, context: list[int]) -> None:
    with pytest.raises(EngineError, match="parallel sequences exceed"):
        BatchDecoder(engine, n_seq=max_parallel_sequences() + 1, n_cells=64)
    decoder = BatchDecoder(engine, n_seq=2, n_cells=len(context) + 2)
    with pytest.raises(EngineError, match="no prefix decoded"):
        decoder.step([0], [1])
    decoder.decode_prefix(context)
    with pytest.raises(ValueError, match="outside"):
        decoder.step([5], [1])
    decoder.close()
    decoder.close()  # idempotent
    with pytest.raises(EngineError, match="closed"):
        decoder.step([0], [1])


# -- rollouts on the real model ------------------------------------------------------------------


def test_rollouts_are_deterministic_for_a_seed(engine: Engine, context: list[int]) -> None:
    first = run_rollouts(engine, context, SamplerParams(), n=6, length=6, seed=7)
    again = run_rollouts(engine, context, SamplerParams(), n=6, length=6, seed=7)
    other = run_rollouts(engine, context, SamplerParams(), n=6, length=6, seed=8)
    assert [(r.ids, r.final_probs) for r in first.rollouts] == [
        (r.ids, r.final_probs) for r in again.rollouts
    ]
    assert [r.ids for r in first.rollouts] != [r.ids for r in other.rollouts]
    assert len(first.rollouts) == 6 and all(1 <= len(r.ids) <= 6 for r in first.rollouts)
    assert first.tokens == sum(len(r.ids) for r in first.rollouts)
    assert first.tokens_per_second > 0 and first.seconds >= first.prefix_seconds > 0


def test_prefix_is_decoded_once_and_the_engine_cache_is_untouched(engine: Engine, context: list[int]) -> None:
    engine.evaluate(context[:5])
    cached, decoded = list(engine.tokens), engine.decoded_tokens
    result = run_rollouts(engine, context, SamplerParams(), n=8, length=5, seed=1)
    # every rollout token but the last (and an end-of-generation token) is decoded; the context once
    needed = sum(len(r.ids) - 1 for r in result.rollouts)
    assert result.decoded_tokens == len(context) + needed
    assert result.decode_calls <= 1 + (5 - 1)  # one for the prefix, one per step for all sequences
    assert (engine.tokens, engine.decoded_tokens) == (cached, decoded)
    # in waves of 3, the context still is decoded once (later waves rewind to it)
    waves = run_rollouts(engine, context, SamplerParams(), n=8, length=5, seed=1, parallel=3)
    assert (waves.parallel, waves.waves) == (3, 3)
    assert waves.decoded_tokens == len(context) + sum(len(r.ids) - 1 for r in waves.rollouts)
    # first tokens come from the shared prefix row, whatever the batch
    assert [r.ids[0] for r in waves.rollouts] == [r.ids[0] for r in result.rollouts]


def sequential_rollout(engine: Engine, context: list[int], params: SamplerParams, seed: int, index: int,
                       length: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """One rollout the plain way: one-token decodes on the Engine, the same per-step seeds.

    The context is decoded afresh as one batch, as rollouts decode their shared prefix: on some CPUs
    llama.cpp's kernels for a many-token batch and a one-token decode round differently, so the row of
    the context's last position must come from the same kind of decode on both sides.
    """
    engine.reset()
    pipeline = Pipeline(params)
    ids: list[int] = []
    probs: list[float] = []
    state = None
    for t in range(length):
        history = [*context, *ids]
        rng = rollout_rng(seed, index, t)
        result = pipeline.run(engine.evaluate(history), history, rng=rng, state=state, step_index=t)
        token = result.draw(rng)
        state = result.next_state(token)
        ids.append(token)
        probs.append(result.prob_of(token))
        if engine.is_eog(token):
            break
    return tuple(ids), tuple(probs)


def test_batched_rollouts_match_sequential_decoding(engine: Engine, context: list[int]) -> None:
    params, seed = SamplerParams(), 3
    # One sequence per batch decodes one token per llama_decode, exactly as the Engine does, so the
    # batched machinery (shared prefix, rewinds between waves, per-sequence seeds, histories and
    # states) must reproduce the sequential loop bit for bit.
    one_at_a_time = run_rollouts(engine, context, params, n=3, length=6, seed=seed, parallel=1)
    for rollout in one_at_a_time.rollouts:
        assert (rollout.ids, rollout.final_probs) == sequential_rollout(engine, context, params, seed,
                                                                        rollout.index, 6)
    # Many sequences per batch: llama.cpp's logits for a many-token batch are not bit-identical to a
    # one-token decode (the kernels depend on the batch size), so later tokens may diverge. What is
    # robust: the first step (drawn from the shared prefix row) is exact, and along each batched
    # rollout the sequential pipeline gives each drawn token nearly the same final probability.
    batched = run_rollouts(engine, context, params, n=6, length=6, seed=seed)
    pipeline = Pipeline(params)
    differences = []
    for rollout in batched.rollouts:
        ids, probs = sequential_rollout(engine, context, params, seed, rollout.index, 1)
        assert (rollout.ids[0], rollout.final_probs[0]) == (ids[0], probs[0])
        for t, token in enumerate(rollout.ids):
            history = [*context, *rollout.ids[:t]]
            result = pipeline.run(engine.evaluate(history), history, rng=rollout_rng(seed, rollout.index, t),
                                  step_index=t)
            differences.append(abs(result.prob_of(token) - rollout.final_probs[t]))
    assert max(differences) < 0.25 and float(np.mean(differences)) < 0.03


def test_chi_square_check_passes_for_the_default_chain(engine: Engine, context: list[int]) -> None:
    result = run_rollouts(engine, context, SamplerParams(), n=300, length=1, seed=11)
    check = result.check
    assert check.n == 300 and result.decoded_tokens == len(context)  # L=1 decodes only the context
    assert sum(row.observed for row in check.rows) + check.rest_observed == 300
    assert sum(row.expected for row in check.rows) + check.rest_expected == pytest.approx(300)
    assert check.dof >= 2 and check.p_value is not None
    assert check.p_value > CHECK_ALPHA and check.passed
    # the first rows are the most likely candidates, with their raw and final probabilities
    assert check.rows[0].predicted >= check.rows[1].predicted > 0
    assert 0 < check.rows[0].raw_prob < 1


def test_chi_square_check_fails_for_a_broken_sampler(
    engine: Engine, context: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    honest_draw = PipelineResult.draw

    def favour_second(self: PipelineResult, rng: np.random.Generator) -> int:
        token = honest_draw(self, rng)
        if self.final_ids.shape[0] > 1 and rng.random() < 0.3:
            return int(self.final_ids[1])
        return token

    monkeypatch.setattr(PipelineResult, "draw", favour_second)
    check = run_rollouts(engine, context, SamplerParams(), n=300, length=1, seed=11).check
    assert check.p_value is not None and check.p_value < 1e-6
    assert not check.passed


def test_end_of_generation_stops_a_sequence(engine: Engine, context: list[int]) -> None:
    params = SamplerParams(logit_bias={engine.eos_id: 14.0})  # <eos> about as likely as the top token
    result = run_rollouts(engine, context, params, n=12, length=6, seed=2)
    assert len(result.rollouts) == 12
    ended = [r for r in result.rollouts if r.eog]
    assert ended and any(len(r.ids) < 6 for r in ended)
    for rollout in result.rollouts:
        assert rollout.eog == engine.is_eog(rollout.ids[-1])
        assert not any(engine.is_eog(t) for t in rollout.ids[:-1])
        assert len(rollout.ids) == 6 or rollout.eog
    assert result.decoded_tokens == len(context) + sum(len(r.ids) - 1 for r in result.rollouts)
    # distinct continuations: counts add up, probabilities are products of the final probabilities
    continuations = result.continuations
    assert sum(c.count for c in continuations) == 12
    assert sum(g.count for g in result.groups) == 12
    for continuation in continuations:
        members = [r for r in result.rollouts if r.ids == continuation.ids]
        assert continuation.count == len(members) and continuation.eog == members[0].eog
        assert continuation.prob == pytest.approx(math.prod(members[0].final_probs))
        assert continuation.logprob == pytest.approx(math.log(continuation.prob))


def test_cancel_returns_partial_results_and_progress_counts_up(engine: Engine, context: list[int]) -> None:
    seen: list[tuple[int, int]] = []
    full = run_rollouts(engine, context, SamplerParams(ban=(engine.eos_id,)), n=4, length=5, seed=5,
                        progress=lambda done, total: seen.append((done, total)))
    assert not full.cancelled and full.tokens == 20
    assert seen[-1] == (20, 20) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    asked = 0

    def cancel_after_three_steps() -> bool:
        nonlocal asked
        asked += 1
        return asked > 3

    partial = run_rollouts(engine, context, SamplerParams(ban=(engine.eos_id,)), n=4, length=5, seed=5,
                           cancel=cancel_after_three_steps)
    assert partial.cancelled
    assert len(partial.rollouts) == 4 and 0 < partial.tokens < 20
    # what was done is what the full run did, up to where it stopped
    for cut, whole in zip(partial.rollouts, full.rollouts):
        assert cut.ids == whole.ids[: len(cut.ids)]
    assert partial.check.n == 4
    nothing = run_rollouts(engine, context, SamplerParams(), n=4, length=5, seed=5, cancel=lambda: True)
    assert nothing.cancelled and nothing.rollouts == () and nothing.check.p_value is None


def test_rollouts_reject_bad_sizes(engine: Engine, context: list[int]) -> None:
    with pytest.raises(EngineError, match="does not fit"):
        run_rollouts(engine, context, SamplerParams(), n=2, length=engine.n_ctx, seed=0)
    with pytest.raises(ValueError, match="at least 1"):
        run_rollouts(engine, context, SamplerParams(), n=0, length=4, seed=0)
    with pytest.raises(EngineError, match="empty"):
        run_rollouts(engine, [], SamplerParams(), n=2, length=4, seed=0)
    # more sequences than fit the context at once run in waves instead of failing (cancelled early:
    # only the plan matters here)
    room = engine.n_ctx - len(context)
    calls = iter(range(10))
    result = run_rollouts(engine, context, SamplerParams(), n=3, length=room // 2 + 2, seed=0,
                          cancel=lambda: next(calls) >= 2)
    assert (result.parallel, result.waves, result.cancelled) == (1, 3, True)


# -- output --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_result(engine: Engine, context: list[int]) -> RolloutResult:
    return run_rollouts(engine, context, SamplerParams(), n=24, length=4, seed=4)


def test_print_rollouts_text(small_result: RolloutResult) -> None:
    buffer = io.StringIO()
    print_rollouts(small_result, Console(file=buffer, width=120, color_system=None), "text")
    text = buffer.getvalue()
    assert "empirical check" in text and "chi-square" in text and "p = " in text
    assert "continuations by first token" in text
    assert f"{len(small_result.rollouts)} rollouts × 4 tokens" in text
    assert f"'{small_result.groups[0].text}'" in text


def test_print_rollouts_jsonl(small_result: RolloutResult) -> None:
    buffer = io.StringIO()
    print_rollouts(small_result, Console(file=buffer), "jsonl", extra={"model": "smol"})
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    *continuations, summary = lines
    assert summary["done"] is True and summary["model"] == "smol"
    assert summary["distinct"] == len(continuations)
    assert sum(c["count"] for c in continuations) == summary["rollouts"] == 24
    assert summary["check"]["p_value"] == small_result.check.p_value
    assert {"text", "ids", "count", "frequency", "prob", "logprob", "eog"} <= set(continuations[0])
    with pytest.raises(ValueError, match="output format"):
        print_rollouts(small_result, Console(file=io.StringIO()), "xml")


@pytest.mark.parametrize("width", [74, 94, 120])  # the lab's dialog at 100 and 150 columns, and a terminal
def test_the_check_table_keeps_every_number_whole_at_the_labs_widths(small_result: RolloutResult, width: int) -> None:
    from tokenlab.render import FittedCheckTable

    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None).print(FittedCheckTable(small_result.check))
    text = buffer.getvalue()
    assert "…" not in text, text  # no header or probability cut short
    assert max(len(line) for line in text.splitlines()) <= width
    row = small_result.check.rows[0]
    full = "residual" in text  # the full table, or the compact one ("resid.") where it does not fit
    assert full or "resid." in text
    if width != 94:  # 94 columns hold the full table for short tokens only
        assert full == (width == 120)
    assert f"{row.predicted:.{4 if full else 3}f}" in text and f"'{row.text}'" in text
