"""The tokenlab Textual app."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from textual.app import App

from tokenlab.engine import Engine
from tokenlab.lab.controller import LabController, LabSettings
from tokenlab.tui.screens.lab import LabScreen


SWITCH_INTERVAL = 0.0005
"""Seconds a thread may hold the GIL while another waits for it (Python's default is 0.005)."""


class TokenLabApp(App[None]):
    """A terminal sampling lab: generation, knobs and inspection on one screen."""

    CSS_PATH = Path(__file__).with_name("lab.tcss")
    TITLE = "tokenlab"
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, engine: Engine | Callable[[], Engine], settings: LabSettings | None = None) -> None:
        super().__init__()
        self.controller = LabController(engine, settings or LabSettings())
        self.startup_note: str | None = None
        """A notification to show once the lab is up."""
        self.autosave_enabled = True
        """Save the session to the autosave file on exit (tokenlab lab --restore brings it back)."""
        from tokenlab.lab.session import new_autosave_slot

        self.autosave_slot = new_autosave_slot()
        """This lab's own autosave file (other labs running at the same time have theirs)."""

    def on_mount(self) -> None:
        # The controller thread needs the GIL back after every llama.cpp call; with the default 5 ms
        # switch interval a long screen render would stall generation for that long each time.
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.push_screen(LabScreen(self.controller))
        if self.startup_note:
            self.notify(self.startup_note, timeout=8)

    def on_unmount(self) -> None:
        sys.setswitchinterval(self._switch_interval)
        self.autosave()

    def autosave(self) -> None:
        """Save the session for `tokenlab lab --restore` once the controller thread has let go of it."""
        from tokenlab.lab.session import autosave_path, prune_autosaves, save

        controller = self.controller
        controller.quit()
        if not self.autosave_enabled or not controller.stopped.wait(2) or controller.generation is None:
            return
        if not controller.generation.steps and not controller.tree.runs:
            return
        try:
            save(controller.session(), autosave_path(self.autosave_slot))
            prune_autosaves()
        except OSError:
            pass  # never block quitting on a full disk or a read-only home

    @property
    def lab(self) -> LabScreen:
        """The lab screen (the bottom of the screen stack)."""
        return next(screen for screen in self.screen_stack if isinstance(screen, LabScreen))
