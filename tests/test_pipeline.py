"""The joined pipeline: stage functions with known answers, and a small end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from usnav import geometry as g
from usnav.cli import main
from usnav.errors import InputError
from usnav.pipeline import stages as st


def test_resample_to_grid_matches_trilinear_reference(rng):
    arr = rng.random((30, 40, 50)).astype(np.float32)
    A = np.diag([0.9, 1.1, 1.0, 1.0])
    A[:3, 3] = [5, -3, 2]
    T = g.matrix_from_params([0.1, 0.2, -0.1, 6, 2, 4]) @ np.diag([0.7, 0.7, 0.7, 1.0])
    out = st.resample_to_grid(st.MriImage("x", arr, A), T, (20, 25, 30))
    vox = np.linalg.inv(A) @ T
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in (20, 25, 30)], indexing="ij"), -1).reshape(-1, 3)
    v = (idx @ vox[:3, :3].T + vox[:3, 3]).T
    ref = map_coordinates(arr, v, order=1, mode="constant", cval=0).reshape(20, 25, 30)
    inside = ((v >= 0) & (v <= np.array([[29], [39], [49]]))).all(axis=0).reshape(20, 25, 30)
    np.testing.assert_allclose(out[inside], ref[inside], atol=1e-5)
    assert np.all(out[(v < -1).any(axis=0).reshape(20, 25, 30)] == 0)


def test_map_points_to_mri_with_constant_field():
    A = np.diag([0.5, 0.5, 0.5, 1.0])
    A[:3, 3] = [10, 20, 30]
    disp = np.zeros((8, 8, 8, 3), np.float32)
    disp[..., 1] = 2.0  # two voxels along axis 1
    p = np.array([[1.0, 2.0, 3.0], [4.5, 4.5, 4.5]])
    before = st.map_points_to_mri(p, None, A)
    after = st.map_points_to_mri(p, disp, A)
    np.testing.assert_allclose(after - before, [[0, 1.0, 0], [0, 1.0, 0]], atol=1e-12)
    np.testing.assert_allclose(before[0], [10.5, 21.0, 31.5])


def test_read_pose_errors(tmp_path):
    good = tmp_path / "pose.txt"
    np.savetxt(good, g.matrix_from_params([0.1, 0, 0, 1, 2, 3]), header="T_mri_from_image0")
    np.testing.assert_allclose(st.read_pose(good), g.matrix_from_params([0.1, 0, 0, 1, 2, 3]), atol=1e-12)
    bad = tmp_path / "bad.txt"
    bad.write_text("1 0 0\n0 1 0\n")
    with pytest.raises(InputError, match="16 numbers"):
        st.read_pose(bad)
    bad.write_text(" ".join(["2"] + ["0"] * 4 + ["1"] + ["0"] * 4 + ["1"] + ["0"] * 4 + ["1"]))
    with pytest.raises(InputError, match="not rigid"):
        st.read_pose(bad)


def test_cli_pipeline_bad_inputs_exit_2(tmp_path, capsys):
    assert main(["pipeline", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "o")]) == 2
    assert "sweep file not found" in capsys.readouterr().err
    (tmp_path / "x.txt").write_text("hello")
    assert main(["pipeline", str(tmp_path / "x.txt"), "--out", str(tmp_path / "o")]) == 2
    assert "unknown sweep format" in capsys.readouterr().err


def test_load_mri_truncated_or_missing_is_one_sentence(tmp_path):
    from usnav.io.nifti import write_nifti

    path = tmp_path / "t1.nii.gz"
    write_nifti(path, np.random.default_rng(0).random((16, 16, 16)).astype(np.float32), np.eye(4))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"t1\.nii\.gz: cannot be read as NIfTI \(EOFError"):
        st.load_mri(path)
    with pytest.raises(InputError, match="file does not exist"):
        st.load_mri(tmp_path / "absent.nii.gz")


# ----------------------------------------------------------------- end to end on a small phantom


def _phantom(rng, n=72):
    from scipy.ndimage import gaussian_filter

    vol = gaussian_filter(rng.standard_normal((n, n, n)), 3.0)
    vol = (vol - vol.min()) / (vol.max() - vol.min())
    vol[20:30, 25:45, 30:40] = 1.0  # a bright block
    return vol.astype(np.float32)


def _write_phantom_case(tmp_path, rng, shift_mm=(3.0, -2.0, 1.5)):
    """A sweep sampled from a phantom along known poses, the phantom as 'MRI', and landmarks."""
    from usnav.io.nifti import write_nifti
    from usnav.io.tusrec import Calibration, write_calibration, write_landmarks, write_scan

    phantom = _phantom(rng)
    A = np.eye(4)  # MRI world = phantom voxels (1 mm)
    H, W, N = 40, 48, 36
    S = np.diag([1.0, 1.0, 1.0, 1.0])
    poses = []
    for n in range(N):
        T = g.matrix_from_params([0.03 * np.sin(n / 6), 0.02 * np.cos(n / 5), 0.0, 12.0, 14.0, 18.0 + 1.0 * n])
        poses.append(T)
    T_world_from_image = np.stack(poses)
    yy, xx = np.mgrid[1 : H + 1, 1 : W + 1]
    pix = np.stack([xx.ravel(), yy.ravel(), np.zeros(H * W), np.ones(H * W)], axis=0).astype(float)
    frames = np.empty((N, H, W), np.uint8)
    for n in range(N):
        world = (T_world_from_image[n] @ S @ pix)[:3]
        frames[n] = np.clip(255 * map_coordinates(phantom, world, order=1), 1, 255).reshape(H, W).astype(np.uint8)
    root = tmp_path / "sweep"
    write_calibration(root / "calib_matrix.csv", Calibration(T_mm_from_pixel=S, T_tool_from_mm=np.eye(4)))
    write_scan(root, "000", "LH_rotation", frames, T_world_from_image)
    lm = np.stack([rng.integers(1, N, 12), rng.integers(8, W - 8, 12), rng.integers(8, H - 8, 12)], axis=1)
    write_landmarks(root, "000", {"LH_rotation": lm})
    lm_world = np.stack([(T_world_from_image[f] @ S @ [x, y, 0, 1])[:3] for f, x, y in lm])
    # The "MRI" is the phantom moved by shift_mm (a rigid brain shift): tissue at x now was at x - shift.
    moved = np.roll(phantom, shift=[int(round(s)) for s in shift_mm], axis=(0, 1, 2))
    mri = write_nifti(tmp_path / "mri.nii.gz", moved, A, world="ras")
    truth_mri = lm_world + np.round(shift_mm)
    np.savetxt(tmp_path / "lm.csv", truth_mri, delimiter=",")
    pose = tmp_path / "pose.txt"
    np.savetxt(pose, T_world_from_image[0])
    return root / "frames_transfs" / "000" / "LH_rotation.h5", mri, pose, tmp_path / "lm.csv", T_world_from_image


def test_pipeline_tracked_identity_known_answers(tmp_path, rng):
    from usnav.pipeline import run

    sweep, mri, pose, lm_csv, _ = _write_phantom_case(tmp_path, rng)
    res = run(sweep, out=tmp_path / "identity", method="identity", spacing_mm=1.0)
    assert res.metrics["tusrec"]["score"] == 0.0  # identity poses: the known zero
    res = run(sweep, out=tmp_path / "tracked", method="tracked", spacing_mm=1.0, init_pose=pose)
    assert "tusrec" not in res.metrics  # nothing to compare tracking with
    import nibabel as nib

    img = nib.load(res.paths["us_volume"])
    assert img.shape == tuple(res.metrics["volume"]["shape"])
    # Tracked poses + init pose = truth, so the volume sits on the phantom: voxel centre -> MRI world.
    phantom = _phantom(np.random.default_rng(1234))
    vol = np.asarray(img.dataobj).astype(float)
    idx = np.argwhere(vol > 0)[::7]
    world = idx @ img.affine[:3, :3].T + img.affine[:3, 3]
    expected = 255 * map_coordinates(phantom, world.T, order=1)
    assert np.corrcoef(vol[tuple(idx.T)], expected)[0, 1] > 0.95
    assert res.paths["report"].exists() and "<img" in res.paths["report"].read_text()


def test_pipeline_registration_recovers_rigid_shift(tmp_path, rng):
    pytest.importorskip("usnav.register.pipeline", reason="usnav.register not available in this checkout")
    from usnav.pipeline import run

    sweep, mri, pose, lm_csv, _ = _write_phantom_case(tmp_path, rng)
    res = run(sweep, mri=[mri], init_pose=pose, out=tmp_path / "out", method="tracked", spacing_mm=1.0,
              landmarks_mri=lm_csv)
    lm = res.metrics["landmarks"]
    assert lm["before"]["TRE_mm"] == pytest.approx(np.linalg.norm(np.round((3.0, -2.0, 1.5))), rel=1e-6)
    assert lm["after"]["TRE_mm"] < 0.5 * lm["before"]["TRE_mm"]
    saved = json.loads(res.paths["metrics"].read_text())
    assert saved["landmarks"]["after"]["TRE_mm"] == pytest.approx(lm["after"]["TRE_mm"])
    for name in ("us_volume", "displacement", "report", "landmarks_mapped"):
        assert res.paths[name].exists()


def test_pipeline_skips_registration_when_poses_collapse(tmp_path, rng):
    from usnav.pipeline import run

    sweep, mri, pose, lm_csv, _ = _write_phantom_case(tmp_path, rng)
    res = run(sweep, mri=[mri], init_pose=pose, out=tmp_path / "out", method="identity", spacing_mm=1.0,
              landmarks_mri=lm_csv)
    assert "only" in res.metrics["registration"]["skipped"]
    lm = res.metrics["landmarks"]
    assert lm["after"]["TRE_mm"] == lm["before"]["TRE_mm"]
    assert "displacement" not in res.paths and res.paths["report"].exists()
    assert "Registration skipped" in res.paths["report"].read_text()


def test_estimate_poses_progress_ends_at_its_total(tmp_path, rng):
    sweep_path, *_ = _write_phantom_case(tmp_path, rng)
    sw = st.load_sweep(sweep_path)
    seen = []
    G, L = st.estimate_poses(sw, method="decorrelation", progress=lambda d, t: seen.append((d, t)))
    assert G.shape == (sw.n_frames - 1, 4, 4) and L.shape == G.shape
    done, total = seen[-1]
    assert done == total == 2 * sw.n_frames  # the bar closes (it stopped at 2N - 2 before)
    assert all(d <= t for d, t in seen)


def test_cli_demo_runs_end_to_end_on_a_short_sweep(tmp_path, capsys):
    """`usnav demo` (what `make demo` runs), shortened to 20 frames: the whole path, outputs and summary."""
    assert main(["demo", "--init-error-deg", "90", "--out", str(tmp_path / "bad")]) == 2
    assert "--init-error-deg must be in [0, 45]" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["demo", "--frames", "20", "--no-reference", "--init-error-deg", "15", "--init-error-mm", "10",
                 "--out", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    results = tmp_path / "demo" / "results"
    assert "report:" in printed and "report.html" in printed and "final frame drift (mm)" in printed
    metrics = json.loads((results / "metrics.json").read_text())
    assert metrics["tusrec"]["LPE"] > 0 and metrics["landmarks"]["before"]["TRE_mm"] > 0
    # 20 frames span a few millimetres: the volume is too thin to register, and the run says so
    assert "thick" in metrics["registration"]["skipped"]
    assert set(metrics["timings_s"]) >= {"trackerless poses", "compounding", "registration", "report"}
    for name in ("us_volume.nii.gz", "transforms.h5", "report.html"):
        assert (results / name).stat().st_size > 0
