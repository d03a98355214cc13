"""Pixel snapshots of the distribution chart (d) at 100x30 and 150x45, on the deterministic fake engine."""

from __future__ import annotations

from fake_engine import FakeEngine
from textual.pilot import Pilot
from tui_helpers import wait_for

from tokenlab.lab.controller import LabSettings
from tokenlab.tui.app import TokenLabApp


def make_app() -> TokenLabApp:
    settings = LabSettings(prompt="the keeper", chat=False, seed=1, max_tokens=12, autostart=False)
    return TokenLabApp(FakeEngine(), settings)


async def chart_after(pilot: Pilot, count: int, *keys: str) -> None:
    """Sample `count` tokens, open the chart, press `keys`, and pin the machine-dependent speed."""
    lab = pilot.app.lab
    await wait_for(pilot, lambda: lab.frontier is not None)
    for index in range(count):
        await pilot.press("n")
        await wait_for(pilot, lambda: len(lab.steps) == index + 1 and lab.frontier is not None
                       and lab.frontier.index == index + 1)
    await pilot.press("d", *keys)
    lab.tokens_per_second = 42.0
    lab.refresh_view()
    await pilot.pause()


def test_chart_of_the_live_step_100x30(snap_compare) -> None:
    async def run_before(pilot: Pilot) -> None:
        await chart_after(pilot, 3)

    assert snap_compare(make_app(), terminal_size=(100, 30), run_before=run_before)


def test_chart_of_a_drawn_step_150x45(snap_compare) -> None:
    async def run_before(pilot: Pilot) -> None:
        await chart_after(pilot, 3, "left")

    assert snap_compare(make_app(), terminal_size=(150, 45), run_before=run_before)


def test_chart_of_the_live_step_150x45(snap_compare) -> None:
    async def run_before(pilot: Pilot) -> None:
        await chart_after(pilot, 3, "k", "less_than_sign", "less_than_sign", "less_than_sign")

    assert snap_compare(make_app(), terminal_size=(150, 45), run_before=run_before)
