"""`usnav simulate remind`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the `remind` command to the `usnav simulate` group."""
