"""usnav.io.learn2reg: layout round trips and validation errors naming the file."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from usnav.errors import InputError
from usnav.io import learn2reg as l2r


def _oblique_affine() -> np.ndarray:
    c, s = np.cos(0.3), np.sin(0.3)
    A = np.eye(4)
    A[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.diag([0.5, 0.5, 0.5])
    A[:3, 3] = [-10.0, 20.0, 5.0]
    return A


def _make(root, shape=(8, 9, 10), case=7, mods=(0, 1, 2), split="val", lm=True):
    aff = _oblique_affine()
    img, lmd = l2r.SPLIT_FOLDERS[split]
    for m in mods:
        l2r.write_volume(root / img / l2r.image_name(case, m), np.random.default_rng(m).random(shape).astype(np.float32), aff)
    if lm:
        pts = np.array([[1.0, 2.0, 3.0], [4.5, 5.5, 6.5], [0.0, 0.0, 0.0]])
        for m in mods:
            l2r.write_landmarks(root / lmd / f"ReMIND2Reg_{case:04d}_{m:04d}.csv", pts + 0.1 * m)
    return aff


def test_roundtrip_and_pairs_from_files(tmp_path):
    aff = _make(tmp_path)
    ds = l2r.open_dataset(tmp_path)
    pairs = ds.pairs("val")
    assert [p.disp_name for p in pairs] == ["disp_0007_0000_0007_0001.nii.gz", "disp_0007_0000_0007_0002.nii.gz"]
    fix, mov = l2r.check_pair(pairs[0])
    np.testing.assert_allclose(fix.affine, aff, atol=1e-6)  # oblique affine kept (NIfTI stores float32)
    assert fix.shape == (8, 9, 10)
    lf, lm = l2r.check_landmark_pair(pairs[0].fixed_landmarks, pairs[0].moving_landmarks, fix.shape)
    np.testing.assert_allclose(lm - lf, 0.1)


def test_dataset_json_roundtrip(tmp_path):
    _make(tmp_path, split="train")
    l2r.write_dataset_json(
        tmp_path, [("imagesTr/ReMIND2Reg_0007_0000.nii.gz", "imagesTr/ReMIND2Reg_0007_0001.nii.gz")],
        [("imagesTr/ReMIND2Reg_0007_0000.nii.gz", "imagesTr/ReMIND2Reg_0007_0002.nii.gz")],
    )
    ds = l2r.open_dataset(tmp_path)
    assert len(ds.pairs("train")) == 1 and len(ds.pairs("val")) == 1
    assert ds.pairs("val")[0].moving_id == (7, 2)
    assert ds.meta["modality"]["0"] == "3D iUS"


def test_displacement_roundtrip_name_shape_dtype_affine(tmp_path):
    aff = _oblique_affine()
    d = np.random.default_rng(0).standard_normal((6, 7, 8, 3)).astype(np.float32)
    p = l2r.write_displacement(tmp_path / l2r.disp_name(99, 0, 99, 1), d, aff)
    assert p.name == "disp_0099_0000_0099_0001.nii.gz"
    back = l2r.read_displacement(p, (6, 7, 8))
    assert back.array.dtype == np.float32 and back.array.shape == (6, 7, 8, 3)
    np.testing.assert_array_equal(back.array, d)
    np.testing.assert_allclose(back.affine, aff)
    with pytest.raises(InputError, match="differs from the fixed image grid"):
        l2r.read_displacement(p, (6, 7, 9))


def test_missing_modality(tmp_path):
    _make(tmp_path, mods=(0, 1))
    ds = l2r.open_dataset(tmp_path)
    (tmp_path / "imagesVal" / "ReMIND2Reg_0007_0001.nii.gz").unlink()
    with pytest.raises(InputError, match=r"ReMIND2Reg_0007_0001.nii.gz.*missing modality"):
        l2r.check_pair(ds.pairs("val")[0])


def test_grid_mismatch(tmp_path):
    _make(tmp_path, mods=(0,))
    l2r.write_volume(tmp_path / "imagesVal" / "ReMIND2Reg_0007_0001.nii.gz", np.zeros((8, 9, 11), np.float32),
                     _oblique_affine())
    l2r.write_volume(tmp_path / "imagesVal" / "ReMIND2Reg_0007_0002.nii.gz", np.zeros((8, 9, 10), np.float32), np.eye(4))
    ds = l2r.open_dataset(tmp_path)
    with pytest.raises(InputError, match=r"0001.nii.gz: grid \(8, 9, 11\) differs"):
        l2r.check_pair(ds.pairs("val")[0], landmarks=False)
    with pytest.raises(InputError, match=r"0002.nii.gz: affine differs"):
        l2r.check_pair(ds.pairs("val")[1], landmarks=False)


def test_landmark_errors(tmp_path):
    _make(tmp_path, mods=(0, 1))
    lmd = tmp_path / "landmarksVal"
    (lmd / "ReMIND2Reg_0007_0001.csv").write_text("1,2,3\n4,5,6\n")
    ds = l2r.open_dataset(tmp_path)
    with pytest.raises(InputError, match=r"0001.csv: has 2 landmark rows but ReMIND2Reg_0007_0000.csv has 3"):
        l2r.check_pair(ds.pairs("val")[0])
    (lmd / "ReMIND2Reg_0007_0001.csv").write_text("1,2,3\n4,5,6\n7.6,2,2\n")
    with pytest.raises(InputError, match=r"0001.csv: landmark row 3 .* outside the image grid"):
        l2r.check_pair(ds.pairs("val")[0])
    (lmd / "ReMIND2Reg_0007_0001.csv").write_text("1,2\n")
    with pytest.raises(InputError, match="line 1 has 2 values"):
        l2r.check_pair(ds.pairs("val")[0])


@pytest.mark.parametrize("bad", ["../outside/ReMIND2Reg_0001_0000.nii.gz", "/etc/ReMIND2Reg_0001_0000.nii.gz",
                                 "./imagesTr/../../x/ReMIND2Reg_0001_0000.nii.gz"])
def test_json_paths_must_stay_inside(tmp_path, bad):
    root = tmp_path / "ds"
    root.mkdir()
    (root / l2r.DATASET_JSON).write_text(json.dumps(
        {"registration_val": [{"fixed": bad, "moving": "./imagesTr/ReMIND2Reg_0001_0001.nii.gz"}]}))
    with pytest.raises(InputError, match=r"ReMIND2Reg_dataset.json: path .* (leaves the data set folder|is absolute)"):
        l2r.open_dataset(root)


def test_symlink_out_of_dataset_refused(tmp_path):
    outside = tmp_path / "outside"
    _make(outside, mods=(0, 1))
    root = tmp_path / "ds"
    (root / "imagesVal").mkdir(parents=True)
    os.symlink(outside / "imagesVal" / "ReMIND2Reg_0007_0000.nii.gz", root / "imagesVal" / "ReMIND2Reg_0007_0000.nii.gz")
    with pytest.raises(InputError, match="leaves the data set folder"):
        l2r.open_dataset(root)
    (root / l2r.DATASET_JSON).write_text(json.dumps({"registration_val": [
        {"fixed": "./imagesVal/ReMIND2Reg_0007_0000.nii.gz", "moving": "./imagesVal/ReMIND2Reg_0007_0001.nii.gz"}]}))
    with pytest.raises(InputError, match="leaves the data set folder"):
        l2r.open_dataset(root)


def test_bad_json(tmp_path):
    (tmp_path / l2r.DATASET_JSON).write_text("{not json")
    with pytest.raises(InputError, match="is not valid JSON"):
        l2r.open_dataset(tmp_path)
