"""The one hierarchy of errors a user can cause: each is reported as one line, never a traceback."""

from __future__ import annotations

EXIT_BAD_INPUT = 2
"""The exit status of every command for bad input: a flag, a file, a model or a prompt it cannot use."""


class TokenlabError(Exception):
    """Something the user can fix: the command line prints its message as one line and exits 2."""


class UserError(TokenlabError, ValueError):
    """Bad input found by a command (a flag out of range, a missing file, an empty prompt)."""
