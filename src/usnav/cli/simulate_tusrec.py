"""`usnav simulate tusrec`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the `tusrec` command to the `usnav simulate` group."""
