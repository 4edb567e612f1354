"""Self-contained HTML report: embedded images decode, optional headless-Chromium load."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess

import numpy as np
import pytest

from usnav import geometry as g
from usnav.report import Report
from usnav.report import figures


def _sample_report(tmp_path):
    rng = np.random.default_rng(0)
    truth = g.matrix_from_params(np.cumsum(rng.normal(0, [0.01, 0.01, 0.01, 0.2, 0.2, 0.3], (50, 6)), axis=0))
    est = truth @ g.translation_matrix([0.5, 0, 0])
    vol = rng.random((20, 24, 16)).astype(np.float32)
    r = Report("Test report", subtitle="synthetic")
    r.heading("Metrics")
    r.table(["metric", "value"], [["GPE mm", 1.23456], ["TRE mm", None], ["frames", 51]])
    r.image(figures.trajectory_figure(est, truth, (146.6, 106.1), every=20), "trajectory")
    r.image(figures.drift_figure({"estimated": np.linspace(0, 3, 50)}), "drift")
    r.image(figures.orthogonal_slices_figure(vol, (0.5, 0.5, 0.5)), "slices")
    r.image(figures.overlay_figure(vol, np.roll(vol, 2, 0), vol, spacing_mm=(0.5, 0.5, 0.5)), "overlay")
    return r.write(tmp_path / "report.html"), r


def test_report_is_self_contained_and_images_decode(tmp_path):
    path, report = _sample_report(tmp_path)
    text = path.read_text()
    assert report.n_images == 4
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert len(srcs) == 4
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # Nothing fetched from elsewhere.
    assert not re.search(r'(src|href)="(https?:)?//', text)
    assert "1.235" in text and "&ndash;" in text


def test_report_rejects_non_png():
    with pytest.raises(ValueError):
        Report("x").image(b"GIF89a....")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_renders_in_headless_chromium(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("headless Chromium not installed (Debian package 'chromium'); skipping the browser check")
    path, report = _sample_report(tmp_path)
    out = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    match = re.search(r'data-images-loaded="(\d+)/(\d+)"', out.stdout)
    assert match, f"page did not finish loading: {out.stderr[-500:]}"
    loaded, total = map(int, match.groups())
    assert total == report.n_images and loaded == total
