"""Score a whole TUS-REC prediction set against a data set (official 2025 rules)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from usnav.errors import input_error
from usnav.io.tusrec import Prediction, ScanRef, TusrecDataset, prediction_path, read_prediction
from usnav.metrics.tusrec import METRICS, ScanScore, score_scan

__all__ = ["BASELINES", "baseline_prediction", "iter_scores", "summarise"]

BASELINES = ("identity", "truth")


def baseline_prediction(name: str, true_global: np.ndarray, true_local: np.ndarray) -> Prediction:
    """The ``identity`` (every frame at frame 0) or ``truth`` prediction of a scan."""
    if name == "identity":
        eye = np.broadcast_to(np.eye(4), true_global.shape).copy()
        return Prediction(global_transforms=eye, local_transforms=eye.copy())
    if name == "truth":
        return Prediction(global_transforms=true_global, local_transforms=true_local)
    raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")


def iter_scores(
    dataset: TusrecDataset,
    pred_root: str | Path | None = None,
    baseline: str | None = None,
    on_scan: Callable[[ScanRef], None] | None = None,
) -> Iterator[ScanScore]:
    """Score every scan of ``dataset``: predictions from ``pred_root/<subject>/<scan>.h5``,
    or a named ``baseline``. Raises InputError for a missing or bad prediction file."""
    if (pred_root is None) == (baseline is None):
        raise ValueError("give exactly one of pred_root and baseline")
    for ref in dataset.scans:
        with dataset.open_scan(ref) as scan:
            true_global, true_local = scan.T_image0_from_image, scan.T_previous_from_image
            if baseline is not None:
                pred = baseline_prediction(baseline, true_global, true_local)
            else:
                path = prediction_path(pred_root, ref)  # type: ignore[arg-type]
                if not path.exists():
                    raise input_error(path, f"prediction for scan {ref} is missing")
                pred = read_prediction(path, n_frames=scan.n_frames)
            assert dataset.calibration is not None
            yield score_scan(
                ref.subject, ref.scan, pred.global_transforms, pred.local_transforms, true_global, true_local,
                dataset.calibration.T_mm_from_pixel, scan.frame_shape, scan.landmarks,
            )
        if on_scan is not None:
            on_scan(ref)


def summarise(scores: list[ScanScore]) -> dict:
    """The JSON summary: ``{"scans": [...], "mean": {...}}`` (errors in mm).

    Each scan entry has subject, scan, GPE, GLE, LPE, LLE, score, the identity
    errors and the per-metric normalised scores; ``mean`` averages each over
    the scans where it is defined.
    """
    rows = [s.as_dict() for s in scores]
    keys = [k for k in rows[0] if k not in ("subject", "scan")] if rows else []
    mean = {}
    for k in keys:
        values = [r[k] for r in rows if r[k] is not None]
        mean[k] = float(np.mean(values)) if values else None
    return {"metrics": list(METRICS), "scans": rows, "mean": mean}
