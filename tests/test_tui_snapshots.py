"""Pixel snapshots of the lab at fixed sizes, on a deterministic fake engine (real-model flows: test_tui.py)."""

from __future__ import annotations

from fake_engine import FakeEngine
from textual.pilot import Pilot
from tui_helpers import wait_for

from tokenlab.lab.controller import LabSettings
from tokenlab.tui.app import TokenLabApp


def make_app() -> TokenLabApp:
    settings = LabSettings(prompt="the keeper", chat=False, seed=1, max_tokens=12, autostart=False)
    return TokenLabApp(FakeEngine(), settings)


async def step(pilot: Pilot, count: int) -> None:
    lab = pilot.app.lab
    await wait_for(pilot, lambda: lab.frontier is not None)
    for index in range(count):
        await pilot.press("n")
        await wait_for(pilot, lambda: len(lab.steps) == index + 1 and lab.frontier is not None
                       and lab.frontier.index == index + 1)


def freeze_timing(pilot: Pilot) -> None:
    """Tokens/s depends on the machine; pin it so the pixels do not."""
    lab = pilot.app.lab
    lab.tokens_per_second = 42.0
    lab.refresh_view()


def test_paused_at_the_frontier(snap_compare) -> None:
    async def run_before(pilot: Pilot) -> None:
        await step(pilot, 8)
        freeze_timing(pilot)

    assert snap_compare(make_app(), terminal_size=(100, 30), run_before=run_before)


def test_inspecting_a_past_step_with_rank_colours(snap_compare) -> None:
    async def run_before(pilot: Pilot) -> None:
        await step(pilot, 10)
        await pilot.press("left", "left", "left", "x", "c", "c", "down", "down")
        freeze_timing(pilot)
        pilot.app.clear_notifications()

    assert snap_compare(make_app(), terminal_size=(100, 36), run_before=run_before)


def test_smallest_usable_size(snap_compare) -> None:
    async def run_before(pilot: Pilot) -> None:
        await step(pilot, 6)
        await pilot.press("k", "minus", "minus")
        await wait_for(pilot, lambda: pilot.app.lab.frontier is not None
                       and pilot.app.lab.frontier.params.top_k == 38)
        freeze_timing(pilot)

    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=run_before)


def test_help_screen(snap_compare) -> None:
    async def run_before(pilot: Pilot) -> None:
        await step(pilot, 1)
        freeze_timing(pilot)
        await pilot.press("question_mark")

    assert snap_compare(make_app(), terminal_size=(100, 44), run_before=run_before)


def a_b_step(size: tuple[int, int]):  # noqa: ANN201
    async def run_before(pilot: Pilot) -> None:
        from tokenlab.tui.screens.compare import CompareScreen

        await step(pilot, 6)
        freeze_timing(pilot)
        await pilot.press("left", "left", "a")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, CompareScreen))
        await pilot.pause()

    return run_before


def test_a_b_step_at_100x30(snap_compare, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TOKENLAB_CONFIG", str(tmp_path))  # built-in presets only
    assert snap_compare(make_app(), terminal_size=(100, 30), run_before=a_b_step((100, 30)))


def test_a_b_step_at_150x45(snap_compare, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TOKENLAB_CONFIG", str(tmp_path))
    assert snap_compare(make_app(), terminal_size=(150, 45), run_before=a_b_step((150, 45)))


async def test_incremental_token_layout_equals_a_full_layout() -> None:
    """Tokens arriving in batches are laid out from the last line only; the result must match a fresh layout."""
    from tokenlab.tui.widgets import TokenView

    app = TokenLabApp(FakeEngine(), LabSettings(prompt="the keeper", chat=False, seed=3, max_tokens=150))
    async with app.run_test(size=(60, 30)) as pilot:
        lab = pilot.app.lab
        await wait_for(pilot, lambda: lab.stop_reason is not None)
        steps = list(lab.steps)
        view = lab.query_one(TokenView)
        growing: list = []
        for start in range(0, len(steps), 7):
            growing.extend(steps[start:start + 7])
            view.show(growing, None)
        incremental = view.plain_text()
        view.show(list(steps), None)  # a new list: a full layout
        assert view.plain_text() == incremental
        assert "↵" in incremental and len(incremental.splitlines()) > 5
        assert all(len(line) <= view.scrollable_content_region.width for line in incremental.splitlines())
