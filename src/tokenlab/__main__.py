"""`python -m tokenlab`."""

from __future__ import annotations

from tokenlab.cli import main

main()
