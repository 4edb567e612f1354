"""`usnav freehand ...`: trackerless pose estimation (train, predict, submission folder)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from usnav.batch.options import ray_option, retries_option, workers_option
from usnav.errors import InputError

app = typer.Typer(help="Trackerless freehand pose estimation: train, predict, build a TUS-REC submission.",
                  no_args_is_help=True)


def _parse_hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--frame-size must look like HxW (e.g. 96x128), got {text!r}") from None
    if h < 16 or w < 16:
        raise InputError(f"--frame-size must be at least 16x16, got {text!r}")
    return h, w


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), transient=True)


@app.command("train")
def train_cmd(
    data: List[Path] = typer.Argument(..., help="Data set folder(s) with ground truth (official layouts)."),
    method: str = typer.Option("sequence", help="two-frame (the challenge baseline) or sequence."),
    out: Path = typer.Option(..., "--out", help="Run folder: metrics.csv, config.json, best/ and last/ checkpoints."),
    epochs: int = typer.Option(10, help="Number of epochs."),
    frame_size: str = typer.Option("96x128", help="Network input size HxW (frames are area-downsampled)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped."),
    seed: int = typer.Option(0, help="Random seed (initialisation, sample order, augmentation)."),
    val_fraction: float = typer.Option(0.1, help="Fraction of scans held out for validation."),
    batch_size: int = typer.Option(0, help="Batch size per process (0: 16 pairs two-frame, 8 windows sequence; 4 with frame input)."),
    lr: float = typer.Option(0.0, help="Adam learning rate (0: 1e-4 two-frame and frame-input sequence, 5e-4 feature-input sequence)."),
    steps_per_epoch: int = typer.Option(0, help="Cap the steps of an epoch (0: a full pass)."),
    checkpoint_every: int = typer.Option(0, help="Also save last/ every K steps."),
    max_minutes: float = typer.Option(0.0, help="Stop (and save) after this wall time; 0: no limit."),
    window: int = typer.Option(256, help="sequence: local transforms per training window."),
    window_stride: int = typer.Option(16, help="sequence: frames between the starts of training windows."),
    preset: str = typer.Option("lite", help="two-frame network: lite (CPU) or b1 (EfficientNet-B1 widths)."),
    mirror_p: float = typer.Option(0.0, help="sequence: probability of z-mirroring a window's labels (0: learn the protocol's signs)."),
    start_p: float = typer.Option(0.25, help="sequence: probability that a training window starts at the scan's first frame."),
    frame_index: bool = typer.Option(True, "--frame-index/--no-frame-index", help="sequence: each pair's index in the scan as an input."),
    infer_window: int = typer.Option(0, help="sequence: pairs per inference pass (-1: --window, overlapping; 0: the whole scan)."),
    min_frames: int = typer.Option(64, help="sequence: scans shorter than a window but this long give one padded window (0: skipped)."),
    threads: int = typer.Option(0, help="torch CPU threads per process (0: leave torch's default)."),
) -> None:
    """Train a pose network (single process, or DDP under torchrun)."""
    import torch

    from usnav.freehand.train import METHODS_LEARNED, TrainConfig, train

    if method not in METHODS_LEARNED:
        raise InputError(f"--method must be one of {', '.join(METHODS_LEARNED)} to train, got {method!r}")
    if preset not in ("lite", "b1"):
        raise InputError(f"--preset must be lite or b1, got {preset!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    for name, p in (("--mirror-p", mirror_p), ("--start-p", start_p)):
        if not 0.0 <= p <= 1.0:
            raise InputError(f"{name} must be a probability in [0, 1], got {p}")
    if infer_window < -1 or min_frames < 0:
        raise InputError(f"--infer-window must be >= -1 and --min-frames >= 0, got {infer_window} and {min_frames}")
    for d in data:
        if not d.is_dir():
            raise InputError(f"{d}: data set folder not found")
    if threads > 0:
        torch.set_num_threads(threads)
    cfg = TrainConfig(method=method, input_hw=_parse_hw(frame_size), epochs=epochs, batch_size=batch_size, lr=lr,
                      seed=seed, val_fraction=val_fraction, steps_per_epoch=steps_per_epoch,
                      checkpoint_every=checkpoint_every, max_minutes=max_minutes, window=window,
                      window_stride=window_stride, preset=preset, mirror_p=mirror_p, start_p=start_p,
                      frame_index_input=frame_index, infer_window=infer_window, min_frames=min_frames)
    from rich.console import Console

    console = Console(stderr=True)
    result = train(data, out, cfg, device=device, resume=resume, log=lambda m: console.log(m))
    typer.echo(f"trained {method}: {result['epochs']} epochs, {result['global_step']} steps, best validation score "
               f"{result['best_score']:.4f}; checkpoints in {out}")


@app.command("predict")
def predict_cmd(
    data: Path = typer.Argument(..., help="Data set folder (any official layout)."),
    model: Optional[str] = typer.Option(None, help="Run folder, checkpoint folder or 'default' (learned methods)."),
    out: Path = typer.Option(..., "--out", help="Prediction folder <out>/<subject>/<scan>.h5."),
    method: Optional[str] = typer.Option(None, help="identity, decorrelation, two-frame or sequence (default: the model's)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    overwrite: bool = typer.Option(False, help="Re-predict scans already predicted (default: skip them)."),
    workers: Optional[int] = workers_option(),  # batch layer (usnav.batch)
    ray: Optional[str] = ray_option(),  # batch layer
    retries: int = retries_option(),  # batch layer
) -> None:
    """Predict global and local transforms of every scan (resumable: scans in the folder's manifest are skipped)."""
    from usnav.freehand.predict import make_predictor

    if method is None and model is None:
        raise InputError("give --model (a run folder or 'default') or --method identity|decorrelation")
    predictor = make_predictor(method, model, device)
    # ---- batch layer (usnav.batch): one case per scan, resumable; --workers / --ray / --retries
    from usnav.batch import Case, Resources, run_batch
    from usnav.batch.options import batch_options, finish
    from usnav.io.tusrec import open_dataset

    opts = batch_options(workers, ray, retries, resources=Resources.for_device(device),
                         description=f"predict {predictor.method}", redo=overwrite)
    ds = open_dataset(data, require_calibration=True)
    if ds.calibration is None:
        raise InputError(f"{data}: no calib_matrix.csv: predictions are in image-mm and need the pixel scaling")
    spec = {"data": str(Path(data).resolve()), "method": predictor.method,
            "model": None if model is None else (model if model == "default" else str(Path(model).resolve())),
            "device": device}
    _PREDICTORS[(spec["method"], spec["model"], device)] = predictor  # in-process runs reuse it
    cases = [Case(f"{ref.subject}/{ref.scan}", {**spec, "subject": ref.subject, "scan": ref.scan}) for ref in ds.scans]
    report = run_batch(_predict_scan_case, cases, out, opts)
    typer.echo(f"{predictor.method}: wrote {len(report.done)} predictions, skipped {len(report.skipped)} finished, in {out}")
    finish(report)  # exit code 3 if some scans failed (see usnav_failures.json)


_PREDICTORS: dict = {}  # per worker process: (method, model, device) -> Predictor


def _predict_scan_case(payload: dict, out: Path) -> dict:
    """Batch task (usnav.batch): predict one scan into ``out/<subject>/<scan>.h5``."""
    import time

    from usnav.freehand.predict import make_predictor
    from usnav.io.tusrec import ScanRef, open_dataset, prediction_path, write_prediction

    key = (payload["method"], payload["model"], payload["device"])
    if key not in _PREDICTORS:
        _PREDICTORS[key] = make_predictor(*key)
    ds = open_dataset(payload["data"], require_calibration=True)
    ref = ScanRef(payload["subject"], payload["scan"])
    with ds.open_scan(ref) as scan:
        t0 = time.perf_counter()
        G, L = _PREDICTORS[key](scan.frames, ds.calibration.T_mm_from_pixel, None)
        seconds = time.perf_counter() - t0
    write_prediction(prediction_path(out, ref), G, L)
    return {"seconds": seconds}


@app.command("submission")
def submission_cmd(
    model: str = typer.Option(..., help="Run folder, checkpoint folder, 'default', or 'decorrelation'."),
    out: Path = typer.Option(..., "--out", help="Submission folder to create (predict_ddfs.py, model files, requirements.txt)."),
) -> None:
    """Write a self-contained folder for the official TUS-REC 2025 docker harness."""
    from usnav.freehand.submission import write_submission

    folder = write_submission(model, out)
    typer.echo(f"wrote submission folder {folder}")
