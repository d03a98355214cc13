"""The Textual lab: live heat-coloured generation, hotkey knobs, inspection at a paused step."""

from __future__ import annotations
