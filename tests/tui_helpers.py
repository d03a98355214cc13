"""Helpers for driving the lab app in tests."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.pilot import Pilot


async def wait_for(pilot: Pilot, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    """Let the app run until `predicate()` holds (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            lab = getattr(pilot.app, "lab", None)
            state = (len(lab.steps), lab.running, lab.stop_reason) if lab is not None else None
            raise AssertionError(f"timed out waiting for the lab (steps, running, stop): {state}")
        await pilot.pause(0.02)
