"""The lab shows what phrase bans took back (struck through) and the negative context of guidance."""

from __future__ import annotations

import pytest

from tokenlab.engine import Engine
from tokenlab.lab.controller import LabSettings
from tokenlab.sampling import SamplerParams
from tokenlab.tui.app import TokenLabApp
from tokenlab.tui.widgets import CandidatesTable, TokenView
from tokenlab.tui.widgets.token_view import FRONTIER_MARK, REWOUND_STYLE
from tui_helpers import wait_for

SIZE = (100, 32)


@pytest.fixture
def apps():
    """Apps started by a test; after it, wait until each controller thread has let go of the engine."""
    started: list[TokenLabApp] = []
    yield started
    for app in started:
        assert app.controller.stopped.wait(5), "the controller thread did not stop"


async def test_rewound_tokens_are_struck_through_never_hidden(engine: Engine, apps) -> None:
    dragon = engine.find_token(" dragon")
    params = SamplerParams(logit_bias={dragon: 8.0}, ban_phrases=(" dragon",))
    app = TokenLabApp(engine, LabSettings(prompt="Write a story about a knight.", chat=True, seed=1,
                                          max_tokens=20, params=params, autostart=True))
    apps.append(app)
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.stop_reason is not None)
        await pilot.pause()
        assert any(step.rewound for step in lab.steps)
        view = lab.query_one(TokenView)
        struck = "".join(s.text for line in view._lines for s in line if s.style == REWOUND_STYLE)
        kept = "".join(s.text for line in view._lines for s in line if s.style != REWOUND_STYLE)
        assert " dragon" in struck and " dragon" not in kept
        assert kept.replace(" " + FRONTIER_MARK, "").replace("↵", "") == "".join(step.text for step in lab.steps).replace("\n", "")


async def test_the_candidates_panel_lists_the_negative_contexts_top(engine: Engine, apps) -> None:
    params = SamplerParams(guidance_scale=1.5, negative_prompt="Write a story about a dog.")
    app = TokenLabApp(engine, LabSettings(prompt="Write a story about a cat.", chat=True, seed=1,
                                          max_tokens=3, params=params, autostart=False))
    apps.append(app)
    async with app.run_test(size=SIZE) as pilot:
        lab = app.lab
        await wait_for(pilot, lambda: lab.frontier is not None)
        assert lab.frontier.negative and lab.frontier.stages[0] == ("guidance", engine.n_vocab)
        table = lab.query_one(CandidatesTable)
        await pilot.pause()
        first = lab.frontier.negative[0][1]
        assert "negative " in str(table.render()) and first.strip() in str(table.render())
        await pilot.press("n")  # one step: its record keeps the negative top for the cursor to show
        await wait_for(pilot, lambda: len(lab.steps) == 1)
        assert lab.steps[0].negative and lab.steps[0].negative[0][1] == first
