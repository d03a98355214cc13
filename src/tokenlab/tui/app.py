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
        self.crash: str | None = None
        """One line on the unexpected error that stopped the lab, if one did."""
        self.crash_log: Path | None = None
        """Where the full traceback of that error was written (None if it could not be)."""
        self.autosaved: Path | None = None
        """Where the session was autosaved on exit, if it was."""
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
            self.autosaved = save(controller.session(), autosave_path(self.autosave_slot))
            prune_autosaves()
        except OSError:
            pass  # never block quitting on a full disk or a read-only home

    def _handle_exception(self, error: Exception) -> None:
        # Textual's one funnel for unhandled errors: it stops the app with return code 1 (the session is
        # still autosaved on unmount). Keep one line for the command line to print and the traceback in a
        # file, instead of a screen-long traceback after the terminal is restored.
        if self.crash is None:
            self.crash = crash_line(error)
            self.crash_log = write_crash_log(error)
        super()._handle_exception(error)

    def _print_error_renderables(self) -> None:
        if self.crash is not None:
            self._exit_renderables.clear()  # `tokenlab lab` prints self.crash instead
        super()._print_error_renderables()

    @property
    def lab(self) -> LabScreen:
        """The lab screen (the bottom of the screen stack)."""
        return next(screen for screen in self.screen_stack if isinstance(screen, LabScreen))


def crash_line(error: BaseException) -> str:
    """An unexpected error as one line: its type, message and the innermost place of tokenlab it came from."""
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    ours = [frame for frame in frames if "tokenlab" in frame.filename] or frames
    where = f" (in {Path(ours[-1].filename).name}:{ours[-1].lineno})" if ours else ""
    message = " ".join(str(error).split()) or "no message"
    return f"{type(error).__name__}: {message[:300]}{where}"


def write_crash_log(error: BaseException) -> Path | None:
    """Write the full traceback to crash.txt in the data directory (above the autosaves); None if impossible."""
    import traceback

    from tokenlab.files import write_text_atomic
    from tokenlab.lab.session import autosave_dir

    try:
        return write_text_atomic(autosave_dir().parent / "crash.txt",
                                 "".join(traceback.format_exception(type(error), error, error.__traceback__)))
    except OSError:
        return None
