"""The generation loop on the real default model: records, seeds, branching, stops, live re-sampling."""

from __future__ import annotations

import llama_cpp
import numpy as np
import pytest

from tokenlab.engine import Engine, EngineOptions
from tokenlab.lab import STOP_CONTEXT_FULL, STOP_EOS, STOP_MAX_TOKENS, Generation
from tokenlab.sampling import SamplerParams

PROMPT = "The capital of France is"


def raw_tokens(engine: Engine) -> list[int]:
    return engine.format_prompt(PROMPT, chat=False)


def test_same_seed_same_tokens_and_different_seeds_differ(engine: Engine) -> None:
    params = SamplerParams(temperature=1.0)
    runs = {}
    for seed in (1, 1, 2, 3, 4):
        generation = Generation(engine, raw_tokens(engine), params, seed=seed, max_tokens=12)
        ids = [step.id for step in generation.run()]
        if seed in runs:
            assert ids == runs[seed]
        runs[seed] = ids
    assert len({tuple(ids) for ids in runs.values()}) > 1


def test_greedy_equals_llama_cpp_python_greedy_completion(engine: Engine, model_path) -> None:
    generation = Generation(engine, raw_tokens(engine), SamplerParams(temperature=0), seed=0, max_tokens=40)
    ours = [step.id for step in generation.run()]
    reference = llama_cpp.Llama(model_path=str(model_path), n_ctx=1024, verbose=False)
    try:
        completion = reference.create_completion(PROMPT, max_tokens=40, temperature=0)
        theirs = []
        for token in reference.generate(raw_tokens(engine), temp=0):
            if reference._model.token_eos() == token or len(theirs) == 40:
                break
            theirs.append(int(token))
    finally:
        reference.close()
    assert ours == theirs
    assert generation.text == completion["choices"][0]["text"]


def test_step_record_matches_the_logits(engine: Engine) -> None:
    generation = Generation(
        engine, raw_tokens(engine), SamplerParams(top_k=3, samplers=("top_k", "temperature")), seed=5, max_tokens=1
    )
    logits = generation.frontier().logits.astype(np.float64)
    step = generation.step()
    assert step is not None
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    assert step.prob == pytest.approx(probs[step.id], rel=2e-6)  # float32 weights, as llama.cpp's softmax
    assert step.rank == int((logits > logits[step.id]).sum()) + 1
    nonzero = probs[probs > 0]
    assert step.entropy == pytest.approx(float(-(nonzero * np.log2(nonzero)).sum()), rel=1e-6)
    assert len(step.top) == 20
    assert [c.id for c in step.top[:3]] == [int(i) for i in np.argsort(-logits)[:3]]
    assert [c.prob for c in step.top] == sorted((c.prob for c in step.top), reverse=True)
    assert all(c.removed_by is None for c in step.top[:3])
    assert all(c.removed_by == "top_k" and c.final_prob == 0.0 for c in step.top[3:])
    assert sum(c.final_prob for c in step.top[:3]) == pytest.approx(1.0)
    assert step.id in [c.id for c in step.top[:3]]


def test_choosing_a_candidate_reuses_the_prefix(fresh_engine: Engine) -> None:
    generation = Generation(fresh_engine, raw_tokens(fresh_engine), SamplerParams(), seed=3, max_tokens=8)
    steps = list(generation.run())
    assert len(steps) == 8 and generation.stop_reason == STOP_MAX_TOKENS
    before = fresh_engine.decoded_tokens
    alternative = next(c.id for c in steps[3].top if c.id != steps[3].id)
    chosen = generation.choose(3, alternative)
    assert chosen.forced and chosen.id == alternative and chosen.index == 3
    assert [s.id for s in generation.steps[:3]] == [s.id for s in steps[:3]]
    generation.step()
    # one token re-decoded for the logits at step 3, then the forced token: the prompt is not re-read
    assert fresh_engine.decoded_tokens - before == 2
    assert len(generation.steps) == 5


def test_regenerate_reuses_the_prompt_and_repeats_with_the_same_seed(fresh_engine: Engine) -> None:
    params = SamplerParams(ban=(fresh_engine.eos_id,))
    generation = Generation(fresh_engine, raw_tokens(fresh_engine), params, seed=11, max_tokens=6)
    first = [s.id for s in generation.run()]
    before = fresh_engine.decoded_tokens
    generation.regenerate()
    again = [s.id for s in generation.run()]
    assert again == first
    assert fresh_engine.decoded_tokens - before == 6  # 1 re-decoded prompt token + 5 new tokens (the 6th is not decoded)


def test_stop_on_eos(engine: Engine) -> None:
    params = SamplerParams(logit_bias={engine.eos_id: 100.0})
    generation = Generation(engine, engine.format_prompt("Hi"), params, seed=0, max_tokens=10)
    steps = list(generation.run())
    assert generation.stop_reason == STOP_EOS
    assert len(steps) == 1 and steps[0].eog and steps[0].text == ""


def test_stop_on_full_context(model_path) -> None:
    small = Engine(model_path, EngineOptions(n_ctx=24))
    try:
        prompt = small.format_prompt("one two three four five six seven eight nine ten", chat=False)
        generation = Generation(small, prompt, SamplerParams(ban=(small.eos_id,)), seed=0, max_tokens=100)
        steps = list(generation.run())
        assert generation.stop_reason == STOP_CONTEXT_FULL
        assert len(prompt) + len(steps) == 24
    finally:
        small.close()


def test_split_utf8_tokens_show_no_broken_character(engine: Engine) -> None:
    generation = Generation(engine, raw_tokens(engine), SamplerParams(), seed=0, max_tokens=10)
    ids = engine.tokenize(" 🦙!", add_bos=False)
    texts = [generation.force(token_id).text for token_id in ids]
    assert "".join(texts) == " 🦙!"
    assert all("\ufffd" not in text for text in texts)
    assert "" in texts  # some token ended in the middle of the emoji and showed nothing yet


def test_turning_a_knob_resamples_the_frontier_without_a_model_call(engine: Engine) -> None:
    generation = Generation(engine, raw_tokens(engine), SamplerParams(), seed=0, max_tokens=5)
    first = generation.frontier().result
    before = engine.decoded_tokens
    greedy = generation.set_params(SamplerParams(temperature=0))
    assert engine.decoded_tokens == before
    assert greedy is not None and greedy.final_ids.shape[0] == 1
    assert first.final_ids.shape[0] > 1
    step = generation.step()
    assert step is not None and step.final_prob == 1.0 and step.rank == 1


def test_mirostat_state_flows_through_steps_and_rewinds(engine: Engine) -> None:
    params = SamplerParams.from_preset("mirostat")
    generation = Generation(engine, raw_tokens(engine), params, seed=2, max_tokens=6)
    steps = list(generation.run())
    mus = [step.sampler_state["mirostat_mu"] for step in steps]
    assert len(set(mus)) > 1  # mu moves with each token's surprise
    generation.rewind(3)
    frontier = generation.frontier()
    assert frontier.state == steps[2].sampler_state and frontier.step_index == 3
    again = generation.step()
    assert again is not None and again.id == steps[3].id  # same state, same stream: the same token


def test_temperature_schedule_follows_the_step_index(engine: Engine) -> None:
    params = SamplerParams(temperature=1.0, temperature_end=0.2, temperature_steps=4)
    generation = Generation(engine, raw_tokens(engine), params, seed=2, max_tokens=6)
    temperatures = []
    for _ in range(6):
        report = next(r for r in generation.frontier().result.stages if r.name == "temperature")
        temperatures.append(report.params["effective_temperature"])
        generation.step()
    assert temperatures[0] == pytest.approx(1.0) and temperatures[4] == pytest.approx(0.2)
    assert temperatures == sorted(temperatures, reverse=True) and temperatures[5] == pytest.approx(0.2)


def test_each_drawn_step_records_where_its_dice_fell(engine: Engine) -> None:
    """u lies in the drawn token's slice of the cumulative final distribution (most likely token first)."""
    params = SamplerParams(top_k=0, top_p=1.0, min_p=0.0, temperature=1.2, ban=(engine.eos_id,))
    generation = Generation(engine, raw_tokens(engine), params, seed=11, max_tokens=12)
    rolled = 0
    for step in generation.run():
        if step.final_prob >= 1.0:
            assert step.dice is None
            continue
        assert step.dice is not None
        u, before = step.dice
        assert 0.0 <= u < 1.0 and 0.0 <= before < 1.0
        assert before - 1e-9 <= u < before + step.final_prob + 1e-9
        rolled += 1
    assert rolled >= 10
    # the draw itself did not change: the same seed gives the same tokens as before the dice were kept
    again = Generation(engine, raw_tokens(engine), params, seed=11, max_tokens=12)
    assert [s.id for s in again.run()] == [s.id for s in generation.steps]
    forced = generation.choose(3, generation.steps[3].top[1].id)
    assert forced.forced and forced.dice is None


@pytest.fixture(scope="module")
def overlapped_engine(model_path):
    """The default model with background decodes on (one thread, so a core is left for the records)."""
    loaded = Engine(model_path, EngineOptions(n_ctx=512, n_threads=1, overlap=True))
    yield loaded
    loaded.close()


def test_overlapped_decoding_records_the_same_run(overlapped_engine: Engine, model_path) -> None:
    # the next token decodes in a background thread while the step is recorded: same steps, no extra decode
    serial = Engine(model_path, EngineOptions(n_ctx=512, n_threads=1, overlap=False))
    try:
        runs = {}
        for engine in (overlapped_engine, serial):
            engine.reset()
            before = engine.decoded_tokens
            generation = Generation(engine, raw_tokens(engine), SamplerParams(temperature=1.0), seed=4, max_tokens=24)
            steps = list(generation.run())
            runs[engine.overlap] = (steps, engine.decoded_tokens - before, list(engine.tokens))
    finally:
        serial.close()
    (ours, decoded, cached), (theirs, decoded_serial, cached_serial) = runs[True], runs[False]
    assert [s.id for s in ours] == [s.id for s in theirs] and len(ours) == 24
    assert [s.top for s in ours] == [s.top for s in theirs]  # every candidate, probability and remover
    assert [(s.prob, s.rank, s.entropy, s.dice) for s in ours] == [(s.prob, s.rank, s.entropy, s.dice) for s in theirs]
    assert decoded == decoded_serial  # the prefetched logits were used, not decoded again
    assert cached == cached_serial


def test_overlapped_decoding_survives_a_branch_and_a_rewind(overlapped_engine: Engine) -> None:
    engine = overlapped_engine
    engine.reset()
    prompt = raw_tokens(engine)
    generation = Generation(engine, prompt, SamplerParams(temperature=1.0), seed=2, max_tokens=12)
    first = [generation.step() for _ in range(6)]
    assert engine._pending is not None  # the 7th token is decoding while we look
    alternative = first[3].top[1].id if first[3].top[0].id == first[3].id else first[3].top[0].id
    generation.choose(3, alternative)  # back to step 3, under a decode that is still running
    rest = list(generation.run())
    assert [s.id for s in generation.steps[:4]] == [s.id for s in first[:3]] + [alternative]
    assert len(generation.steps) == 12 and rest
    assert engine.tokens == [*prompt, *(s.id for s in generation.steps[:-1])]
    # the logits it recorded at the end are the ones a fresh decode of that context gives
    context = [*prompt, *(s.id for s in generation.steps[:-1])]
    expected = engine.evaluate(context)
    assert generation.steps[-1].logit == float(expected[generation.steps[-1].id])


def test_a_steps_json_line_is_its_json_object(engine: Engine) -> None:
    import json

    generation = Generation(engine, raw_tokens(engine), SamplerParams(temperature=1.0), seed=3, max_tokens=4)
    for step in generation.run():
        line = step.to_json_line()
        assert "\n" not in line
        assert line == json.dumps(step.to_json(), ensure_ascii=False)
        assert json.loads(line)["id"] == step.id


def test_a_decode_left_running_at_exit_is_waited_for(overlapped_engine: Engine) -> None:
    from tokenlab.engine.llama import _settle_at_exit
    import weakref

    engine = overlapped_engine
    engine.reset()
    prompt = raw_tokens(engine)
    logits = engine.evaluate(prompt)
    assert engine.prefetch([*prompt, int(np.argmax(logits))])
    job = engine._pending[1]
    engine._pending = None  # as a ^C between queueing the decode and noting it would leave things
    _settle_at_exit(weakref.ref(engine))  # what the interpreter runs at exit
    assert job.done.is_set()
