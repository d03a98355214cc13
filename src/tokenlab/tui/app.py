"""The tokenlab Textual app."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textual.app import App

from tokenlab.engine import Engine
from tokenlab.lab.controller import LabController, LabSettings
from tokenlab.tui.screens.lab import LabScreen


class TokenLabApp(App[None]):
    """A terminal sampling lab: generation, knobs and inspection on one screen."""

    CSS_PATH = Path(__file__).with_name("lab.tcss")
    TITLE = "tokenlab"
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, engine: Engine | Callable[[], Engine], settings: LabSettings | None = None) -> None:
        super().__init__()
        self.controller = LabController(engine, settings or LabSettings())

    def on_mount(self) -> None:
        self.push_screen(LabScreen(self.controller))

    @property
    def lab(self) -> LabScreen:
        """The lab screen (the bottom of the screen stack)."""
        return next(screen for screen in self.screen_stack if isinstance(screen, LabScreen))
