"""Screens of the lab."""

from __future__ import annotations
