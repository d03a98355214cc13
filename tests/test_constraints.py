"""Hard constraints: the grammar stage, llama.cpp's grammar sampler behind it, regex and JSON schema grammars.

The differential test drives llama.cpp's own grammar sampler by hand (a `llama_token_data_array` of the
real logits, `llama_sampler_apply`, `llama_sampler_accept`) next to tokenlab's pipeline over several
steps of a real generation and compares the survivors.
"""

from __future__ import annotations

import ctypes
import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tokenlab.engine import Engine
from tokenlab.engine.grammar import GrammarConstraint, GrammarError, regex_to_gbnf
from tokenlab.lab import Generation
from tokenlab.lab.session import Session, step_from_json, step_to_json
from tokenlab.sampling import Pipeline, SamplerParams
from tokenlab.sampling.constraint import AllowedTokens
from test_sampling_properties import logits_rows
from test_sampling_properties import sampler_params as random_params

llama_cpp = pytest.importorskip("llama_cpp")

TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])

DIGITS_GBNF = 'root ::= [0-9] [0-9] [0-9] ("." [0-9] [0-9])?\n'
"""A small grammar with a choice in it: three digits, then optionally a dot and two more."""

PERMISSIVE = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "temperature": 1.0}


# -- the stage on hand-made rows ----------------------------------------------------------------------


def test_grammar_stage_keeps_exactly_the_allowed_tokens_and_says_who_removed_the_rest() -> None:
    logits = np.array([3.0, 2.0, 1.0, 0.0, -1.0], dtype=np.float32)
    original = logits.copy()
    params = SamplerParams(grammar='root ::= "x"', **PERMISSIVE)
    result = Pipeline(params).run(logits, constraint=AllowedTokens([1, 3], n_vocab=5))
    np.testing.assert_array_equal(logits, original)  # never mutated
    assert [report.name for report in result.stages] == ["grammar"]
    assert result.stages[0].n_kept == 2
    probs = result.dense_probs()
    expected = np.exp([2.0, 0.0]) / np.exp([2.0, 0.0]).sum()
    np.testing.assert_allclose(probs[[1, 3]], expected)
    assert probs[[0, 2, 4]].tolist() == [0.0, 0.0, 0.0]
    assert result.removed_by_many([0, 1, 2, 3, 4]) == ["grammar", None, "grammar", None, "grammar"]


def test_grammar_runs_before_the_ordered_stages_so_top_k_keeps_allowed_tokens() -> None:
    logits = np.arange(10, dtype=np.float32)[::-1].copy()  # token 0 most likely
    params = SamplerParams(grammar='root ::= "x"', top_k=2, top_p=1.0, min_p=0.0)
    result = Pipeline(params).run(logits, constraint=AllowedTokens([5, 7, 9], n_vocab=10))
    assert sorted(result.final_ids.tolist()) == [5, 7]
    assert result.removed_by(9) == "top_k"
    assert result.removed_by(0) == "grammar"


def test_uniform_fallback_respects_the_grammar() -> None:
    logits = np.full(6, -np.inf, dtype=np.float32)
    params = SamplerParams(grammar='root ::= "x"', ban=(2,))
    result = Pipeline(params).run(logits, constraint=AllowedTokens([2, 4, 5], n_vocab=6))
    assert result.uniform_fallback
    assert sorted(result.final_ids.tolist()) == [4, 5]
    assert result.removed_by(2) == "ban"
    assert result.removed_by(0) == "grammar"


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_grammar_stage_properties_finite_normalised_within_the_mask_no_mutation(data: st.DataObject) -> None:
    logits = data.draw(logits_rows())
    n_vocab = logits.shape[0]
    mask = data.draw(hnp.arrays(bool, n_vocab))
    params = data.draw(random_params(n_vocab)).replace(grammar='root ::= "x"')
    original = logits.copy()
    result = Pipeline(params).run(logits, list(range(min(n_vocab, 8))), constraint=AllowedTokens(mask))
    probs = result.dense_probs()
    np.testing.assert_array_equal(logits.view(np.uint8), original.view(np.uint8))  # untouched, NaNs too
    assert np.isfinite(probs).all() and math.isclose(probs.sum(), 1.0, rel_tol=1e-9)
    if mask.any():
        assert not probs[~mask].any()  # the constraint holds whatever else the row and the knobs do


def test_a_grammar_without_a_constraint_object_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="constraint object"):
        Pipeline(SamplerParams(regex="[0-9]+")).run(np.zeros(4, dtype=np.float32))


def test_params_hold_one_constraint_and_round_trip() -> None:
    params = SamplerParams(json_schema='{"type": "object"}')
    assert SamplerParams.from_dict(params.to_dict()) == params
    with pytest.raises(ValueError, match="only one constraint"):
        SamplerParams(grammar='root ::= "a"', regex="a")
    with pytest.raises(ValueError, match="regex is empty"):
        SamplerParams(regex="  ")


# -- regex to GBNF ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern, problem", [
    ("(?i)abc", "inline flag"),
    ("a(?=b)", "lookahead"),
    (r"(a)\1", "back-reference"),
    ("a\\bb", "anchor or word boundary"),
    ("(", "not a valid regular expression"),
])
def test_regex_outside_the_grammar_subset_is_one_clear_line(pattern: str, problem: str) -> None:
    with pytest.raises(GrammarError, match=re.escape(problem)) as caught:
        regex_to_gbnf(pattern)
    assert "\n" not in str(caught.value)


def test_regex_grammar_accepts_exactly_the_regex_language(engine: Engine) -> None:
    """Walk single-character tokens through the grammar and compare with Python's re.fullmatch."""
    pattern = r"(ab|c)[0-9]{2,3}\.?x*"
    grammar = GrammarConstraint(engine, "regex", pattern)
    alphabet = "abc0123.x9-"
    ids = {char: engine.find_token(char) for char in alphabet}
    # every string up to length 6 over the alphabet that is a prefix of a match must be walkable
    rng = np.random.default_rng(0)
    for _ in range(300):
        text = "".join(rng.choice(list(alphabet), size=int(rng.integers(1, 8))))
        accepted = ""
        for char in text:
            if not grammar.at([ids[c] for c in accepted]).allows(ids[char]):
                break
            accepted += char
        complete = grammar.at([ids[c] for c in accepted]).allows(engine.eos_id)
        assert complete == bool(re.fullmatch(pattern, accepted)), accepted
        if accepted == text:
            continue
        # the rejected character cannot extend any match: no string with this prefix matches
        assert not any(re.fullmatch(pattern, accepted + text[len(accepted)] + tail)
                       for tail in ("", "0", "00", "000", "0x", ".", ".x"))
    grammar.close()


# -- llama.cpp's own grammar sampler, differential ------------------------------------------------------


def _reference_survivors(sampler: object, logits: np.ndarray) -> set[int]:
    data = np.zeros(logits.shape[0], dtype=TOKEN_DATA)
    data["id"] = np.arange(logits.shape[0], dtype=np.int32)
    data["logit"] = logits
    array = llama_cpp.llama_token_data_array(
        data=data.ctypes.data_as(llama_cpp.llama_token_data_p), size=data.shape[0], selected=-1, sorted=False)
    llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
    return set(np.flatnonzero(data["logit"] > -np.inf).tolist())


def test_grammar_stage_matches_llama_cpp_grammar_sampler_over_several_steps(engine: Engine) -> None:
    reference = llama_cpp.llama_sampler_init_grammar(engine.vocab, DIGITS_GBNF.encode(), b"root")
    assert reference
    prompt = engine.format_prompt("Write a number.")
    params = SamplerParams(grammar=DIGITS_GBNF, **PERMISSIVE)
    generation = Generation(engine, prompt, params, seed=11, max_tokens=12)
    compared = 0
    try:
        while not generation.done:
            frontier = generation.frontier()
            ours = set(frontier.result.stages[0].kept_ids.tolist()) \
                if frontier.result.stages[0].kept_ids is not None \
                else set(np.flatnonzero(frontier.result.stages[0].logits > -np.inf).tolist())
            theirs = _reference_survivors(reference, frontier.logits)
            assert frontier.result.stages[0].name == "grammar"
            assert ours == theirs and ours, f"step {len(generation.steps)}"
            assert set(frontier.result.final_ids.tolist()) == theirs  # nothing else cuts here
            step = generation.step()
            assert step is not None
            assert step.allowed == len(theirs)
            llama_cpp.llama_sampler_accept(reference, step.id)
            compared += 1
    finally:
        llama_cpp.llama_sampler_free(reference)
    assert compared >= 4  # three digits and the end, at least
    assert re.fullmatch(r"[0-9]{3}(\.[0-9]{2})?", generation.text)
    assert generation.stop_reason == "eos"


@pytest.mark.parametrize("kind, text", [
    ("json_schema", '{"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}'),
    ("grammar", 'root ::= "é" [à-ü]+ "日本"?\n'),  # characters of two and three UTF-8 bytes
    ("regex", r"\w+ [0-9]"),  # a loose one: a third of the vocabulary allowed
])
def test_step_masks_equal_llama_cpp_over_the_whole_vocabulary(engine: Engine, kind: str, text: str) -> None:
    """The mask (which skips tokens whose first byte the grammar rejects) equals llama.cpp's full pass."""
    grammar = GrammarConstraint(engine, kind, text)
    reference = llama_cpp.llama_sampler_init_grammar(engine.vocab, grammar.gbnf.encode(), b"root")
    rng = np.random.default_rng(1)
    prefix: list[int] = []
    try:
        for _ in range(10):
            mask = grammar.at(prefix).allowed(engine.n_vocab)
            theirs = _reference_survivors(reference, np.zeros(engine.n_vocab, dtype=np.float32))
            assert set(np.flatnonzero(mask).tolist()) == theirs, engine.detokenize(prefix)
            choices = [i for i in theirs if not engine.is_eog(i)]
            if not choices:
                break
            token_id = int(rng.choice(choices))
            prefix.append(token_id)
            llama_cpp.llama_sampler_accept(reference, token_id)
    finally:
        llama_cpp.llama_sampler_free(reference)
        grammar.close()
    assert len(prefix) >= 3


# -- the state follows the path ------------------------------------------------------------------------


def test_grammar_state_is_replayed_after_a_branch_and_a_load(engine: Engine) -> None:
    prompt = engine.format_prompt("Answer yes or no.")
    params = SamplerParams(grammar='root ::= "yes" | "no" | "maybe"', temperature=0.0)
    generation = Generation(engine, prompt, params, seed=1, max_tokens=8)
    steps = list(generation.run())
    assert generation.text in ("yes", "no", "maybe")
    first = steps[0]
    # greedy: the other tokens the grammar allows were removed by temperature, not by the grammar
    other = next((c.id for c in first.top if c.removed_by != "grammar" and c.id != first.id), None)
    assert other is not None, "the grammar lets more than one first token through"
    generation.choose(0, other)
    list(generation.run())
    assert generation.text in ("yes", "no", "maybe")
    assert generation.text != "".join(step.text for step in steps)
    # a token the grammar rejects cannot be forced, and nothing is dropped when it is refused
    before = generation.generated_ids
    rejected = next(c.id for c in first.top if c.removed_by == "grammar")
    with pytest.raises(ValueError, match="does not allow"):
        generation.choose(0, rejected)
    assert generation.generated_ids == before
    # load the first branch back: the grammar replays its tokens and allows exactly its continuation
    generation.load(steps[:1])
    frontier = generation.frontier()
    assert frontier.result.final_ids.shape[0] >= 1
    for token_id in frontier.result.final_ids.tolist():
        piece = engine.piece(token_id).decode("utf-8", errors="replace")
        assert any(word.startswith(steps[0].text + piece) for word in ("yes", "no", "maybe")) \
            or engine.is_eog(token_id)


def test_constraint_travels_in_sessions(engine: Engine) -> None:
    params = SamplerParams(regex="[0-9]{3}", temperature=0.0)
    generation = Generation(engine, engine.format_prompt("A number:"), params, seed=0, max_tokens=6)
    steps = list(generation.run())
    session = Session(prompt="A number:", params=params)
    loaded = Session.from_json(json.loads(json.dumps(session.to_json())))
    assert loaded.params.regex == "[0-9]{3}"
    assert [step_from_json(step_to_json(step)).allowed for step in steps] == [step.allowed for step in steps]
    assert all(step.allowed is not None for step in steps)


def test_rollouts_refuse_a_constraint_with_one_line(engine: Engine) -> None:
    from tokenlab.lab.rollouts import run_rollouts

    with pytest.raises(ValueError, match="rollouts do not support") as caught:
        run_rollouts(engine, engine.tokenize("Hi"), SamplerParams(regex="a+"), n=2, length=2, seed=0)
    assert "\n" not in str(caught.value)


# -- the lab --------------------------------------------------------------------------------------------


async def test_lab_marks_a_step_the_grammar_forced(engine: Engine) -> None:
    from tokenlab.lab.controller import LabSettings
    from tokenlab.tui.app import TokenLabApp
    from tokenlab.tui.widgets import CandidatesTable, TokenView
    from tui_helpers import wait_for

    params = SamplerParams(regex="[0-9]{3}-[0-9]{2}")
    app = TokenLabApp(engine, LabSettings(prompt="Call me at", chat=False, seed=5, max_tokens=20,
                                          autostart=True, params=params))
    try:
        async with app.run_test(size=(100, 32)) as pilot:
            lab = app.lab
            await wait_for(pilot, lambda: lab.stop_reason is not None and not lab.running)
            text = "".join(step.text for step in lab.steps)
            assert re.fullmatch("[0-9]{3}-[0-9]{2}", text), text
            forced = [step.index for step in lab.steps if step.allowed == 1]
            dash = text.index("-")
            assert dash in forced  # after three digits only '-' may come
            await pilot.press("home")
            for _ in range(dash):
                await pilot.press("right")
            _, chosen, _ = lab.inspected()
            assert chosen == lab.steps[dash].id
            table = lab.query_one(CandidatesTable)
            assert "dice: none, forced by the grammar" in table.render().plain  # type: ignore[union-attr]
            view = lab.query_one(TokenView)
            await pilot.press("end")
            await pilot.pause()
            italic = {segment.text for line in view._lines for segment in line if segment.style.italic}
            assert "-" in italic
            assert not any(ch.isdigit() for ch in "".join(italic))  # the digits were the model's choice
            await pilot.press("R")  # rollouts refuse a constraint in one line; the lab goes on
            await wait_for(pilot, lambda: any("rollouts do not support" in str(n.message)
                                              for n in app._notifications))
            assert "".join(step.text for step in lab.steps) == text
    finally:
        assert app.controller.stopped.wait(5)


async def test_lab_reports_a_grammar_that_does_not_parse(engine: Engine) -> None:
    from tokenlab.lab.controller import LabSettings
    from tokenlab.tui.app import TokenLabApp
    from tui_helpers import wait_for

    app = TokenLabApp(engine, LabSettings(prompt="Hi", chat=False, seed=5, max_tokens=5, autostart=True,
                                          params=SamplerParams(grammar="root ::= [0-9\n")))
    try:
        async with app.run_test(size=(100, 32)) as pilot:
            await wait_for(pilot, lambda: any("does not parse" in str(n.message) for n in app._notifications))
            assert app.lab.steps == [] and app.is_running
    finally:
        assert app.controller.stopped.wait(5)


# -- the command line ---------------------------------------------------------------------------------


def test_generate_with_a_grammar_file_follows_it(model_path, tmp_path) -> None:
    from test_cli import tokenlab

    grammar = tmp_path / "answer.gbnf"
    grammar.write_text('root ::= ("yes" | "no") "." \n', encoding="utf-8")
    for seed in ("1", "2"):
        result = tokenlab("generate", "Is the sky blue?", "--grammar", str(grammar), "--seed", seed,
                          "--temperature", "1.5", "-n", "20")
        assert result.returncode == 0, result.stderr
        assert result.stdout.rstrip("\n") in ("yes.", "no."), result.stdout
        assert "stop: eos" in result.stderr


def test_generate_with_a_regex_matches_it_and_jsonl_marks_forced_steps(model_path) -> None:
    from test_cli import tokenlab

    pattern = "[0-9]{3}-[0-9]{4}"
    result = tokenlab("generate", "Give me a phone number.", "--regex", pattern, "--seed", "4", "-n", "20")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(pattern, result.stdout.rstrip("\n")), result.stdout
    result = tokenlab("generate", "Give me a phone number.", "--regex", pattern, "--seed", "4", "-n", "20",
                      "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    steps, summary = records[:-1], records[-1]
    assert re.fullmatch(pattern, summary["text"])
    dash = next(step for step in steps if step["text"] == "-")
    assert dash["allowed"] == 1  # after three digits the grammar allows '-' only
    removed = {c["removed_by"] for step in steps for c in step["top"] if c["removed_by"]}
    assert "grammar" in removed


def test_generate_with_a_json_schema_gives_an_instance(model_path, tmp_path) -> None:
    from test_cli import tokenlab

    # a bounded string: the object must close within -n tokens on any machine's numerics
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                               "population": {"type": "integer"},
                                               "capital": {"type": "boolean"}},
              "required": ["city", "population", "capital"]}
    path = tmp_path / "city.json"
    path.write_text(json.dumps(schema), encoding="utf-8")
    result = tokenlab("generate", "Describe a city as JSON.", "--json-schema", str(path), "--seed", "3", "-n", "120")
    assert result.returncode == 0, result.stderr
    assert "stop: eos" in result.stderr  # the object was closed, not cut off
    value = json.loads(result.stdout)
    assert set(value) >= {"city", "population", "capital"}
    assert isinstance(value["city"], str)
    assert isinstance(value["population"], int) and not isinstance(value["population"], bool)
    assert isinstance(value["capital"], bool)


@pytest.mark.parametrize("flag, content, fragments", [
    ("--grammar", 'root ::= [0-9\n', ("--grammar", "does not parse", "unexpected end of input")),
    ("--grammar", 'answer ::= "yes"\n', ("--grammar", "no 'root' rule")),
    ("--grammar", 'root ::= "a" next\n', ("--grammar", "Undefined rule identifier 'next'")),
    ("--grammar", None, ("--grammar", "No such file")),
    ("--regex", "(ab", ("--regex", "not a valid regular expression")),
    ("--regex", "a(?!b)", ("--regex", "cannot be expressed as a grammar")),
    ("--json-schema", "{not json", ("--json-schema", "not valid JSON")),
    ("--json-schema", '{"type": "integr"}', ("--json-schema", "cannot be turned into a grammar")),
])
def test_a_bad_constraint_is_one_line_and_exit_2(model_path, tmp_path, flag, content, fragments) -> None:
    from test_cli import assert_one_line_error, tokenlab

    if flag == "--regex":
        value = content
    else:
        path = tmp_path / "constraint.txt"
        if content is not None:
            path.write_text(content, encoding="utf-8")
        value = str(path)
    assert_one_line_error(tokenlab("generate", "Hi", flag, value, "-n", "3"), *fragments)


def test_two_constraints_and_rollouts_with_one_are_refused(model_path) -> None:
    from test_cli import assert_one_line_error, tokenlab

    assert_one_line_error(tokenlab("generate", "Hi", "--regex", "a", "--grammar", "g.gbnf"), "--grammar and --regex")
    assert_one_line_error(tokenlab("rollouts", "Hi", "--regex", "a+"), "rollouts do not support")
    assert_one_line_error(tokenlab("compare", "Hi", "--regex", "a+", "--b", "temperature=1.5"),
                          "compare does not support")


def test_presets_keep_knobs_not_constraints(tmp_path) -> None:
    from tokenlab.presets import load_preset, save_preset

    path = tmp_path / "presets.toml"
    save_preset("mine", SamplerParams(temperature=1.3, regex="[0-9]+"), path)
    loaded = load_preset("mine", path)
    assert loaded.temperature == 1.3 and loaded.regex is None
    assert "[0-9]" not in path.read_text(encoding="utf-8")


def test_a_session_whose_grammar_does_not_parse_is_refused_before_the_lab_opens(model_path, tmp_path) -> None:
    from test_cli import assert_one_line_error, tokenlab

    from tokenlab.lab.session import save

    path = tmp_path / "session.json"
    save(Session(prompt="Hi", params=SamplerParams(grammar="root ::= root \"a\"\n")), path)
    assert_one_line_error(tokenlab("lab", "--load", str(path)), "--grammar", "left-recursive")
