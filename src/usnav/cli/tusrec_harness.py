"""`usnav tusrec evaluate-submission`: the organisers' harness for TUS-REC submissions."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def evaluate_submission_cmd(
    submission: Path = typer.Argument(..., help="Submission folder with predict_ddfs.py (official 2025 docker layout)."),
    data: Path = typer.Argument(..., help="Data set with ground truth (validation/test layout with dataset_keys.h5)."),
    out: Path = typer.Option(..., "--out", help="Results folder to write: metrics.h5, results.json, submission.log."),
    device: str = typer.Option("cpu", "--device", help="Device passed to predict_ddfs: cpu or cuda."),
    time_limit: float = typer.Option(3600.0, "--time-limit", help="Seconds allowed per scan (load frames + call + save)."),
    memory_limit_gb: Optional[float] = typer.Option(
        None, "--memory-limit-gb", help="Address-space limit of the submission process, GB (default: 75% of RAM)."),
    team: Optional[str] = typer.Option(None, "--team", help="Team name stored in results.json (default: the results folder name)."),
    work_dir: Optional[Path] = typer.Option(
        None, "--work-dir", help="Where the submission's arrays are staged (default: the system temp folder; needs ~2 x 5.9 GB per real scan)."),
) -> None:
    """Run a submission's predict_ddfs on every scan in a separate process, time and score it."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from usnav.harness.tusrec import evaluate_submission

    console = Console()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True, console=console) as progress:
        task = progress.add_task("evaluating", total=None)

        def advance(result) -> None:
            progress.advance(task)
            if result.status != "ok":
                progress.console.print(f"[yellow]{result.key}: {result.status}: {result.message}[/yellow]")

        summary = evaluate_submission(submission, data, out, device=device, time_limit_s=time_limit,
                                      memory_limit_gb=memory_limit_gb, team=team, on_scan=advance, work_dir=work_dir)

    def fmt(v, digits=3):
        return "-" if v is None else f"{v:.{digits}f}"

    table = Table(title=f"TUS-REC submission {submission} on {data}")
    for col in ("scan", "status", "GPE mm", "GLE mm", "LPE mm", "LLE mm", "score", "time s"):
        table.add_column(col, justify="left" if col in ("scan", "status") else "right")
    for r in summary["scans"]:
        table.add_row(r["key"], r["status"], fmt(r["GPE"]), fmt(r["GLE"]), fmt(r["LPE"], 4), fmt(r["LLE"], 4),
                      fmt(r["score"]), fmt(r["time_s"], 2))
    s = summary["summary"]
    table.add_row("mean (failed = 0)", f"{s['status_counts']['ok']}/{s['n_scans']} ok", "", "", "", "",
                  fmt(s["score_failed_as_identity"]), fmt(s["time_mean_s"], 2), style="bold")
    console.print(table)
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Add the harness commands to the `usnav tusrec` group."""
    app.command("evaluate-submission")(evaluate_submission_cmd)
