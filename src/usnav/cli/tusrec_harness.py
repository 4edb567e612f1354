"""`usnav tusrec evaluate-submission`: the organisers' harness for TUS-REC submissions."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the harness commands to the `usnav tusrec` group."""
