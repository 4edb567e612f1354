"""Predict every scan of a data set with a named method and write TUS-REC prediction files.

Methods (``METHODS``):
- ``identity``: every frame at frame 0 (the normalisation reference, score 0),
- ``decorrelation``: classical speckle-decorrelation tracking (no training,
  :mod:`usnav.freehand.decorrelation`),
- ``two-frame`` / ``sequence``: learned models loaded from a run folder
  (its ``best/`` checkpoint, else ``last/``), a checkpoint folder, or
  ``default`` (the weights shipped with usnav).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from usnav.errors import InputError

__all__ = ["METHODS", "DEFAULT_MODEL_DIR", "resolve_checkpoint", "Predictor", "make_predictor", "predict_dataset"]

METHODS = ("identity", "decorrelation", "two-frame", "sequence")
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "freehand"


def resolve_checkpoint(model: str | Path) -> Path:
    """The checkpoint folder (with config.json + model.safetensors) named by ``model``:
    ``default``, a run folder (uses ``best/`` then ``last/``) or a checkpoint folder."""
    if str(model) == "default":
        folder = DEFAULT_MODEL_DIR
        if not (folder / "model.safetensors").exists():
            raise InputError(f"{folder}: the default freehand weights are not installed")
        return folder
    path = Path(model)
    for candidate in (path, path / "best", path / "last"):
        if (candidate / "model.safetensors").exists() and (candidate / "config.json").exists():
            return candidate
    raise InputError(f"{path}: not a model folder (no config.json + model.safetensors in it, best/ or last/)")


class Predictor:
    """Callable ``(frames (N, H, W) uint8 array or lazy dataset, T_mm_from_pixel, progress) -> (G, L)``."""

    def __init__(self, method: str, device: str = "cpu", checkpoint: Path | None = None) -> None:
        self.method = method
        self.device = device
        self.checkpoint = checkpoint
        self.model = None
        self.config: dict = {}
        if method in ("two-frame", "sequence"):
            from usnav.freehand.infer import load_model

            assert checkpoint is not None
            self.model, self.config = load_model(checkpoint, device)

    def __call__(self, frames, T_mm_from_pixel: np.ndarray, progress: Callable[[int], None] | None = None):
        n = int(frames.shape[0])
        if self.method == "identity":
            from usnav.freehand.infer import identity_transforms

            if progress:
                progress(2 * n)
            return identity_transforms(n)
        if self.method == "decorrelation":
            from usnav.freehand.decorrelation import estimate_transforms

            return estimate_transforms(frames, T_mm_from_pixel, progress=progress)
        from usnav.freehand.infer import predict_scan

        return predict_scan(self.model, self.config, frames, T_mm_from_pixel, self.device, progress=progress)


def make_predictor(method: str | None, model: str | Path | None, device: str = "cpu") -> Predictor:
    """Build a predictor; ``method`` defaults to the model's method when a model is given."""
    if method is not None and method not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if method in ("identity", "decorrelation"):
        return Predictor(method, device)
    if model is None:
        raise InputError(f"--model is required for method {method or 'two-frame|sequence'}")
    checkpoint = resolve_checkpoint(model)
    model_method = json.loads((checkpoint / "config.json").read_text())["model"]["method"]
    if method is not None and method != model_method:
        raise InputError(f"{checkpoint}: the model was trained with method {model_method!r}, not {method!r}")
    return Predictor(model_method, device, checkpoint)


def predict_dataset(
    data: str | Path, out: str | Path, predictor: Predictor, progress=None, overwrite: bool = False,
) -> dict:
    """Write ``out/<subject>/<scan>.h5`` for every scan; scans already written are skipped
    (files are written atomically, so an existing file is complete). Returns counts and seconds."""
    import time

    from usnav.io.tusrec import open_dataset, prediction_path, write_prediction

    ds = open_dataset(data, require_calibration=True)
    if ds.calibration is None:
        raise InputError(f"{data}: no calib_matrix.csv: predictions are in image-mm and need the pixel scaling")
    S = ds.calibration.T_mm_from_pixel
    written = skipped = 0
    seconds = {}
    for ref in ds.scans:
        target = prediction_path(out, ref)
        if target.exists() and not overwrite:
            skipped += 1
            continue
        with ds.open_scan(ref) as scan:
            task = progress.add_task(f"{ref}", total=2 * scan.n_frames) if progress is not None else None
            advance = (lambda k: progress.advance(task, k)) if progress is not None else None
            t0 = time.perf_counter()
            G, L = predictor(scan.frames, S, advance)
            seconds[str(ref)] = time.perf_counter() - t0
            if progress is not None:
                progress.remove_task(task)
        write_prediction(target, G, L)
        written += 1
    return {"written": written, "skipped": skipped, "seconds": seconds}
