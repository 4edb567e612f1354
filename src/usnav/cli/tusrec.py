"""`usnav tusrec ...`: TUS-REC data sets, predictions and official scoring."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from usnav.errors import InputError

app = typer.Typer(help="TUS-REC data: validate, score predictions, write official DDFs.", no_args_is_help=True)


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True)


def _check_baseline(baseline: Optional[str], pred: Optional[Path]) -> None:
    from usnav.metrics.tusrec_dataset import BASELINES

    if baseline is not None and baseline not in BASELINES:
        raise InputError(f"--baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
    if (baseline is None) == (pred is None):
        raise InputError("give either a prediction folder PRED or --baseline identity|truth, not both and not neither")


@app.command("validate")
def validate(data: Path = typer.Argument(..., help="Data set folder (any official layout).")) -> None:
    """Open every scan of a data set and check frames, tforms, calibration and landmarks."""
    from usnav.io.tusrec import open_dataset

    ds = open_dataset(data)
    total = 0
    for ref in ds.scans:
        with ds.open_scan(ref) as scan:
            total += scan.n_frames
            typer.echo(f"{ref}: {scan.n_frames} frames {scan.frame_shape[0]}x{scan.frame_shape[1]}, "
                       f"{'no ' if scan.landmarks is None else len(scan.landmarks)} landmarks")
    typer.echo(f"{data}: {ds.layout} layout, {len(ds.scans)} scans, {total} frames: valid")


@app.command("score")
def score(
    data: Path = typer.Argument(..., help="Data set folder with ground truth (any official layout)."),
    pred: Optional[Path] = typer.Argument(None, help="Prediction folder <pred>/<subject>/<scan>.h5."),
    baseline: Optional[str] = typer.Option(None, help="Score a baseline instead: identity (score 0) or truth (score 1)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the per-scan and mean results as JSON."),
) -> None:
    """Score predicted transforms with the official metrics (GPE, GLE, LPE, LLE in mm, and scores)."""
    from rich.console import Console
    from rich.table import Table

    from usnav.io.atomic import atomic_path
    from usnav.io.tusrec import open_dataset
    from usnav.metrics.tusrec_dataset import iter_scores, summarise

    _check_baseline(baseline, pred)
    if pred is not None and not pred.is_dir():
        raise InputError(f"{pred}: prediction folder not found")
    ds = open_dataset(data)
    scores = []
    with _progress() as progress:
        task = progress.add_task("scoring", total=len(ds.scans))
        for s in iter_scores(ds, pred_root=pred, baseline=baseline, on_scan=lambda _: progress.advance(task)):
            scores.append(s)
    summary = summarise(scores)

    def fmt(v, digits=3):
        return "-" if v is None else f"{v:.{digits}f}"

    table = Table(title=f"TUS-REC scores: {pred if pred else baseline} on {data}")
    for col in ("subject", "scan", "GPE mm", "GLE mm", "LPE mm", "LLE mm", "score"):
        table.add_column(col, justify="left" if col in ("subject", "scan") else "right")
    for r in summary["scans"]:
        table.add_row(r["subject"], r["scan"], fmt(r["GPE"]), fmt(r["GLE"]), fmt(r["LPE"], 4), fmt(r["LLE"], 4),
                      fmt(r["score"]))
    m = summary["mean"]
    table.add_row("mean", f"{len(scores)} scans", fmt(m["GPE"]), fmt(m["GLE"]), fmt(m["LPE"], 4), fmt(m["LLE"], 4),
                  fmt(m["score"]), style="bold")
    Console().print(table)
    if json_out is not None:
        with atomic_path(json_out) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
        typer.echo(f"wrote {json_out}")


@app.command("ddfs")
def ddfs(
    data: Path = typer.Argument(..., help="Data set folder (any official layout)."),
    pred: Path = typer.Argument(..., help="Prediction folder <pred>/<subject>/<scan>.h5."),
    out: Path = typer.Argument(..., help="Output folder: <out>/<subject>/<scan>.h5 with GP, GL, LP, LL."),
) -> None:
    """Write the four official displacement arrays (float32, mm) of each scan, in chunks."""
    import h5py
    import numpy as np

    from usnav.io.atomic import atomic_path
    from usnav.io.tusrec import open_dataset, prediction_path, read_prediction
    from usnav.metrics.tusrec import iter_pixel_ddfs, landmark_ddf

    if not pred.is_dir():
        raise InputError(f"{pred}: prediction folder not found")
    ds = open_dataset(data)
    assert ds.calibration is not None
    S = ds.calibration.T_mm_from_pixel
    with _progress() as progress:
        task = progress.add_task("writing DDFs", total=len(ds.scans))
        for ref in ds.scans:
            with ds.open_scan(ref) as scan:
                path = prediction_path(pred, ref)
                if not path.exists():
                    raise InputError(f"{path}: prediction for scan {ref} is missing")
                p = read_prediction(path, n_frames=scan.n_frames)
                H, W = scan.frame_shape
                target = out / ref.subject / f"{ref.scan}.h5"
                with atomic_path(target) as tmp, h5py.File(tmp, "w") as f:
                    for name, T in (("GP", p.global_transforms), ("LP", p.local_transforms)):
                        dset = f.create_dataset(name, shape=(len(T), 3, H * W), dtype=np.float32,
                                                chunks=(1, 3, H * W), track_times=False)
                        for start, chunk in iter_pixel_ddfs(T, S, (H, W)):
                            dset[start : start + len(chunk)] = chunk
                    if scan.landmarks is not None:
                        f.create_dataset("GL", data=landmark_ddf(p.global_transforms, scan.landmarks, S).astype(np.float32),
                                         track_times=False)
                        f.create_dataset("LL", data=landmark_ddf(p.local_transforms, scan.landmarks, S).astype(np.float32),
                                         track_times=False)
            progress.advance(task)
    typer.echo(f"wrote DDFs of {len(ds.scans)} scans to {out}")


@app.command("baseline")
def baseline_cmd(
    data: Path = typer.Argument(..., help="Data set folder with ground truth."),
    kind: str = typer.Option(..., "--kind", help="identity (every frame at frame 0) or truth (the tracked transforms)."),
    out: Path = typer.Option(..., "--out", help="Prediction folder to write: <out>/<subject>/<scan>.h5."),
) -> None:
    """Write a baseline prediction set (known scores: identity 0, truth 1)."""
    from usnav.io.tusrec import open_dataset, prediction_path, write_prediction
    from usnav.metrics.tusrec_dataset import baseline_prediction

    _check_baseline(kind, None)
    ds = open_dataset(data)
    for ref in ds.scans:
        with ds.open_scan(ref) as scan:
            p = baseline_prediction(kind, scan.T_image0_from_image, scan.T_previous_from_image)
        write_prediction(prediction_path(out, ref), p.global_transforms, p.local_transforms)
    typer.echo(f"wrote {kind} predictions of {len(ds.scans)} scans to {out}")


def _mount_harness() -> None:
    from usnav.cli import tusrec_harness

    tusrec_harness.register(app)


_mount_harness()
