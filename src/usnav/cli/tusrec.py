"""`usnav tusrec ...`: TUS-REC data sets, predictions and official scoring."""

from __future__ import annotations

import typer

app = typer.Typer(help="TUS-REC data: validate, score predictions, write official DDFs.", no_args_is_help=True)
