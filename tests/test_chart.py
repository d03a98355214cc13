"""The distribution chart (d) on the real default model: toggling, redrawing on a knob, the dice."""

from __future__ import annotations

import pytest

from tokenlab.engine import Engine
from tokenlab.lab.controller import LabSettings
from tokenlab.sampling import SamplerParams
from tokenlab.tui.app import TokenLabApp
from tokenlab.tui.widgets import DistributionStrip, TokenView
from tokenlab.tui.widgets.chart import DistributionChart
from tui_helpers import wait_for


def make_app(engine: Engine) -> TokenLabApp:
    settings = LabSettings(prompt="The capital of France is", chat=False, seed=7, max_tokens=24, autostart=False,
                           params=SamplerParams(ban=(engine.eos_id,)))
    return TokenLabApp(engine, settings)


@pytest.fixture
def apps(engine: Engine):
    """Apps made by a test; afterwards, wait until each controller thread has let go of the shared engine."""
    made: list[TokenLabApp] = []
    yield made
    for app in made:
        assert app.controller.stopped.wait(5), "the controller thread did not stop"


def chart_text(app: TokenLabApp) -> str:
    return "\n".join(app.lab.query_one(DistributionChart).plain_lines())


async def test_d_toggles_the_chart_in_place_of_the_text(engine: Engine, apps) -> None:
    app = make_app(engine)
    apps.append(app)
    async with app.run_test(size=(100, 30)) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        chart = lab.query_one(DistributionChart)
        assert not chart.display and lab.query_one(TokenView).display
        await pilot.press("d")
        await wait_for(pilot, lambda: chart.data is not None and chart.size.height > 0)
        assert chart.display
        assert not lab.query_one(TokenView).display and not lab.query_one(DistributionStrip).display
        text = chart_text(app)
        frontier = lab.frontier
        assert frontier is not None
        assert text.splitlines()[0].startswith("next step 0 · live")
        assert f"entropy {frontier.entropy:.2f} → {frontier.final_entropy:.2f} bits" in text
        assert "' Paris'" in text and f"{frontier.candidates[0].prob:6.3f}" in text
        assert "dice: not rolled yet" in text
        assert "rank 1" in text and "49k" in text  # the log axis spans the whole vocabulary
        await pilot.press("d")
        assert not chart.display and lab.query_one(TokenView).display


async def test_turning_a_knob_redraws_the_chart_with_the_new_cut(engine: Engine, apps) -> None:
    app = make_app(engine)
    apps.append(app)
    async with app.run_test(size=(150, 45)) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        await pilot.press("d")
        chart = lab.query_one(DistributionChart)
        await wait_for(pilot, lambda: chart.data is not None and chart.size.height > 0)
        assert "top-k 40 (keeps 40)" in chart_text(app)
        await pilot.press("k", "less_than_sign", "less_than_sign", "less_than_sign")  # top-k 40 -> 10
        await wait_for(pilot, lambda: lab.frontier is not None and lab.frontier.params.top_k == 10)
        await pilot.pause(0.05)
        text = chart_text(app)
        assert "top-k 40" not in text
        kept = dict(lab.frontier.stages)["top_k"]
        assert kept == 10 and "top-k 10" in text and "keeps 10" in text
        # temperature moves the final bars: the top token's final probability is redrawn
        before = lab.frontier.candidates[0].final_prob
        await pilot.press("t", "greater_than_sign", "greater_than_sign")  # 0.8 -> 1.3
        await wait_for(pilot, lambda: lab.frontier is not None and lab.frontier.params.temperature == 1.3)
        await pilot.pause(0.05)
        after = lab.frontier.candidates[0].final_prob
        assert after < before
        first_row = next(line for line in chart_text(app).splitlines() if "' Paris'" in line)
        assert first_row.rstrip().endswith(f"{after:6.3f}".strip())


async def test_the_chart_shows_the_dice_of_a_drawn_step(engine: Engine, apps) -> None:
    app = make_app(engine)
    apps.append(app)
    async with app.run_test(size=(100, 30)) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        for expected in (1, 2, 3):
            await pilot.press("n")
            await wait_for(pilot, lambda: len(lab.steps) == expected and lab.frontier is not None
                           and lab.frontier.index == expected)
        drawn = next(step for step in lab.steps if step.dice is not None)
        await pilot.press("d", "home", *["right"] * drawn.index)
        chart = lab.query_one(DistributionChart)
        await wait_for(pilot, lambda: chart.data is not None and chart.data.step == drawn)
        text = chart_text(app)
        u, before = drawn.dice
        assert text.splitlines()[0].startswith(f"step {drawn.index}")
        assert f"u {u:.3f}" in text and "┃" in text
        assert f"[{before:.3f}, {before + drawn.final_prob:.3f})" in text
        assert "▶" in text  # the drawn token's bar is marked


async def test_enter_on_a_knob_types_its_value(engine: Engine, apps) -> None:
    from textual.widgets import Input

    from tokenlab.tui.screens.dialogs import LineInput

    app = make_app(engine)
    apps.append(app)
    async with app.run_test(size=(100, 30)) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        await pilot.press("t", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, LineInput))
        field = app.screen.query_one(Input)
        assert field.value == "0.80"
        field.value = "1.37"
        await pilot.press("enter")
        await wait_for(pilot, lambda: lab.frontier is not None and lab.frontier.params.temperature == 1.37)
        assert lab.params.temperature == 1.37
        # bad values: one clear message, nothing changes
        for knob_key, bad, expected in (("t", "warm", "temperature takes a number, got 'warm'"),
                                        ("k", "-3", "top_k must be an integer >= 0"),
                                        ("p", "1.5", "top_p must be in [0, 1], got 1.5")):
            before = lab.params
            await pilot.press(knob_key, "enter")
            await wait_for(pilot, lambda: isinstance(app.screen, LineInput))
            app.screen.query_one(Input).value = bad
            await pilot.press("enter")
            await wait_for(pilot, lambda: not isinstance(app.screen, LineInput))
            messages = [n.message for n in app._notifications]
            assert any(expected in message for message in messages), messages
            assert lab.params == before
        # after moving among the candidates, enter forces a candidate again
        await pilot.press("right_square_bracket", "enter")
        await wait_for(pilot, lambda: len(lab.steps) >= 1 and lab.steps[0].forced)
        assert not isinstance(app.screen, LineInput)
