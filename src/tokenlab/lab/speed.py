"""Noticing when decoding speed collapses, and saying what to do about it."""

from __future__ import annotations

import os

SLOW_RATIO = 1 / 3
"""A speed below this fraction of the best one seen counts as collapsed."""
MIN_SECONDS = 0.1
"""Stepping time a speed is measured over at least: shorter batches are added to the next one (the
first step after a pause can be nearly free, its token decoded in the background meanwhile)."""


class SpeedWatch:
    """Compares each batch's decoding speed with the best seen so far and names a likely cause.

    Feed it the tokens and the seconds spent stepping (pauses left out) after every batch of steps;
    `hint` is a short status-line text while the speed stays below SLOW_RATIO of its smoothed best.
    """

    def __init__(self, threads: int, cores: int | None = None) -> None:
        self.threads = threads
        self.cores = cores or os.cpu_count() or 1
        self.smoothed: float | None = None
        self.best = 0.0
        self.batches = 0
        self.hint: str | None = None
        self._carry = (0, 0.0)
        """Tokens and seconds of batches too short to measure alone."""

    def update(self, tokens: int, seconds: float) -> str | None:
        """Take one batch's tokens and stepping seconds; return the hint (None when the speed is fine)."""
        if tokens <= 0 or seconds <= 0:
            return self.hint
        tokens, seconds = tokens + self._carry[0], seconds + self._carry[1]
        if seconds < MIN_SECONDS:
            self._carry = (tokens, seconds)
            return self.hint
        self._carry = (0, 0.0)
        rate = tokens / seconds
        # smoothed over a few batches, so that one slow batch (a key, a redraw) raises no alarm
        self.smoothed = rate if self.smoothed is None else 0.5 * self.smoothed + 0.5 * rate
        self.best = max(self.best, self.smoothed)
        self.batches += 1
        collapsed = self.batches >= 3 and self.smoothed < SLOW_RATIO * self.best
        self.hint = slow_hint(self.threads, self.cores, self._crowded()) if collapsed else None
        return self.hint

    def _crowded(self) -> bool:
        try:
            return os.getloadavg()[0] > self.cores + 0.5
        except OSError:  # no load average on this platform
            return False


def slow_hint(threads: int, cores: int, crowded: bool) -> str:
    """The status-line text for a collapsed speed: the likely cause and the fix."""
    cause = "another process is using the cores" if crowded else "the speed fell to a third of its best"
    if threads > 1:
        return f"slow: {cause}; try --threads 1"
    return f"slow: {cause}; close other programs or wait"
