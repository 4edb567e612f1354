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
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("USNAV_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set USNAV_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
