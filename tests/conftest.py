"""Shared fixtures: small synthetic data, the PLUS conformance data location."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def plus_data_dir() -> Path:
    """Folder with the PLUS toolkit's real sweeps (env USNAV_PLUS_DATA)."""
    return Path(os.environ.get("USNAV_PLUS_DATA", REPO_ROOT.parent / "shared" / "data" / "plus"))


@pytest.fixture
def plus_dir() -> Path:
    d = plus_data_dir()
    if not (d / "SpinePhantomFreehand.igs.mha").exists():
        pytest.skip(f"PLUS conformance data not found in {d} (set USNAV_PLUS_DATA)")
    return d


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test, restored afterwards (small models; the machine is shared)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("USNAV_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set USNAV_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# ----------------------------------------------------------------- TUS-REC fixtures

S_TUSREC = np.diag([0.229, 0.221, 1.0, 1.0])


def smooth_trajectory(rng: np.random.Generator, n_frames: int) -> np.ndarray:
    """(N, 4, 4) tracker-from-tool poses along a smooth random path (float32-exact)."""
    from usnav import geometry as g

    t = np.linspace(0, 1, n_frames)[:, None]
    freq = rng.uniform(0.5, 2.0, size=(1, 6))
    phase = rng.uniform(0, 2 * np.pi, size=(1, 6))
    amp = np.array([[0.3, 0.3, 0.5, 20.0, 20.0, 40.0]])
    params = amp * np.sin(2 * np.pi * freq * t + phase) + np.array([[0, 0, 0, 100.0, -50.0, 1500.0]])
    T = g.matrix_from_params(params)
    return T.astype(np.float32).astype(np.float64)


def calibration_example():
    from usnav import geometry as g
    from usnav.io.tusrec import Calibration

    C = g.matrix_from_params([0.02, -0.03, 1.55, 10.0, -30.0, 5.0])
    return Calibration(T_mm_from_pixel=S_TUSREC.copy(), T_tool_from_mm=C)


def make_tusrec_dataset(
    root: Path,
    layout: str = "train",
    subjects: tuple[str, ...] = ("000", "001"),
    scans: tuple[str, ...] = ("LH_rotation", "RH_rotation"),
    n_frames: int = 12,
    frame_shape: tuple[int, int] = (24, 32),
    n_landmarks: int = 10,
    seed: int = 0,
) -> dict:
    """Write a small synthetic data set; return the arrays written, keyed by (subject, scan)."""
    from usnav.io import tusrec

    rng = np.random.default_rng(seed)
    tusrec.write_calibration(root / tusrec.CALIB_FILENAME, calibration_example())
    written = {}
    refs = []
    H, W = frame_shape
    for subject in subjects:
        marks = {}
        for scan in scans:
            frames = rng.integers(0, 256, size=(n_frames, H, W), dtype=np.uint8)
            tforms = smooth_trajectory(rng, n_frames)
            tusrec.write_scan(root, subject, scan, frames, tforms, layout=layout)
            lm = np.stack([rng.integers(1, n_frames, n_landmarks), rng.integers(1, W + 1, n_landmarks),
                           rng.integers(1, H + 1, n_landmarks)], axis=1)
            marks[scan] = lm
            written[(subject, scan)] = {"frames": frames, "tforms": tforms, "landmarks": lm}
            refs.append((subject, scan))
        tusrec.write_landmarks(root, subject, marks)
    if layout == "eval":
        tusrec.write_dataset_keys(root, refs)
    return written


@pytest.fixture
def tusrec_data(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "data"
    return root, make_tusrec_dataset(root)
