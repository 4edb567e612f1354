"""`usnav simulate ...`: synthetic data sets with known ground truth.

The commands live in their own modules (one per data set kind) and add
themselves to this group's app.
"""

from __future__ import annotations

import typer

from usnav.cli import simulate_remind, simulate_tusrec

app = typer.Typer(help="Simulate look-alike challenge data sets with known ground truth.", no_args_is_help=True)

simulate_tusrec.register(app)
simulate_remind.register(app)
