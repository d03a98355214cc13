"""Widgets of the lab screen."""

from __future__ import annotations

from tokenlab.tui.widgets.panels import CandidatesTable, DistributionStrip, KnobPanel, PromptBar, StatusLine
from tokenlab.tui.widgets.token_view import TokenView

__all__ = ["CandidatesTable", "DistributionStrip", "KnobPanel", "PromptBar", "StatusLine", "TokenView"]
