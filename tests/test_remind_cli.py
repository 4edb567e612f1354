"""`usnav simulate remind`, `usnav register`, `usnav remind run|score` on a small synthetic case."""

from __future__ import annotations

import json

import numpy as np
import pytest

from usnav.cli import main
from usnav.io import learn2reg as l2r


@pytest.fixture(scope="module")
def small_ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("remind") / "ds"
    rc = main(["simulate", "remind", str(root), "--cases", "1", "--first-case", "3", "--seed", "11",
               "--grid", "64", "--spacing", "2.0"])
    assert rc == 0
    return root


def test_simulated_case_layout_and_truth(small_ds):
    ds = l2r.open_dataset(small_ds)
    pairs = ds.pairs("val")
    assert [p.disp_name for p in pairs] == ["disp_0003_0000_0003_0001.nii.gz", "disp_0003_0000_0003_0002.nii.gz"]
    fix, mov = l2r.check_pair(pairs[0])
    assert fix.shape == (64, 64, 64)
    np.testing.assert_allclose(fix.spacing_mm, 2.0, atol=1e-5)
    assert np.abs(fix.affine[:3, :3] - np.diag(np.diag(fix.affine[:3, :3]))).max() > 0.05  # oblique
    lf, lm = l2r.check_landmark_pair(pairs[0].fixed_landmarks, pairs[0].moving_landmarks, fix.shape)
    assert len(lf) >= 15
    assert np.all(fix.array[tuple(np.rint(lf).astype(int).T)] > 0)  # fixed landmarks inside the US field of view
    info = json.loads((small_ds / "groundtruth" / "ReMIND2Reg_0003.json").read_text())
    s = info["shift_stats"]
    assert 3.0 <= s["mean_mm"] <= 8.0 and s["max_mm"] <= 20.0 and s["min_jacobian"] > 0
    shift = np.linalg.norm((lm - lf) * 2.0, axis=1)
    assert shift.mean() > 1.0
    meta = json.loads((small_ds / l2r.DATASET_JSON).read_text())
    assert len(meta["registration_val"]) == 2


def test_run_and_score(small_ds, tmp_path):
    out = tmp_path / "out"
    assert main(["remind", "run", str(small_ds), "--out", str(out), "--pairs", "val"]) == 0
    fix = l2r.read_volume(small_ds / "imagesVal" / "ReMIND2Reg_0003_0000.nii.gz")
    for mod in (1, 2):
        d = l2r.read_displacement(out / f"disp_0003_0000_0003_000{mod}.nii.gz", fix.shape)
        assert d.array.shape == (64, 64, 64, 3) and d.array.dtype == np.float32
        np.testing.assert_allclose(d.affine, fix.affine, atol=1e-5)
    mtime = (out / "disp_0003_0000_0003_0001.nii.gz").stat().st_mtime_ns
    assert main(["remind", "run", str(small_ds), "--out", str(out), "--resume"]) == 0
    assert (out / "disp_0003_0000_0003_0001.nii.gz").stat().st_mtime_ns == mtime  # finished pairs skipped
    js = tmp_path / "scores.json"
    assert main(["remind", "score", str(small_ds), str(out), "--json", str(js)]) == 0
    doc = json.loads(js.read_text())
    assert len(doc["pairs"]) == 2 and doc["mean"]["tre_mm"] > 0 and doc["pairs"][0]["runtime_s"] > 0


def test_identity_field_scores_initial_distance(small_ds, tmp_path):
    fix = l2r.read_volume(small_ds / "imagesVal" / "ReMIND2Reg_0003_0000.nii.gz")
    for mod in (1, 2):
        l2r.write_displacement(tmp_path / l2r.disp_name(3, 0, 3, mod), np.zeros((64, 64, 64, 3), np.float32), fix.affine)
    js = tmp_path / "s.json"
    assert main(["remind", "score", str(small_ds), str(tmp_path), "--json", str(js)]) == 0
    doc = json.loads(js.read_text())
    lf = l2r.read_landmarks(small_ds / "landmarksVal" / "ReMIND2Reg_0003_0000.csv")
    lm = l2r.read_landmarks(small_ds / "landmarksVal" / "ReMIND2Reg_0003_0001.csv")
    expect = np.linalg.norm((lm - lf) * fix.spacing_mm, axis=1).mean()
    assert abs(doc["mean"]["tre_mm"] - expect) < 1e-9 and doc["mean"]["tre_initial_mm"] == doc["mean"]["tre_mm"]


def test_register_cli_writes_field_and_warped(small_ds, tmp_path):
    img = small_ds / "imagesVal"
    out, warped = tmp_path / "d.nii.gz", tmp_path / "w.nii.gz"
    rc = main(["register", str(img / "ReMIND2Reg_0003_0000.nii.gz"), str(img / "ReMIND2Reg_0003_0001.nii.gz"),
               str(img / "ReMIND2Reg_0003_0002.nii.gz"), "--out", str(out), "--warped", str(warped)])
    assert rc == 0
    assert l2r.read_displacement(out, (64, 64, 64)).array.dtype == np.float32
    assert l2r.read_volume(warped).shape == (64, 64, 64)


def test_bad_inputs_exit_2(small_ds, tmp_path, capsys):
    img = small_ds / "imagesVal"
    other = tmp_path / "other.nii.gz"
    l2r.write_volume(other, np.zeros((64, 64, 63), np.float32), np.eye(4))
    out = tmp_path / "d.nii.gz"
    assert main(["register", str(img / "ReMIND2Reg_0003_0000.nii.gz"), str(other), "--out", str(out)]) == 2
    assert "other.nii.gz: grid (64, 64, 63) differs" in capsys.readouterr().err
    assert not out.exists()
    assert main(["remind", "run", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "data set folder not found" in capsys.readouterr().err
    assert main(["remind", "score", str(small_ds), str(tmp_path)]) == 2  # no disp files there
    assert "displacement field not found" in capsys.readouterr().err


def test_clean_us_leaves_the_speckled_us_unchanged_and_removes_speckle(small_ds, tmp_path):
    root = tmp_path / "clean"
    rc = main(["simulate", "remind", str(root), "--cases", "1", "--first-case", "3", "--seed", "11",
               "--grid", "64", "--spacing", "2.0", "--clean-us"])
    assert rc == 0
    name = l2r.image_name(3, 0)
    a = l2r.read_volume(small_ds / "imagesVal" / name, dtype=None).array
    b = l2r.read_volume(root / "imagesVal" / name, dtype=None).array
    assert np.array_equal(a, b)  # no extra random numbers are drawn for the clean render
    assert not (small_ds / "groundtruth" / "ReMIND2Reg_0003_0000_clean.nii.gz").exists()
    clean = l2r.read_volume(root / "groundtruth" / "ReMIND2Reg_0003_0000_clean.nii.gz", dtype=None).array
    assert clean.dtype == np.uint8 and clean.shape == a.shape
    fov = a > 0
    # speckle: neighbouring voxels differ far more in the speckled volume than in the clean one
    d_us = np.abs(np.diff(a.astype(np.float32), axis=0))[fov[1:] & fov[:-1]].mean()
    d_cl = np.abs(np.diff(clean.astype(np.float32), axis=0))[fov[1:] & fov[:-1]].mean()
    assert d_cl < 0.5 * d_us
    # same brightness scale: the clean render follows the speckled one's mean echo level
    assert 0.5 < clean[fov].mean() / a[fov].mean() < 1.5


def test_truth_field_maps_fixed_landmarks_onto_moving_ones(small_ds, tmp_path):
    from usnav.errors import InputError
    from usnav.metrics.remind import tre_mm
    from usnav.sim.remind import read_truth_field, truth_shift_name

    fix = l2r.read_volume(small_ds / "imagesVal" / "ReMIND2Reg_0003_0000.nii.gz")
    lf = l2r.read_landmarks(small_ds / "landmarksVal" / "ReMIND2Reg_0003_0000.csv", fix.shape)
    lm = l2r.read_landmarks(small_ds / "landmarksVal" / "ReMIND2Reg_0003_0001.csv", fix.shape)
    u = read_truth_field(small_ds / "groundtruth" / truth_shift_name(3), fix.shape)
    assert u.shape == (64, 64, 64, 3) and u.dtype == np.float32
    assert tre_mm(None, lf, lm, fix.spacing_mm) > 1.0
    assert tre_mm(u, lf, lm, fix.spacing_mm) < 0.01  # the landmarks were placed with this field (measured 1.3e-4 mm)
    with pytest.raises(InputError, match=r"ReMIND2Reg_0003_0000.nii.gz: displacement field must have shape \(X, Y, Z, 3\)"):
        read_truth_field(small_ds / "imagesVal" / "ReMIND2Reg_0003_0000.nii.gz", fix.shape)
