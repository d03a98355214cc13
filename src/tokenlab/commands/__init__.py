"""Typer sub-applications mounted by tokenlab.cli."""
