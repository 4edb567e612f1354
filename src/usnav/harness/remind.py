"""The ReMIND2Reg submission check and scoring: displacement fields -> per-pair metrics.

A submission is a folder of ``disp_<fc>_<fm>_<mc>_<mm>.nii.gz`` files, one per
expected pair (FORMATS.md section 2): shape (X, Y, Z, 3) on the fixed (iUS)
grid, float32, voxel units, pull direction, stored with the fixed grid's
affine. Every file is checked before anything is scored; any missing or
malformed file is the submission's input error (one sentence, exit code 2,
no results written).

Expected pairs: the data set's validation and test pairs with landmarks
(``split="auto"``; all pairs with landmarks when the data set has no
validation/test pairs), or one named split.

Runtimes come from a JSON object mapping a pair to seconds; a key may be the
displacement file name (``disp_0099_0000_0099_0001.nii.gz``), that name
without ``.nii.gz``, or the bare id ``0099_0000_0099_0001``. By default
``<PRED_DIR>/runtimes.json`` is used when present. A pair without a runtime
is stored with ``runtime_s: null``; the leaderboard counts it as 3500 s.

Metrics per pair (:func:`usnav.metrics.remind.score_pair`): TRE and TRE30
(mm, with the initial values), SDlogJ and the folding fraction.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from usnav import __version__
from usnav.errors import InputError, input_error
from usnav.io.json_file import read_json
from usnav.io.nifti import open_nifti

__all__ = ["expected_pairs", "read_runtimes", "check_displacement_file", "evaluate_remind", "RESULTS_JSON"]

RESULTS_JSON = "results.json"
RUNTIMES_JSON = "runtimes.json"
_AFFINE_ATOL = 1e-4


def expected_pairs(dataset, split: str = "auto") -> list:
    """The pairs a submission must cover (with landmarks on both sides)."""
    if split == "auto":
        pairs = [p for p in dataset.pairs("val") + dataset.pairs("test") if p.has_landmarks]
        if not pairs:
            pairs = [p for p in dataset.pairs("all") if p.has_landmarks]
    elif split in ("train", "val", "test", "all"):
        pairs = [p for p in dataset.pairs(split) if p.has_landmarks]
    else:
        raise InputError(f"--split must be auto, train, val, test or all, got {split!r}")
    if not pairs:
        raise input_error(dataset.root, f"has no registration pairs with landmarks (split {split})")
    return pairs


def _pair_keys(disp_name: str) -> tuple[str, ...]:
    stem = disp_name[: -len(".nii.gz")] if disp_name.endswith(".nii.gz") else disp_name
    return disp_name, stem, stem[len("disp_"):]


def read_runtimes(path: str | Path, disp_names: list[str]) -> dict[str, float]:
    """Runtimes (s) by displacement file name from a timing JSON (see module doc)."""
    path = Path(path)
    if not path.is_file():
        raise input_error(path, "runtime file not found")
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise input_error(path, "must hold a JSON object mapping each pair (displacement file name) to seconds")
    out: dict[str, float] = {}
    for name in disp_names:
        for key in _pair_keys(name):
            if key in doc:
                value = doc[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                    raise input_error(path, f"runtime of {key!r} must be a non-negative number of seconds, got {value!r}")
                out[name] = float(value)
                break
    return out


def _grid(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of a NIfTI image from its header (no voxel data read)."""
    img = open_nifti(path)
    return tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=np.float64)


def check_displacement_file(path: Path, fixed_shape: tuple[int, int, int], fixed_affine: np.ndarray) -> None:
    """Header checks of one displacement file: shape fixed grid + (3,), float32, fixed affine."""
    img = open_nifti(path, missing="displacement field missing from the submission")
    expected = (*fixed_shape, 3)
    if tuple(img.shape) != expected:
        raise input_error(path, f"has shape {tuple(img.shape)}, expected {expected} (the fixed image grid + 3 channels)")
    dtype = img.get_data_dtype()
    if dtype != np.float32:
        raise input_error(path, f"has dtype {dtype}, expected float32")
    if not np.allclose(np.asarray(img.affine, dtype=np.float64), fixed_affine, atol=_AFFINE_ATOL, rtol=0):
        raise input_error(path, "affine differs from the fixed image's affine (fields must be saved on the fixed grid)")


def evaluate_remind(
    data: str | Path,
    pred_dir: str | Path,
    out: str | Path,
    runtimes: str | Path | None = None,
    split: str = "auto",
    team: str | None = None,
    on_pair: Callable[[str], None] | None = None,
) -> dict:
    """Check and score a submission; write ``out`` (a ``.json`` file, or a folder
    receiving ``results.json``) atomically; return the results document."""
    from usnav.io.atomic import atomic_path
    from usnav.io.learn2reg import check_landmark_pair, open_dataset, read_displacement
    from usnav.metrics.remind import score_pair

    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise input_error(pred_dir, "prediction folder not found")
    ds = open_dataset(data)
    pairs = expected_pairs(ds, split)
    names = [p.disp_name for p in pairs]
    # Every check before any scoring: a broken submission fails fast and writes nothing.
    grids = {}
    for pair in pairs:
        shape, affine = _grid(pair.fixed)
        if len(shape) != 3:
            raise input_error(pair.fixed, f"fixed image must be 3D, got shape {shape}")
        grids[pair.disp_name] = (shape, affine)
    missing = [n for n in names if not (pred_dir / n).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more of {len(names)} expected)" if len(missing) > 1 else ""
        raise input_error(pred_dir / missing[0], f"displacement field missing from the submission{more}")
    for pair in pairs:
        check_displacement_file(pred_dir / pair.disp_name, *grids[pair.disp_name])
    runtime_file = Path(runtimes) if runtimes is not None else (pred_dir / RUNTIMES_JSON)
    times = read_runtimes(runtime_file, names) if (runtimes is not None or runtime_file.is_file()) else {}

    rows = []
    for pair in pairs:
        shape, affine = grids[pair.disp_name]
        lms = check_landmark_pair(pair.fixed_landmarks, pair.moving_landmarks, shape)
        assert lms is not None
        disp = read_displacement(pred_dir / pair.disp_name, shape=shape).array
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        score = score_pair(pair.disp_name, disp, lms[0], lms[1], spacing, runtime_s=times.get(pair.disp_name))
        del disp
        row = score.as_dict()
        row.update({"fixed": str(pair.fixed.relative_to(ds.root)), "moving": str(pair.moving.relative_to(ds.root)),
                    "split": pair.split})
        rows.append(row)
        if on_pair is not None:
            on_pair(pair.disp_name)

    def mean(key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    doc = {
        "challenge": "remind",
        "usnav_version": __version__,
        **({"team": team} if team else {}),
        "data": str(Path(data).resolve()),
        "predictions": str(pred_dir.resolve()),
        "runtimes_file": str(runtime_file.resolve()) if times or runtimes is not None else None,
        "pairs": rows,
        "summary": {
            "n_pairs": len(rows),
            **{k: mean(k) for k in ("tre_initial_mm", "tre_mm", "tre30_initial_mm", "tre30_mm", "sdlogj",
                                    "folding_fraction", "runtime_s")},
            "runtime_missing": sum(r["runtime_s"] is None for r in rows),
        },
    }
    text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    out = Path(out)
    target = out if out.suffix.lower() == ".json" else out / RESULTS_JSON
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return doc
