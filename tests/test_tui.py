"""The lab TUI driven with Pilot against the real default model."""

from __future__ import annotations

import pytest
from textual.widgets import Input, OptionList, TextArea

from tokenlab.engine import Engine, EngineError, EngineOptions
from tokenlab.lab.controller import LabSettings
from tokenlab.lab.knobs import KNOBS
from tokenlab.sampling import SamplerParams
from tokenlab.tui.app import TokenLabApp
from tokenlab.tui.screens.dialogs import HelpScreen, HistoryScreen, LineInput, PromptEditor, TreeScreen
from tokenlab.tui.screens.lab import LabScreen
from tokenlab.tui.widgets import CandidatesTable, TokenView
from tui_helpers import wait_for

PROMPT = "The capital of France is"
SIZE = (100, 32)


def make_app(engine: Engine, **settings: object) -> TokenLabApp:
    defaults: dict[str, object] = {
        "prompt": PROMPT, "chat": False, "seed": 7, "max_tokens": 24, "autostart": False,
        "params": SamplerParams(ban=(engine.eos_id,)),
    }
    defaults.update(settings)
    return TokenLabApp(engine, LabSettings(**defaults))  # type: ignore[arg-type]


@pytest.fixture
def finished_engine(engine: Engine):
    """The shared engine; after each test, wait until the app's controller thread has let go of it."""
    apps: list[TokenLabApp] = []
    yield engine, apps
    for app in apps:
        assert app.controller.stopped.wait(5), "the controller thread did not stop"


async def test_opens_paused_at_the_live_frontier(finished_engine) -> None:
    engine, apps = finished_engine
    app = make_app(engine)
    apps.append(app)
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        assert not lab.running and lab.steps == []
        candidates, chosen, title = lab.inspected()
        assert title.startswith("next step 0") and chosen is None
        assert candidates[0].text == " Paris"
        table_text = str(app.lab.query_one(CandidatesTable).render())
        assert table_text  # rendered something


async def test_step_pause_and_resume(finished_engine) -> None:
    engine, apps = finished_engine
    app = make_app(engine, max_tokens=150)  # long enough to pause midway, short enough for a busy machine
    apps.append(app)
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        await pilot.press("n")
        await wait_for(pilot, lambda: len(lab.steps) == 1 and lab.frontier is not None and lab.frontier.index == 1)
        await pilot.press("n")
        await wait_for(pilot, lambda: len(lab.steps) == 2)
        assert lab.steps[0].text == " Paris"
        assert " Paris" in lab.query_one(TokenView).plain_text()

        await pilot.press("space")
        await wait_for(pilot, lambda: lab.running)
        await pilot.press("space")
        await wait_for(pilot, lambda: not lab.running and lab.frontier is not None)
        paused_at = len(lab.steps)
        await pilot.pause(0.2)
        assert len(lab.steps) == paused_at < 150  # nothing is generated while paused

        await pilot.press("space")
        await wait_for(pilot, lambda: lab.stop_reason == "max_tokens")
        assert len(lab.steps) == 150
        assert [s.index for s in lab.steps] == list(range(150))


async def test_cursor_inspects_past_steps(finished_engine) -> None:
    engine, apps = finished_engine
    app = make_app(engine, max_tokens=6, autostart=True)
    apps.append(app)
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.stop_reason == "max_tokens" and lab.frontier is not None)
        assert lab.effective_cursor() == 6  # the live frontier after the last step
        await pilot.press("left", "left")
        assert lab.effective_cursor() == 4
        candidates, chosen, title = lab.inspected()
        assert chosen == lab.steps[4].id and title.startswith("step 4")
        assert [c.id for c in candidates] == [c.id for c in lab.steps[4].top]
        await pilot.press("home")
        assert lab.effective_cursor() == 0
        await pilot.press("end")
        assert lab.effective_cursor() == 6


async def test_turning_a_knob_resamples_the_frontier_live(finished_engine) -> None:
    engine, apps = finished_engine
    app = make_app(engine)
    apps.append(app)
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        before = lab.frontier
        assert before is not None and before.survivors > 1
        decoded = engine.decoded_tokens
        await pilot.press("k", "o")  # select top-k... and switch the stage off
        await wait_for(pilot, lambda: lab.frontier is not None and "top_k" not in lab.frontier.params.samplers)
        await pilot.press("o", "t", *["minus"] * 16)  # top-k back on; temperature 0.8 -> 0.0 (greedy)
        await wait_for(pilot, lambda: lab.frontier is not None and lab.frontier.params.temperature == 0.0)
        assert lab.params.temperature == 0.0 and "top_k" in lab.params.samplers
        assert lab.frontier.survivors == 1
        assert lab.frontier.candidates[0].final_prob == 1.0
        assert engine.decoded_tokens == decoded  # re-sampled from the retained logits: no model call
        await pilot.press("0")  # reset temperature
        await wait_for(pilot, lambda: lab.frontier is not None and lab.frontier.params.temperature == 0.8)


async def test_choosing_a_candidate_branches_and_continues(finished_engine) -> None:
    engine, apps = finished_engine
    app = make_app(engine, max_tokens=8)
    apps.append(app)
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        for expected in (1, 2, 3):
            await pilot.press("n")
            await wait_for(pilot, lambda: len(lab.steps) == expected and lab.frontier is not None)
        original = [s.id for s in lab.steps]
        await pilot.press("left", "left")  # step 1
        candidates, chosen, _ = lab.inspected()
        await pilot.press("right_square_bracket")  # the second candidate
        target = lab.query_one(CandidatesTable).rows_for(candidates, chosen, lab.candidate_limit, None)[1]
        assert target.id != original[1]
        decoded = engine.decoded_tokens
        await pilot.press("enter")
        await wait_for(pilot, lambda: lab.stop_reason == "max_tokens")
        assert lab.steps[0].id == original[0]
        assert lab.steps[1].id == target.id and lab.steps[1].forced
        assert len(lab.steps) == 8
        # the prompt and step 0 stayed in the KV cache: step 0 is re-decoded for its logits, then only the
        # new suffix (the forced token and steps 2..7, the last one for the live frontier after the stop)
        assert engine.decoded_tokens - decoded == 1 + (8 - 1)
        # nothing was thrown away: the old text is a branch of the tree, forking after step 0
        tree = app.controller.tree
        assert len(tree.branches()) == 2
        fork = tree.find([original[0]])
        assert fork is not None and set(fork.children) == {original[1], target.id}
        assert tree.find(original) is not None


async def test_loop_mode_keeps_a_history_of_runs(finished_engine) -> None:
    engine, apps = finished_engine
    app = make_app(engine, max_tokens=4)
    apps.append(app)
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        await pilot.press("l")
        await wait_for(pilot, lambda: len(lab.history) >= 3)
        await pilot.press("l")
        await wait_for(pilot, lambda: not lab.loop)
        seeds = [record.seed for record in lab.history]
        assert len(set(seeds)) == len(seeds)
        assert all(len(record.steps) == 4 for record in lab.history)
        await wait_for(pilot, lambda: not lab.running)
        await pilot.press("v")
        await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen))
        await pilot.press("enter")  # the newest run
        await wait_for(pilot, lambda: lab.viewing is not None)
        assert lab.shown_steps() == list(lab.history[-1].steps)
        await pilot.press("escape")
        assert lab.viewing is None


async def test_hot_token_boost_shows_in_the_table(finished_engine) -> None:
    engine, apps = finished_engine
    app = make_app(engine)
    apps.append(app)
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        await pilot.press("h")
        await wait_for(pilot, lambda: isinstance(app.screen, LineInput))
        app.screen.query_one(Input).value = " London"
        await pilot.press("enter")
        await wait_for(pilot, lambda: lab.hot is not None and lab.frontier is not None
                       and any(c.id == lab.hot[0] for c in lab.frontier.candidates))
        london = lab.hot[0]
        before = next(c for c in lab.frontier.candidates if c.id == london).final_prob
        await pilot.press(*["greater_than_sign"] * 3)  # +6.0 logit bias
        await wait_for(pilot, lambda: lab.frontier is not None and lab.frontier.params.logit_bias.get(london) == 6.0)
        after = next(c for c in lab.frontier.candidates if c.id == london).final_prob
        assert after > before and after > 0.5
        await pilot.press(*["less_than_sign"] * 6)  # -6.0: suppressed
        await wait_for(pilot, lambda: lab.frontier is not None and lab.frontier.params.logit_bias.get(london) == -6.0)
        assert next(c for c in lab.frontier.candidates if c.id == london).final_prob == 0.0


async def test_help_prompt_editor_and_colour_modes(finished_engine) -> None:
    engine, apps = finished_engine
    app = make_app(engine)
    apps.append(app)
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, LabScreen))

        await pilot.press("c")
        assert lab.query_one(TokenView).colour_mode == "final"
        await pilot.press("c", "c", "c")
        assert lab.query_one(TokenView).colour_mode == "raw"

        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, PromptEditor))
        app.screen.query_one(TextArea).text = "   "
        await pilot.press("enter")  # empty: refused, the old prompt stays
        await wait_for(pilot, lambda: isinstance(app.screen, LabScreen))
        assert lab.prompt == PROMPT
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, PromptEditor))
        app.screen.query_one(TextArea).text = "The capital of Italy is"
        await pilot.press("enter")
        await wait_for(pilot, lambda: lab.prompt == "The capital of Italy is" and len(lab.steps) >= 1)
        assert lab.steps[0].top[0].text == " Rome"  # the model now weighs the new prompt


async def test_a_model_that_fails_to_load_leaves_the_app_usable() -> None:
    def broken() -> Engine:
        raise EngineError("llama.cpp could not load broken.gguf: bad magic")

    app = TokenLabApp(broken, LabSettings(prompt=PROMPT))
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.model_name == "no model")
        assert any("could not load broken.gguf" in str(n.message) for n in app._notifications)
        bindings = lab.active_bindings
        assert not bindings["n"].enabled and not bindings["space"].enabled  # nothing to generate with
        assert bindings["e"].enabled and bindings["question_mark"].enabled
        await pilot.press("n")  # still answers keys
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("escape")
        await pilot.press("q")
    assert app.controller.stopped.wait(5)


async def test_keys_that_cannot_act_are_dimmed(finished_engine) -> None:
    engine, apps = finished_engine
    app = make_app(engine)
    apps.append(app)

    def enabled() -> dict[str, bool]:
        return {key: active.enabled for key, active in app.lab.active_bindings.items()}

    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        keys = enabled()
        assert keys["n"] and keys["space"] and keys["i"] and keys["o"]  # temperature: a stage of its own
        assert not keys["escape"]  # no history run shown
        # (the focused token view binds ← and home to scrolling first; the screen's cursor comes next)
        assert lab.check_action("cursor", (-1,)) is None and lab.check_action("cursor_home", ()) is None
        await pilot.press("n")
        await wait_for(pilot, lambda: len(lab.steps) == 1 and lab.frontier is not None and lab.frontier.index == 1)
        assert lab.check_action("cursor", (-1,)) and lab.check_action("cursor_home", ())
        await pilot.press("up")  # wraps to the hot-token row, empty so far
        assert lab.selected_knob == len(KNOBS) and lab.hot is None
        keys = enabled()
        assert not keys["o"] and not keys["left_curly_bracket"] and not keys["0"]
        samplers = lab.params.samplers
        await pilot.press("o", "0")  # dimmed: nothing changes
        assert lab.params.samplers == samplers
        await pilot.press("up")  # the last knob: watermark_delta, of the watermark stage
        assert enabled()["o"] and enabled()["0"]


async def test_quitting_while_generating_stops_the_controller(finished_engine) -> None:
    engine, apps = finished_engine
    app = make_app(engine, max_tokens=500, autostart=True)
    apps.append(app)
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: len(lab.steps) >= 3 and lab.running)
        await pilot.press("q")
    # the controller checks for quit between tokens, so it stops mid-run (timing: scripts/bench)
    assert app.controller.stopped.wait(5)
    assert app.controller.generation is not None and len(app.controller.generation.steps) < 500


async def test_seed_key_and_a_bad_bias_token_are_reported_not_fatal(finished_engine) -> None:
    engine, apps = finished_engine

    def prepare(loaded: Engine) -> SamplerParams:
        raise ValueError("--logit-bias 'a whole sentence': is 4 tokens for this model, not one")

    app = make_app(engine, prepare=prepare)
    apps.append(app)
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        assert any("is 4 tokens" in str(n.message) for n in app._notifications)
        await pilot.press("S")
        await wait_for(pilot, lambda: isinstance(app.screen, LineInput))
        app.screen.query_one(Input).value = "12345"
        await pilot.press("enter")
        await wait_for(pilot, lambda: lab.seed == 12345 and lab.frontier is not None)
        assert app.controller.generation is not None and app.controller.generation.seed == 12345
        await pilot.press("n")
        await wait_for(pilot, lambda: len(lab.steps) == 1)


async def test_a_prompt_longer_than_the_context_is_reported_and_the_lab_recovers(model_path) -> None:
    small = Engine(model_path, EngineOptions(n_ctx=48))
    app = TokenLabApp(small, LabSettings(prompt="word " * 80, chat=False, seed=1, max_tokens=4, autostart=False))
    try:
        async with app.run_test(size=SIZE) as pilot:
            lab = app.lab
            await wait_for(pilot, lambda: any("context holds 48" in str(n.message) for n in app._notifications))
            assert lab.steps == [] and lab.frontier is None
            await pilot.press("e")
            await wait_for(pilot, lambda: isinstance(app.screen, PromptEditor))
            app.screen.query_one(TextArea).text = "The capital of France is"
            await pilot.press("enter")
            await wait_for(pilot, lambda: lab.stop_reason == "max_tokens")
            assert len(lab.steps) == 4
        assert app.controller.stopped.wait(5)
    finally:
        small.close()


async def test_tree_keeps_every_run_and_switching_reuses_the_shared_prefix(finished_engine) -> None:
    engine, apps = finished_engine
    params = SamplerParams(top_k=2, temperature=1.5, ban=(engine.eos_id,))
    app = make_app(engine, max_tokens=6, params=params)
    apps.append(app)
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        await pilot.press("l")  # loop: run after run, each with the next seed
        await wait_for(pilot, lambda: lab.branch_tree is not None and lab.branch_tree.runs >= 5)
        await pilot.press("l")
        await wait_for(pilot, lambda: not lab.loop and not lab.running and lab.frontier is not None)
        tree = app.controller.tree
        assert tree.runs == lab.branch_tree.runs and len(tree.branches()) >= 2
        assert sum(leaf.ends for leaf in tree.branches()) == tree.runs
        current = tuple(step.id for step in lab.steps)
        other = next(leaf for leaf in tree.branches() if tuple(s.id for s in leaf.path()) != current)
        target = tuple(step.id for step in other.path())
        shared = next((i for i, (a, b) in enumerate(zip(current, target)) if a != b), len(target))

        await pilot.press("b")
        await wait_for(pilot, lambda: isinstance(app.screen, TreeScreen))
        rows = app.screen._rows
        row = next(i for i, r in enumerate(rows) if target[: len(r.path)] == r.path and len(r.path) == len(target))
        app.screen.query_one(OptionList).highlighted = row
        decoded = engine.decoded_tokens
        await pilot.press("enter")
        await wait_for(pilot, lambda: tuple(s.id for s in lab.steps) == target and lab.frontier is not None
                       and lab.frontier.index == len(target))
        # only the tokens after the shared prefix are decoded (the last one for the live frontier)
        assert engine.decoded_tokens - decoded == len(target) - shared
        assert lab.stop_reason == "max_tokens" and len(lab.history) >= 5


async def test_score_screen_colours_a_pasted_text(finished_engine, tmp_path) -> None:
    from tokenlab.tui.screens.score import ScoreScreen

    engine, apps = finished_engine
    app = make_app(engine)
    apps.append(app)
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        await pilot.press("g")
        await wait_for(pilot, lambda: isinstance(app.screen, PromptEditor))
        app.screen.query_one(TextArea).text = "The capital of France is Paris."
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ScoreScreen))
        screen = app.screen
        assert "".join(step.text for step in screen.steps) == "The capital of France is Paris."
        paris = next(step for step in screen.steps if step.text == " Paris")
        assert paris.rank == 1 and paris.top[0].text == " Paris" and paris.prob > 0.5
        assert screen.summary["perplexity"] > 1
        await pilot.press("end")
        assert screen.cursor == len(screen.steps) - 1
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, LabScreen))

        text_file = tmp_path / "text.txt"
        text_file.write_text("Once upon a time, there was a keeper.", encoding="utf-8")
        await pilot.press("g")
        await wait_for(pilot, lambda: isinstance(app.screen, PromptEditor))
        app.screen.query_one(TextArea).text = str(text_file)  # a path loads the file
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ScoreScreen))
        assert "".join(step.text for step in app.screen.steps) == "Once upon a time, there was a keeper."


async def test_score_screen_shows_the_watermark_test_for_the_labs_key(finished_engine) -> None:
    from textual.widgets import Static

    from tokenlab.sampling.watermark import detect_watermark
    from tokenlab.tui.screens.score import ScoreScreen

    engine, apps = finished_engine
    app = make_app(engine, params=SamplerParams(ban=(engine.eos_id,), watermark_key=5))
    apps.append(app)
    text = "The capital of France is Paris, and the capital of Italy is Rome."
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        await pilot.press("g")
        await wait_for(pilot, lambda: isinstance(app.screen, PromptEditor))
        app.screen.query_one(TextArea).text = text
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ScoreScreen))
        screen = app.screen
        ids = [step.id for step in screen.steps]
        expected = detect_watermark(ids, key=5, n_vocab=engine.n_vocab)
        assert screen.watermark == tuple(zip(expected.green, expected.counted))
        assert screen.summary["watermark"]["green"] == expected.green_count
        assert isinstance(screen.summary["fast_detectgpt"], float)
        summary_text = str(screen.query_one("#score-summary", Static).render())
        assert "Fast-DetectGPT d" in summary_text and "watermark (lefthash" in summary_text
        view = screen.query_one(TokenView)
        assert view.colour_mode == "watermark"
        assert "green list" in str(screen.query_one("#score-legend", Static).render())
        shown = str(screen.query_one(CandidatesTable).render())
        assert ("· green" if expected.green[screen.cursor] else "· red") in shown  # the cursor's token
        await pilot.press("c")
        assert view.colour_mode == "raw"  # the cycle goes on through the GLTR colourings


async def test_stage_view_presets_and_stage_order(finished_engine, tmp_path, monkeypatch) -> None:
    from tokenlab.tui.screens.dialogs import PresetScreen, StageScreen

    monkeypatch.setenv("TOKENLAB_CONFIG", str(tmp_path))
    engine, apps = finished_engine
    app = make_app(engine)
    apps.append(app)
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        await pilot.press("n", "n")
        await wait_for(pilot, lambda: len(lab.steps) == 2 and lab.frontier is not None and lab.frontier.index == 2)

        await pilot.press("i")  # the live next step
        await wait_for(pilot, lambda: isinstance(app.screen, StageScreen))
        view = app.screen._view
        assert [row.name for row in view.rows] == ["ban", "top_k", "top_p", "min_p", "temperature"]
        assert view.rows[1].kept == 40 and all(0 < row.mass_kept <= 1 for row in view.rows)
        await pilot.press("escape")
        await pilot.press("left", "left", "i")  # step 0, recomputed from its logits
        await wait_for(pilot, lambda: isinstance(app.screen, StageScreen))
        assert app.screen._index == 0 and app.screen._view.candidate_texts[0] == " Paris"
        await pilot.press("escape")
        await pilot.press("end")

        await pilot.press("t", "right_curly_bracket")  # temperature moves after mirostat_v1...
        assert lab.params.samplers[-4:] == ("mirostat_v1", "temperature", "mirostat_v2", "adaptive_p")
        await pilot.press("left_curly_bracket")  # ...and back
        await pilot.press("left_curly_bracket")
        assert lab.params.samplers.index("temperature") < lab.params.samplers.index("xtc")

        await pilot.press("P")
        await wait_for(pilot, lambda: isinstance(app.screen, PresetScreen))
        app.screen.query_one(Input).value = "my knobs"
        app.screen.query_one(Input).focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: (tmp_path / "presets.toml").exists())
        await pilot.press("P")
        await wait_for(pilot, lambda: isinstance(app.screen, PresetScreen))
        options = app.screen.query_one(OptionList)
        options.highlighted = [options.get_option_at_index(i).id for i in range(options.option_count)].index("greedy")
        await pilot.press("enter")
        await wait_for(pilot, lambda: lab.frontier is not None and lab.frontier.params.temperature == 0.0)
        assert lab.frontier.survivors == 1
        from tokenlab.presets import load_preset

        saved = load_preset("my knobs")
        assert saved.samplers.index("temperature") < saved.samplers.index("xtc")


async def test_rollouts_key_lands_branches_in_the_tree_and_can_be_cancelled(finished_engine) -> None:
    from tokenlab.tui.screens.dialogs import RolloutScreen

    engine, apps = finished_engine
    app = make_app(engine)
    apps.append(app)
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        await pilot.press("R")
        await wait_for(pilot, lambda: lab.rollout_progress is not None and lab.rollout_progress[0] > 0)
        await wait_for(pilot, lambda: isinstance(app.screen, RolloutScreen), timeout=120)
        result = app.screen.result
        assert len(result.rollouts) == 64 and not result.cancelled
        assert result.check.p_value is None or result.check.p_value > 1e-6
        tree = app.controller.tree
        assert tree.runs == 64 and sum(group.count for group in result.groups) == 64
        assert all(len(row.path) >= 1 for row in lab.branch_tree.segments)
        assert max(row.depth for row in lab.branch_tree.segments) >= 1
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, LabScreen))

        await pilot.press("R")
        await wait_for(pilot, lambda: lab.rollout_progress is not None and lab.rollout_progress[0] > 0)
        await pilot.press("R")  # cancel
        await wait_for(pilot, lambda: isinstance(app.screen, RolloutScreen), timeout=120)
        assert app.screen.result.cancelled


async def test_save_and_load_a_session_restores_the_view(finished_engine, tmp_path) -> None:
    from tokenlab.lab.session import load

    engine, apps = finished_engine
    app = make_app(engine, max_tokens=5, autostart=True)
    apps.append(app)
    path = tmp_path / "session.json"
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.stop_reason == "max_tokens")
        await pilot.press("r")
        await wait_for(pilot, lambda: lab.branch_tree is not None and lab.branch_tree.runs == 2
                       and lab.stop_reason == "max_tokens")
        shown = [step.id for step in lab.steps]
        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, LineInput))
        app.screen.query_one(Input).value = str(path)
        await pilot.press("enter")
        await wait_for(pilot, path.exists)
    session = load(path)
    assert session.tree.runs == 2 and list(session.current) == shown

    decoded = engine.decoded_tokens
    restored = TokenLabApp(engine, LabSettings(prompt=session.prompt, chat=session.chat, params=session.params,
                                                seed=session.seed, max_tokens=session.max_tokens,
                                                autostart=False, session=session))
    apps.append(restored)
    async with restored.run_test(size=SIZE) as pilot:
        lab = restored.lab
        await wait_for(pilot, lambda: [step.id for step in lab.steps] == shown and lab.branch_tree is not None)
        assert lab.branch_tree.runs == 2 and not lab.running
        assert lab.steps == session.current_steps()  # the records come from the file, not the model
        await wait_for(pilot, lambda: lab.frontier is not None)
    # the model only decoded what the live next step needs (the prompt and the branch), nothing was generated
    assert engine.decoded_tokens - decoded <= len(engine.format_prompt(PROMPT, chat=False)) + len(shown)


async def test_autosave_on_exit_and_exports_from_the_lab(finished_engine, tmp_path, monkeypatch) -> None:
    from tokenlab.lab.session import autosave_path, load

    monkeypatch.setenv("TOKENLAB_DATA", str(tmp_path / "data"))
    engine, apps = finished_engine
    app = make_app(engine, max_tokens=4, autostart=True)
    apps.append(app)
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.stop_reason == "max_tokens")
        shown = [step.id for step in lab.steps]
        for name in ("out.md", "out.html", "shot.svg"):
            await pilot.press("s")
            await wait_for(pilot, lambda: isinstance(app.screen, LineInput))
            app.screen.query_one(Input).value = str(tmp_path / name)
            await pilot.press("enter")
            await wait_for(pilot, (tmp_path / name).exists)
        assert "<svg" in (tmp_path / "shot.svg").read_text(encoding="utf-8")
        assert "| # | token |" in (tmp_path / "out.md").read_text(encoding="utf-8")
        export_notes = [str(n.message) for n in app._notifications if "out.md" in str(n.message)
                        or "out.html" in str(n.message)]
        assert len(export_notes) == 2  # an export cannot be loaded: the note must not suggest --load
        assert all("--load" not in note and "exported to" in note for note in export_notes)
        await pilot.press("s")  # a suffix no format has: one error naming the valid ones, nothing written
        await wait_for(pilot, lambda: isinstance(app.screen, LineInput))
        app.screen.query_one(Input).value = str(tmp_path / "notes.txt")
        await pilot.press("enter")
        await wait_for(pilot, lambda: any("'.txt'" in str(n.message) for n in app._notifications))
        assert not (tmp_path / "notes.txt").exists()
        assert any(".json (the session)" in str(n.message) and n.severity == "error" for n in app._notifications)
    assert app.controller.stopped.wait(5)
    restored = load(autosave_path())
    assert list(restored.current) == shown and restored.tree.runs == 1


PARAGRAPH = ("The lighthouse keeper climbed the stairs every evening, trimmed the wick, wound the clockwork "
             "and watched the beam sweep across the water until the fishing boats came home; then he wrote "
             "the weather in the log, made tea, and slept until the gulls woke him at dawn.")


async def test_pasting_a_long_one_line_paragraph_scores_it(finished_engine) -> None:
    from tokenlab.tui.screens.score import ScoreScreen

    engine, apps = finished_engine
    assert 256 <= len(PARAGRAPH) < 1024  # too long for a file name: the text is no path
    app = make_app(engine)
    apps.append(app)
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        await pilot.press("g")
        await wait_for(pilot, lambda: isinstance(app.screen, PromptEditor))
        app.screen.query_one(TextArea).text = PARAGRAPH
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ScoreScreen))
        assert "".join(step.text for step in app.screen.steps) == PARAGRAPH
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, LabScreen))


def test_an_unexpected_error_exits_non_zero_with_one_line_and_keeps_the_autosave(
        finished_engine, tmp_path, monkeypatch, capsys) -> None:
    import typer

    from tokenlab.commands.lab import run_app
    from tokenlab.lab.session import autosave_path, load

    monkeypatch.setenv("TOKENLAB_DATA", str(tmp_path / "data"))
    engine, apps = finished_engine
    app = make_app(engine, max_tokens=3, autostart=True)
    apps.append(app)

    def broken(self: LabScreen) -> None:
        raise RuntimeError("the history broke")

    monkeypatch.setattr(LabScreen, "action_history", broken)
    shown: list[int] = []

    async def auto_pilot(pilot) -> None:
        await wait_for(pilot, lambda: pilot.app.lab.stop_reason == "max_tokens")
        shown.extend(step.id for step in pilot.app.lab.steps)
        await pilot.press("v")

    with pytest.raises(typer.Exit) as stopped:
        run_app(app, headless=True, size=SIZE, auto_pilot=auto_pilot)
    assert stopped.value.exit_code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "RuntimeError: the history broke" in lines[0] and "tokenlab lab --restore" in lines[0]
    assert "crash.txt" in lines[0] and "Traceback" not in lines[0]
    assert "the history broke" in (tmp_path / "data" / "crash.txt").read_text(encoding="utf-8")
    assert list(load(autosave_path()).current) == shown and len(shown) == 3


async def test_help_scrolls_names_symbol_keys_and_explains_the_panels(finished_engine) -> None:
    from textual.containers import VerticalScroll

    from tokenlab.tui.screens.dialogs import HELP_PANELS

    engine, apps = finished_engine
    app = make_app(engine)
    apps.append(app)
    async with app.run_test(size=(150, 45)) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        keys = dict(app.screen._keys)
        for key in ("[", "]", "enter", "x", "v", "g", "b", "escape", "{", "}"):
            assert key in keys, key
        assert not any("_" in key for key in keys)  # no left_curly_bracket
        assert {name for name, _ in HELP_PANELS} >= {"colours", "curve", "N can be drawn"}
        box = app.screen.query_one("#help-box", VerticalScroll)
        assert box.max_scroll_y > 0 and box.scroll_y == 0  # more than fits: it scrolls
        await pilot.press("end")
        await wait_for(pilot, lambda: box.scroll_y == box.max_scroll_y)


async def test_candidate_rows_never_wrap(finished_engine) -> None:
    engine, apps = finished_engine
    app = make_app(engine, params=SamplerParams(top_k=2, ban=(engine.eos_id,)))
    apps.append(app)
    async with app.run_test(size=(100, 30)) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        table = lab.query_one(CandidatesTable)
        candidates, chosen, _ = lab.inspected()
        rows = table.rows_for(candidates, chosen, lab.candidate_limit, lab.hot_ids())
        assert sum(c.removed_by == "top_k" for c in rows) >= 3
        lines = table.render().plain.rstrip("\n").split("\n")  # type: ignore[union-attr]
        assert len(lines) == CandidatesTable.HEADER_LINES + len(rows)
        assert all(len(line) <= table.content_region.width for line in lines), lines


async def test_min_keep_is_its_own_knob_and_stays_on_when_top_k_is_off(finished_engine) -> None:
    from tokenlab.lab.knobs import KNOBS
    from tokenlab.tui.widgets import KnobPanel

    engine, apps = finished_engine
    app = make_app(engine)
    apps.append(app)
    async with app.run_test(size=(150, 45)) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        await pilot.press("k")
        while KNOBS[lab.selected_knob].name != "min_keep":
            await pilot.press("down")
        await pilot.press("o")  # min keep has no stage to switch
        assert "top_k" in lab.params.samplers
        await pilot.press("k", "o")  # top-k off
        await wait_for(pilot, lambda: lab.frontier is not None and "top_k" not in lab.frontier.params.samplers)
        panel = lab.query_one(KnobPanel).render().plain  # type: ignore[union-attr]
        line = next(line for line in panel.split("\n") if "min keep" in line)
        assert "off" not in line and line.split()[-1] == "1"
        assert next(line for line in panel.split("\n") if "top-k " in line).split()[-1] == "off"


async def test_every_hot_token_is_shown_turned_and_cleared(finished_engine) -> None:
    from tokenlab.tui.widgets import KnobPanel

    engine, apps = finished_engine
    app = make_app(engine)
    apps.append(app)
    async with app.run_test(size=(150, 45)) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        ids = {}
        for text, presses in ((" dragon", 4), (" knight", 2)):
            await pilot.press("h")
            await wait_for(pilot, lambda: isinstance(app.screen, LineInput))
            app.screen.query_one(Input).value = text
            await pilot.press("enter")
            await wait_for(pilot, lambda: lab.hot is not None and lab.hot[1] == text)
            ids[text] = lab.hot[0]
            await pilot.press(*["greater_than_sign"] * presses)
        await wait_for(pilot, lambda: lab.frontier is not None and len(lab.frontier.params.logit_bias) == 2)
        assert dict(lab.params.logit_bias) == {ids[" dragon"]: 8.0, ids[" knight"]: 4.0}
        panel = lab.query_one(KnobPanel).render().plain  # type: ignore[union-attr]
        assert "dragon" in panel and "knight" in panel
        assert "+8.0" in panel and "+4.0" in panel
        table_ids = {c.id for c in lab.frontier.candidates}
        assert set(ids.values()) <= table_ids  # both are listed among the candidates
        await pilot.press("up")  # the dragon row
        assert lab.hot is not None and lab.hot[0] == ids[" dragon"]
        await pilot.press("0")  # clears it: its bias and its row
        await wait_for(pilot, lambda: lab.frontier is not None and len(lab.frontier.params.logit_bias) == 1)
        assert dict(lab.params.logit_bias) == {ids[" knight"]: 4.0}
        assert "dragon" not in lab.query_one(KnobPanel).render().plain  # type: ignore[union-attr]


async def test_a_temperature_above_the_old_knob_range_turns_from_where_it_is(finished_engine) -> None:
    engine, apps = finished_engine
    app = make_app(engine, params=SamplerParams(temperature=9.0, ban=(engine.eos_id,)))
    apps.append(app)
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        await pilot.press("t", "plus")
        await wait_for(pilot, lambda: lab.frontier is not None and lab.frontier.params.temperature != 9.0)
        assert lab.params.temperature == pytest.approx(9.05)


async def test_history_after_loading_a_session_and_biases_by_name(finished_engine, tmp_path) -> None:
    from tokenlab.lab.session import load

    engine, apps = finished_engine
    path = tmp_path / "session.json"
    london = engine.find_token(" London")
    app = make_app(engine, max_tokens=3, params=SamplerParams(logit_bias={london: 2.5}, ban=(engine.eos_id,)))
    apps.append(app)
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        await pilot.press("l")
        await wait_for(pilot, lambda: lab.branch_tree is not None and lab.branch_tree.runs >= 3)
        await pilot.press("l")
        await wait_for(pilot, lambda: not lab.loop and not lab.running)
        assert "bias ' London'+2.5" in lab.history[-1].settings(lab.token_names)
        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, LineInput))
        app.screen.query_one(Input).value = str(path)
        await pilot.press("enter")
        await wait_for(pilot, path.exists)
    session = load(path)
    restored = TokenLabApp(engine, LabSettings(prompt=session.prompt, chat=session.chat, params=session.params,
                                                seed=session.seed, max_tokens=session.max_tokens,
                                                autostart=False, session=session))
    apps.append(restored)
    async with restored.run_test(size=SIZE) as pilot:
        lab = restored.lab
        await wait_for(pilot, lambda: lab.branch_tree is not None and lab.frontier is not None)
        await pilot.press("v")
        await wait_for(pilot, lambda: isinstance(restored.screen, HistoryScreen))
        finished = session.tree.finished()
        assert len(lab.history) == min(len(finished), 15) >= 3
        assert {record.steps for record in lab.history} == {tuple(node.path()) for node in finished}
        await pilot.press("enter")
        await wait_for(pilot, lambda: lab.viewing is not None)
        assert lab.shown_steps() == list(lab.viewing.steps)


async def test_expanded_candidates_fill_the_panel_and_the_curve_fits(finished_engine) -> None:
    from tokenlab.tui.widgets import DistributionStrip

    engine, apps = finished_engine
    for size in ((150, 45), (100, 30)):
        app = make_app(engine, params=SamplerParams(top_k=0, ban=(engine.eos_id,)))
        apps.append(app)
        async with app.run_test(size=size) as pilot:
            lab = app.lab
            await wait_for(pilot, lambda: lab.frontier is not None)
            await pilot.press("n")
            await wait_for(pilot, lambda: len(lab.steps) == 1 and lab.frontier is not None)
            await pilot.press("x")
            table = lab.query_one(CandidatesTable)
            lines = table.render().plain.rstrip("\n").split("\n")  # type: ignore[union-attr]
            assert len(lines) == table.content_region.height, size  # the panel is full, nothing cut off
            assert lab.candidate_limit == table.fits() > 5
            for cursor in ("end", "left"):  # the live next step, then a past step
                await pilot.press(cursor)
                strip = lab.query_one(DistributionStrip)
                rendered = strip.render().plain.split("\n")  # type: ignore[union-attr]
                assert len(rendered) <= strip.content_region.height, (size, rendered)
                assert all(len(line) <= strip.content_region.width for line in rendered), (size, rendered)
                legend = lab.query_one("#legend").render().plain  # type: ignore[attr-defined]
                assert len(legend) <= lab.query_one("#legend").content_region.width, (size, legend)


async def test_the_prompt_is_shown_above_the_text_and_the_dice_under_the_title(finished_engine) -> None:
    engine, apps = finished_engine
    app = make_app(engine)
    apps.append(app)
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        view = lab.query_one(TokenView)
        assert view.prompt_text() == PROMPT  # step 0 is not a blank page
        assert view.plain_text().strip() == "▍"  # only the mark of the live next step after it
        table = lab.query_one(CandidatesTable)
        assert "dice: not rolled yet" in table.render().plain  # type: ignore[union-attr]
        await pilot.press("n")
        await wait_for(pilot, lambda: len(lab.steps) == 1 and lab.frontier is not None)
        await pilot.press("left")
        step = lab.steps[0]
        assert step.dice is not None
        assert f"u {step.dice[0]:.3f}" in table.render().plain  # type: ignore[union-attr]
        assert view.prompt_text() == PROMPT and view.plain_text() == step.text


async def test_the_knob_panel_shows_adaptive_ps_moving_average_and_adapted_target(finished_engine) -> None:
    from tokenlab.lab.knobs import KNOBS
    from tokenlab.tui.widgets import KnobPanel

    engine, apps = finished_engine
    app = make_app(engine, params=SamplerParams(ban=(engine.eos_id,), adaptive_target=0.3))
    apps.append(app)
    async with app.run_test(size=(150, 45)) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        await pilot.press("k")
        while KNOBS[lab.selected_knob].name != "adaptive_decay":
            await pilot.press("down")

        def line(label: str) -> str:
            panel = lab.query_one(KnobPanel).render().plain  # type: ignore[union-attr]
            return next(row for row in panel.split("\n") if label in row)

        await wait_for(pilot, lambda: "avg" in line("adaptive decay"))
        assert line("adaptive decay").split()[-2:] == ["avg", "0.30"]  # the average starts at the target
        await pilot.press("n")  # one token: the average moves, and the target adapts against it
        await wait_for(pilot, lambda: lab.frontier is not None and lab.frontier.index == 1
                       and line("adaptive decay").split()[-1] != "0.30")
        average = float(line("adaptive decay").split()[-1])
        target_row = line("adaptive target").split()
        assert target_row[-1] == "*"  # the target differs from its default
        assert target_row[-3] == "0.30" and target_row[-2].startswith("→")
        # 2·target - average, both shown to two decimals
        assert float(target_row[-2][1:]) == pytest.approx(min(1.0, max(0.0, 0.6 - average)), abs=0.011)


async def test_a_b_compares_the_inspected_step_with_a_preset_and_generates_both(finished_engine, tmp_path,
                                                                                monkeypatch) -> None:
    from tokenlab.lab.compare import compare_frontier
    from tokenlab.presets import list_presets, load_preset
    from tokenlab.tui.screens.compare import CompareRunsScreen, CompareScreen

    monkeypatch.setenv("TOKENLAB_CONFIG", str(tmp_path))  # the built-in presets only
    engine, apps = finished_engine
    app = make_app(engine, max_tokens=8, autostart=True)
    apps.append(app)
    async with app.run_test(size=(150, 45)) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.stop_reason == "max_tokens" and lab.frontier is not None)
        await pilot.press("left", "left")  # inspect step 6
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
        screen = app.screen
        names = list(list_presets())
        first = next(i for i, name in enumerate(names) if load_preset(name) != lab.params)
        assert screen._label == names[first]
        # the comparison is the one the pipeline gives on that step's logits
        generation = lab.controller.generation
        frontier = generation.frontier_at(6, lab.params)
        expected = compare_frontier(frontier, load_preset(names[first]), engine.token_text, top_n=12)
        assert (screen.comparison.survivors_a, screen.comparison.survivors_b) == (expected.survivors_a,
                                                                                 expected.survivors_b)
        assert [row.id for row in screen.comparison.only_b] == [row.id for row in expected.only_b]
        text = str(screen.query_one("#compare-only-b").render())
        assert text.startswith("only B can draw")
        await pilot.press("right")  # the next preset
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen._label != names[first])
        assert app.screen._label == names[(first + 1) % len(names)]
        await pilot.press("g")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareRunsScreen), timeout=120)
        runs = app.screen.runs
        assert len(runs.a) == len(runs.b) == 48 or "eos" in (runs.stop_a, runs.stop_b)
        # A continues the lab's own run from step 6 with the same seed: its first token is the lab's step 6
        assert runs.a[0].id == lab.steps[6].id
        await pilot.press("escape")
        assert isinstance(app.screen, LabScreen)


async def test_the_curve_is_redrawn_for_the_new_width_after_a_resize(finished_engine) -> None:
    from tokenlab.tui.widgets.panels import DistributionStrip

    engine, apps = finished_engine
    app = make_app(engine, max_tokens=4, autostart=True)
    apps.append(app)
    async with app.run_test(size=(150, 45)) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.stop_reason == "max_tokens" and lab.frontier is not None)
        strip = lab.query_one(DistributionStrip)
        await pilot.resize_terminal(100, 30)
        await pilot.pause()
        await wait_for(pilot, lambda: strip.size.width < 100)
        await pilot.pause()
        rendered = strip.render()
        lines = rendered.plain.splitlines() if hasattr(rendered, "plain") else []
        width = strip.size.width
        assert lines and all(len(line) <= width for line in lines), (width, lines)


async def test_batches_slow_down_when_painting_costs_more_than_its_share(finished_engine) -> None:
    engine, apps = finished_engine
    app = make_app(engine, max_tokens=60)
    apps.append(app)
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        base = app.controller.batch_interval
        assert base == 0.25
        lab.PAINT_SHARE = 1e-9  # any paint costs more than this share: the batches go as far apart as allowed
        await pilot.press("space")
        await wait_for(pilot, lambda: lab.stop_reason == "max_tokens", timeout=60)
        assert lab._paint_cost is not None and lab._paint_cost > 0
        assert lab.paced_interval == lab.MAX_BATCH_INTERVAL
        assert len(lab.steps) == 60  # every step still reaches the screen
        assert app.controller.batch_interval == base  # the next run starts at the base rate again
