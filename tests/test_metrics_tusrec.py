"""Official TUS-REC DDFs and metrics: known answers."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from conftest import S_TUSREC, make_tusrec_dataset, smooth_trajectory

from usnav import geometry as g
from usnav.cli import main
from usnav.io import tusrec
from usnav.metrics import tusrec as m


def test_pixel_order_and_landmark_convention_hand_computed():
    # A 2 x 3 image (H=2 rows, W=3 columns), spacing 0.5 x 0.25 mm.
    S = np.diag([0.5, 0.25, 1.0, 1.0])
    pts = m.pixel_points_mm(S, (2, 3))
    # Row-major, 1-based: index (y-1)*W + (x-1).
    expected = np.array([[0.5, 0.25, 0], [1.0, 0.25, 0], [1.5, 0.25, 0], [0.5, 0.5, 0], [1.0, 0.5, 0], [1.5, 0.5, 0]])
    np.testing.assert_array_equal(pts, expected)
    # Frames 1..3 (N = 4); frame f rotates 90 deg about z and shifts by (f, 0, 0).
    T = np.stack([g.matrix_from_euler_zyx([0, 0, np.pi / 2], [f, 0, 0]) for f in (1, 2, 3)])
    GP = m.displacements(T, pts)
    assert GP.shape == (3, 3, 6)
    # Pixel (x=3, y=1) of frame 2: p = (1.5, 0.25, 0) -> Rz p = (-0.25, 1.5, 0) + (2, 0, 0) = (1.75, 1.5, 0).
    np.testing.assert_allclose(GP[1, :, 2], [1.75 - 1.5, 1.5 - 0.25, 0.0], atol=1e-12)
    # Landmark (frame 2, x=3, y=1) must take row f-1 = 1 and flat pixel (y-1)*W + (x-1) = 2.
    landmarks = np.array([[2, 3, 1], [3, 1, 2], [1, 2, 2]])
    GL = m.landmark_ddf(T, landmarks, S)
    assert GL.shape == (3, 3)
    for k, (f, x, y) in enumerate(landmarks):
        np.testing.assert_allclose(GL[:, k], GP[f - 1, :, (y - 1) * 3 + (x - 1)], atol=1e-12)
    np.testing.assert_allclose(GL[:, 0], [0.25, 1.25, 0.0], atol=1e-12)


def _truth(rng, n=15):
    tforms = smooth_trajectory(rng, n)
    C = g.matrix_from_params([0.1, -0.2, 1.5, 5, 6, 7])
    return g.global_from_tracking(tforms, C), g.local_from_tracking(tforms, C)


def test_identity_scores_exactly_zero_and_truth_one(rng):
    G, L = _truth(rng)
    lm = np.array([[1, 1, 1], [14, 32, 24], [7, 10, 3]])
    eye = np.broadcast_to(np.eye(4), G.shape)
    ident = m.score_scan("000", "LH_rotation", eye, eye, G, L, S_TUSREC, (24, 32), lm)
    assert ident.score == 0.0
    assert all(ident.normalised(k) == 0.0 for k in m.METRICS)
    assert ident.GPE > 1.0  # a real trajectory
    truth = m.score_scan("000", "LH_rotation", G, L, G, L, S_TUSREC, (24, 32), lm)
    assert truth.score == 1.0
    assert max(truth.GPE, truth.GLE, truth.LPE, truth.LLE) < 1e-6


@pytest.mark.parametrize("t", [(3.0, 0.0, 0.0), (1.0, -2.0, 2.0), (0.0, 0.0, 0.01)])
def test_pure_translation_gives_gpe_equal_norm_t(rng, t):
    G, L = _truth(rng)
    shifted = g.translation_matrix(t) @ G
    err = m.mean_pixel_error(shifted, G, S_TUSREC, (48, 64))
    assert err == pytest.approx(np.linalg.norm(t), rel=1e-9)
    lm = np.array([[3, 5, 5], [10, 60, 40]])
    assert m.mean_landmark_error(shifted, G, lm, S_TUSREC) == pytest.approx(np.linalg.norm(t), rel=1e-9)


def test_fast_pixel_error_equals_direct_definition(rng):
    G, _ = _truth(rng, 7)
    pred = G @ g.matrix_from_params(np.c_[rng.normal(0, 1e-3, (6, 3)), rng.normal(0, 1e-2, (6, 3))])
    shape = (20, 30)
    pts = m.pixel_points_mm(S_TUSREC, shape)
    direct = np.linalg.norm(m.displacements(pred, pts) - m.displacements(G, pts), axis=1).mean()
    for chunk in (1, 4, 64):
        assert m.mean_pixel_error(pred, G, S_TUSREC, shape, chunk_frames=chunk) == pytest.approx(direct, rel=1e-9)


def test_cli_score_baselines_and_json(tmp_path, capsys):
    data = tmp_path / "data"
    make_tusrec_dataset(data, layout="eval")
    out = tmp_path / "identity.json"
    assert main(["tusrec", "score", str(data), "--baseline", "identity", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert len(summary["scans"]) == 4
    first = summary["scans"][0]
    assert {"subject", "scan", "GPE", "GLE", "LPE", "LLE", "score"} <= set(first)
    assert first["subject"] == "000" and first["scan"] == "LH_rotation"
    assert summary["mean"]["score"] == 0.0
    assert main(["tusrec", "score", str(data), "--baseline", "truth", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["mean"]["score"] == 1.0
    assert summary["mean"]["GPE"] < 1e-6
    assert "mean" in capsys.readouterr().out


def test_cli_score_prediction_folder_matches_api(tmp_path, rng):
    data = tmp_path / "data"
    make_tusrec_dataset(data)
    pred = tmp_path / "pred"
    assert main(["tusrec", "baseline", str(data), "--kind", "truth", "--out", str(pred)]) == 0
    # Perturb one scan with a 2 mm translation of every frame: its GPE must be 2.
    ref = tusrec.ScanRef("001", "RH_rotation")
    p = tusrec.read_prediction(tusrec.prediction_path(pred, ref))
    tusrec.write_prediction(tusrec.prediction_path(pred, ref), g.translation_matrix([0, 2.0, 0]) @ p.global_transforms,
                            p.local_transforms)
    out = tmp_path / "scores.json"
    assert main(["tusrec", "score", str(data), str(pred), "--json", str(out)]) == 0
    rows = {(r["subject"], r["scan"]): r for r in json.loads(out.read_text())["scans"]}
    assert rows[("001", "RH_rotation")]["GPE"] == pytest.approx(2.0, rel=1e-9)
    assert rows[("001", "RH_rotation")]["GLE"] == pytest.approx(2.0, rel=1e-9)
    assert rows[("000", "LH_rotation")]["score"] == 1.0


def test_cli_score_missing_prediction_is_exit_2(tmp_path, capsys):
    data = tmp_path / "data"
    make_tusrec_dataset(data)
    (tmp_path / "pred").mkdir()
    assert main(["tusrec", "score", str(data), str(tmp_path / "pred"), "--json", str(tmp_path / "s.json")]) == 2
    assert "prediction for scan 000/LH_rotation is missing" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()
    assert main(["tusrec", "score", str(data)]) == 2


def test_cli_ddfs_match_in_memory_arrays(tmp_path):
    data = tmp_path / "data"
    written = make_tusrec_dataset(data, subjects=("000",), scans=("LH_rotation",))
    pred = tmp_path / "pred"
    assert main(["tusrec", "baseline", str(data), "--kind", "truth", "--out", str(pred)]) == 0
    out = tmp_path / "ddfs"
    assert main(["tusrec", "ddfs", str(data), str(pred), str(out)]) == 0
    ds = tusrec.open_dataset(data)
    with ds.open_scan(ds.scans[0]) as scan:
        G, L = scan.T_image0_from_image, scan.T_previous_from_image
    lm = written[("000", "LH_rotation")]["landmarks"]
    GP, GL, LP, LL = m.ddfs_from_transforms(G, L, S_TUSREC, (24, 32), lm)
    with h5py.File(out / "000" / "LH_rotation.h5") as f:
        for name, arr in (("GP", GP), ("GL", GL), ("LP", LP), ("LL", LL)):
            assert f[name].dtype == np.float32 and f[name].shape == arr.shape
            np.testing.assert_array_equal(f[name][()], arr)
    assert GP.shape == (11, 3, 24 * 32) and GL.shape == (3, 10)
