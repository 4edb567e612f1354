"""``usnav freehand submission``: a folder for the official TUS-REC 2025 docker harness.

Layout (self-contained; it does not import usnav)::

    DIR/predict_ddfs.py          predict_ddfs(frames, landmark, data_path_calib, device) -> GP, GL, LP, LL
    DIR/usnav_freehand/          vendored copies of usnav.freehand.models, .infer, .decorrelation
                                 (+ the decorrelation calibration table)
    DIR/model/config.json        learned methods: the network config
    DIR/model/model.safetensors  and weights
    DIR/method.json              training-free methods (decorrelation, identity) instead of model/
    DIR/requirements.txt         numpy, torch, safetensors (pinned as in usnav)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from usnav.errors import InputError

__all__ = ["write_submission"]

_HERE = Path(__file__).resolve().parent
_VENDORED = ("models.py", "infer.py", "decorrelation.py", "decorrelation_calibration.json")


def _requirements() -> str:
    from importlib.metadata import PackageNotFoundError, version

    lines = []
    for name in ("numpy", "torch", "safetensors"):
        try:
            lines.append(f"{name}=={version(name)}")
        except PackageNotFoundError:  # pragma: no cover
            lines.append(name)
    return "\n".join(lines) + "\n"


def write_submission(model: str | Path, out: str | Path) -> Path:
    """Write the submission folder for ``model`` (run/checkpoint folder, ``default``,
    ``decorrelation`` or ``identity``); atomic: the folder is complete or absent."""
    from usnav.freehand.predict import resolve_checkpoint
    from usnav.io.atomic import atomic_dir

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out}: submission folder exists and is not empty")
    checkpoint = None if str(model) in ("decorrelation", "identity") else resolve_checkpoint(model)
    with atomic_dir(out) as tmp:
        shutil.copy2(_HERE / "_submission" / "predict_ddfs.py", tmp / "predict_ddfs.py")
        pkg = tmp / "usnav_freehand"
        pkg.mkdir()
        (pkg / "__init__.py").write_text('"""Vendored copy of usnav.freehand inference code (models, infer, decorrelation)."""\n')
        for name in _VENDORED:
            shutil.copy2(_HERE / name, pkg / name)
        if checkpoint is None:
            (tmp / "method.json").write_text(json.dumps({"method": str(model)}) + "\n")
        else:
            (tmp / "model").mkdir()
            for name in ("config.json", "model.safetensors"):
                shutil.copy2(checkpoint / name, tmp / "model" / name)
        (tmp / "requirements.txt").write_text(_requirements())
    return out
