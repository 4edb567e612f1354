"""`usnav remind evaluate`: check and score a ReMIND2Reg displacement-field submission."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def evaluate_cmd(
    data: Path = typer.Argument(..., help="Learn2Reg/ReMIND2Reg data set folder with landmarks."),
    pred_dir: Path = typer.Argument(..., help="Submission folder with disp_<fc>_<fm>_<mc>_<mm>.nii.gz files."),
    out: Path = typer.Option(..., "--out", help="Results: a .json file, or a folder receiving results.json."),
    runtimes: Optional[Path] = typer.Option(
        None, "--runtimes", help="JSON mapping pair (disp file name) -> seconds (default: PRED_DIR/runtimes.json if present)."),
    split: str = typer.Option("auto", "--split", help="Pairs to expect: auto (val+test), train, val, test or all."),
    team: Optional[str] = typer.Option(None, "--team", help="Team name stored in the results (default: folder name)."),
) -> None:
    """Check every expected displacement field (shape, dtype, grid) and score TRE, TRE30, SDlogJ, foldings."""
    from rich.console import Console
    from rich.table import Table

    from usnav.harness.remind import evaluate_remind

    doc = evaluate_remind(data, pred_dir, out, runtimes=runtimes, split=split, team=team)

    def fmt(v, digits=2):
        return "-" if v is None else f"{v:.{digits}f}"

    table = Table(title=f"ReMIND2Reg submission {pred_dir} on {data}")
    for col in ("pair", "TRE init mm", "TRE mm", "TRE30 mm", "SDlogJ", "folding", "runtime s"):
        table.add_column(col, justify="left" if col == "pair" else "right")
    for r in doc["pairs"]:
        table.add_row(r["pair"], fmt(r["tre_initial_mm"]), fmt(r["tre_mm"]), fmt(r["tre30_mm"]), fmt(r["sdlogj"], 3),
                      fmt(r["folding_fraction"], 4), fmt(r["runtime_s"], 1))
    s = doc["summary"]
    table.add_row("mean", fmt(s["tre_initial_mm"]), fmt(s["tre_mm"]), fmt(s["tre30_mm"]), fmt(s["sdlogj"], 3),
                  fmt(s["folding_fraction"], 4), fmt(s["runtime_s"], 1), style="bold")
    Console().print(table)
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Add `evaluate` to the `usnav remind` group."""
    app.command("evaluate")(evaluate_cmd)
