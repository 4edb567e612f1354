"""`usnav tusrec evaluate-submission`: the organisers' harness for TUS-REC submissions."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from usnav.batch.options import ray_option, retries_option, workers_option


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
    redo: bool = typer.Option(False, "--redo", help="Evaluate every scan again, even those finished in an earlier run."),
    workers: Optional[int] = workers_option(),  # batch layer (usnav.batch)
    ray: Optional[str] = ray_option(),  # batch layer
    retries: int = retries_option(),  # batch layer
) -> None:
    """Run a submission's predict_ddfs on every scan in a separate process, time and score it.

    One batch case per scan: `--workers N` runs N scans at once (each worker keeps its own submission
    process; the per-scan time then shares the machine), `--ray` runs them on a Ray cluster. Rerunning
    the same command skips scans already evaluated with the same submission files and limits."""
    from rich.console import Console
    from rich.table import Table

    from usnav.batch.options import batch_options, finish
    from usnav.harness.tusrec import run_evaluation

    console = Console()
    opts = batch_options(workers, ray, retries, description="evaluating", redo=redo)
    evaluation = run_evaluation(submission, data, out, device=device, time_limit_s=time_limit,
                                memory_limit_gb=memory_limit_gb, team=team, work_dir=work_dir, batch=opts)
    summary = evaluation.summary
    for r in summary["scans"]:
        if r["status"] != "ok":
            console.print(f"[yellow]{r['key']}: {r['status']}: {r['message']}[/yellow]")

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
    finish(evaluation.report)  # exit code 3 if the harness itself failed on some scan


def register(app: typer.Typer) -> None:
    """Add the harness commands to the `usnav tusrec` group."""
    app.command("evaluate-submission")(evaluate_submission_cmd)
