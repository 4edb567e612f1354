"""`usnav compound plus|tusrec`: in-process CLI runs, geometry read back, exit codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from usnav.cli import main
from usnav.geometry import matrix_from_euler_zyx, matrix_from_params

H, W = 48, 64
SX, SY = 0.3, 0.25


def _box_image0(p):
    inside = (np.abs(p[..., 0] - 9) < 4) & (np.abs(p[..., 1] - 6) < 3) & (np.abs(p[..., 2] - 4) < 3)
    return np.where(inside, 220, 30).astype(np.uint8)


@pytest.fixture
def tusrec_scan(tmp_path):
    """A synthetic TUS-REC scan of a box, defined in frame 0's image-mm space."""
    from usnav.io.tusrec import Calibration, write_calibration, write_prediction, write_scan

    n = 40
    S = np.diag([SX, SY, 1.0, 1.0])
    C = matrix_from_params([0.1, -0.2, 0.3, 5.0, -3.0, 12.0])
    A = matrix_from_params([0.3, 0.1, -0.5, 100.0, 50.0, -20.0])
    # frame n image-mm -> frame 0 image-mm: a sweep along z with some rocking
    G = np.stack([matrix_from_euler_zyx([0.1 * np.sin(i / 8), 0.05 * np.cos(i / 6), 0.0], [0.2 * i, 0.1, 0.25 * i]) for i in range(n)])
    G = np.linalg.inv(G[0]) @ G
    tforms = A @ G @ np.linalg.inv(C)
    ys, xs = np.mgrid[0:H, 0:W]
    pix = np.stack([xs + 1, ys + 1, np.zeros_like(xs), np.ones_like(xs)], -1).astype(float)
    world = np.einsum("nij,jk,hwk->nhwi", G, S, pix)[..., :3]
    frames = _box_image0(world)
    root = tmp_path / "data"
    write_scan(root, "000", "LH_rotation", frames, tforms, layout="train")
    write_calibration(root / "calib_matrix.csv", Calibration(T_mm_from_pixel=S, T_tool_from_mm=C))
    pred = tmp_path / "pred.h5"
    local = np.linalg.inv(G[:-1]) @ G[1:]
    write_prediction(pred, G[1:], local)
    return root / "frames_transfs" / "000" / "LH_rotation.h5", root / "calib_matrix.csv", pred


def _voxel_world(affine_lps, shape):
    i, j, k = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    pts = np.stack([i, j, k, np.ones_like(i)], -1).astype(float)
    return np.einsum("ij,...j->...i", affine_lps, pts)[..., :3]


def test_tusrec_tracked_and_predicted(tusrec_scan, tmp_path):
    import nibabel as nib
    import SimpleITK as sitk

    scan, calib, pred = tusrec_scan
    out = tmp_path / "vol.nii.gz"
    assert main(["compound", "tusrec", str(scan), str(out), "--calib", str(calib), "--spacing", "0.5"]) == 0
    img = nib.load(str(out))
    T = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine  # back to frame-0 image-mm (stored as LPS)
    assert np.allclose(np.linalg.norm(T[:3, :3], axis=0), 0.5)
    data = np.asarray(img.dataobj)
    world = _voxel_world(T, data.shape)
    truth = _box_image0(world)
    d = np.minimum.reduce([np.abs(np.abs(world[..., 0] - 9) - 4), np.abs(np.abs(world[..., 1] - 6) - 3), np.abs(np.abs(world[..., 2] - 4) - 3)])
    core = (data > 0) & (d > 0.8)
    assert core.sum() > 1000
    assert (data[core] == truth[core]).mean() > 0.999
    # pixel (1, 1) of frame 0 is image-mm (SX, SY, 0), on the grid's low corner in x
    ijk = np.linalg.inv(T) @ [SX, SY, 0.0, 1.0]
    assert abs(ijk[0]) < 1e-4 and (ijk[:3] > -0.5).all() and (ijk[:3] < np.array(data.shape) - 0.5).all()
    # SimpleITK sees the same physical grid as the LPS matrix
    s_img = sitk.ReadImage(str(out))
    assert np.allclose(s_img.GetOrigin(), T[:3, 3], atol=1e-4)
    # predicted transforms equal to the truth give the same volume
    out2 = tmp_path / "vol_pred.nii.gz"
    assert main(["compound", "tusrec", str(scan), str(out2), "--calib", str(calib), "--pred", str(pred), "--spacing", "0.5"]) == 0
    assert np.array_equal(np.asarray(nib.load(str(out2)).dataobj), data)
    # linear + max + hole filling, MetaImage output
    out3 = tmp_path / "vol.mha"
    args = ["compound", "tusrec", str(scan), str(out3), "--calib", str(calib), "--method", "linear", "--mode", "max", "--fill-holes"]
    assert main(args) == 0
    assert sitk.ReadImage(str(out3)).GetSize()[0] > 10


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "cubic"], "--method"),
        (["--mode", "median"], "--mode"),
        (["--spacing", "0"], "--spacing"),
    ],
)
def test_tusrec_bad_options(tusrec_scan, tmp_path, capsys, extra, message):
    scan, calib, _ = tusrec_scan
    out = tmp_path / "v.nii.gz"
    assert main(["compound", "tusrec", str(scan), str(out), "--calib", str(calib), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_tusrec_bad_files(tusrec_scan, tmp_path, capsys):
    from usnav.io.tusrec import write_prediction

    scan, calib, _ = tusrec_scan
    out = tmp_path / "v.nii.gz"
    assert main(["compound", "tusrec", str(tmp_path / "missing.h5"), str(out), "--calib", str(calib)]) == 2
    short = tmp_path / "short.h5"
    write_prediction(short, np.broadcast_to(np.eye(4), (5, 4, 4)), np.broadcast_to(np.eye(4), (5, 4, 4)))
    assert main(["compound", "tusrec", str(scan), str(out), "--calib", str(calib), "--pred", str(short)]) == 2
    assert "expected 39" in capsys.readouterr().err
    assert main(["compound", "tusrec", str(scan), str(tmp_path / "v.png"), "--calib", str(calib)]) == 2
    assert not out.exists() and list(tmp_path.glob("*.tmp*")) == []


def test_plus_cli_matches_reference(plus_dir: Path, tmp_path):
    import SimpleITK as sitk

    from usnav.io.plus import read_metaimage

    out = tmp_path / "nnmean.nii.gz"
    seq = plus_dir / "SpinePhantomFreehand.igs.mha"
    cfg = plus_dir / "PlusDeviceSet_VolumeReconstructionOnly_SpinePhantom_NN_MEAN.xml"
    assert main(["compound", "plus", str(seq), str(cfg), str(out)]) == 0
    ref, header = read_metaimage(plus_dir / "vtkVolumeReconstructorTestNNMEANvolumeRef.mha")
    img = sitk.ReadImage(str(out))
    assert np.abs(np.array(img.GetOrigin()) - [float(v) for v in header["Offset"].split()]).max() < 0.01
    assert np.allclose(img.GetSpacing(), (0.5, 0.5, 0.5))
    got = sitk.GetArrayFromImage(img)
    assert got.shape == ref.shape
    assert (np.abs(got.astype(int) - ref.astype(int)) <= 1).mean() >= 0.99


def test_plus_cli_bad_inputs(plus_dir: Path, tmp_path, capsys):
    seq = plus_dir / "SpinePhantomFreehand.igs.mha"
    bad_cfg = tmp_path / "c.xml"
    bad_cfg.write_text('<PlusConfiguration><VolumeReconstruction OutputSpacing="0.5 0.5"/></PlusConfiguration>')
    out = tmp_path / "v.mha"
    assert main(["compound", "plus", str(seq), str(bad_cfg), str(out)]) == 2
    assert "OutputSpacing" in capsys.readouterr().err
    truncated = tmp_path / "t.igs.mha"
    truncated.write_bytes(seq.read_bytes()[:200000])
    good_cfg = plus_dir / "PlusDeviceSet_VolumeReconstructionOnly_SpinePhantom_NN_MEAN.xml"
    assert main(["compound", "plus", str(truncated), str(good_cfg), str(out)]) == 2
    assert "truncated" in capsys.readouterr().err
    assert not out.exists()


def test_tusrec_absurd_prediction_is_an_input_error(tusrec_scan, tmp_path, capsys):
    from usnav.io.tusrec import write_prediction

    scan, calib, _ = tusrec_scan
    G = np.broadcast_to(np.eye(4), (39, 4, 4)).copy()
    G[-1, :3, 3] = [5e4, 5e4, 5e4]  # 50 m away
    bad = tmp_path / "far.h5"
    write_prediction(bad, G, G)
    out = tmp_path / "v.nii.gz"
    assert main(["compound", "tusrec", str(scan), str(out), "--calib", str(calib), "--pred", str(bad)]) == 2
    assert "too large" in capsys.readouterr().err and not out.exists()


def test_tusrec_nifti_world_ras(tusrec_scan, tmp_path):
    import nibabel as nib

    scan, calib, _ = tusrec_scan
    a, b = tmp_path / "lps.nii.gz", tmp_path / "ras.nii.gz"
    assert main(["compound", "tusrec", str(scan), str(a), "--calib", str(calib)]) == 0
    assert main(["compound", "tusrec", str(scan), str(b), "--calib", str(calib), "--nifti-world", "ras"]) == 0
    A, B = nib.load(str(a)).affine, nib.load(str(b)).affine
    assert np.allclose(np.diag([-1, -1, 1, 1]) @ A, B, atol=1e-5)
