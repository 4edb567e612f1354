"""usnav.freehand prediction, the decorrelation method, the submission folder, the CLI."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import calibration_example, make_tusrec_dataset
from usnav.cli import main


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _scores(data: Path, pred: Path):
    from usnav.io.tusrec import open_dataset
    from usnav.metrics.tusrec_dataset import iter_scores

    return list(iter_scores(open_dataset(data), pred_root=pred))


def test_identity_method_scores_zero_and_predict_is_resumable(tusrec_data, tmp_path: Path):
    data, _ = tusrec_data
    pred = tmp_path / "pred"
    assert main(["freehand", "predict", str(data), "--method", "identity", "--out", str(pred)]) == 0
    scores = _scores(data, pred)
    assert len(scores) == 4 and all(abs(s.score) < 1e-12 for s in scores)
    # resumable: existing files are kept, missing ones are written
    victim = next(pred.rglob("*.h5"))
    mtimes = {p: p.stat().st_mtime_ns for p in pred.rglob("*.h5") if p != victim}
    victim.unlink()
    assert main(["freehand", "predict", str(data), "--method", "identity", "--out", str(pred)]) == 0
    assert victim.exists()
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())


def test_cli_bad_input_exit_code_2(tusrec_data, tmp_path: Path, capsys):
    data, _ = tusrec_data
    assert main(["freehand", "predict", str(data), "--method", "magic", "--out", str(tmp_path / "p")]) == 2
    assert main(["freehand", "predict", str(tmp_path / "nope"), "--method", "identity", "--out", str(tmp_path / "p")]) == 2
    assert main(["freehand", "predict", str(data), "--model", str(tmp_path), "--out", str(tmp_path / "p")]) == 2
    assert main(["freehand", "train", str(data), "--method", "identity", "--out", str(tmp_path / "r")]) == 2
    assert main(["freehand", "train", str(data), "--frame-size", "big", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert not (tmp_path / "p").exists() and not (tmp_path / "r").exists()


def _texture_scan(n: int, shift_px: tuple[int, int], shape=(120, 160), seed=0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    H, W = shape
    dy, dx = shift_px
    big = gaussian_filter(rng.random((H + abs(dy) * n + 2, W + abs(dx) * n + 2)), 1.0)
    big = (big - big.min()) / (big.max() - big.min()) * 255
    return np.stack([big[k * dy : k * dy + H, k * dx : k * dx + W] for k in range(n)]).astype(np.uint8)


def test_decorrelation_recovers_known_inplane_translation(tmp_path: Path):
    """Frames of a texture moving by a known pixel step: the full pipeline (write data,
    predict, score) recovers the translation; nothing moves out of plane."""
    from usnav import geometry as g
    from usnav.io import tusrec

    n, step = 12, (2, 1)  # rows, cols per frame
    frames = _texture_scan(n, step)
    calib = calibration_example()
    calib = tusrec.Calibration(T_mm_from_pixel=np.diag([0.458, 0.442, 1.0, 1.0]), T_tool_from_mm=calib.T_tool_from_mm)
    sx, sy = 0.458, 0.442
    # frame k shows the texture at offset k*step: a tissue point at p in frame k is at p + t in frame k-1
    t = np.array([step[1] * sx, step[0] * sy, 0.0])
    T_image0_from_image = np.stack([g.translation_matrix(k * t) for k in range(n)])
    T_tracker_from_image0 = g.matrix_from_params([0.1, -0.2, 0.3, 10.0, 20.0, 1000.0])
    tforms = T_tracker_from_image0 @ T_image0_from_image @ g.invert(calib.T_tool_from_mm)
    data = tmp_path / "data"
    tusrec.write_calibration(data / tusrec.CALIB_FILENAME, calib)
    tusrec.write_scan(data, "000", "LH_rotation", frames, tforms, layout="train")
    tusrec.write_landmarks(data, "000", {"LH_rotation": np.array([[3, 50, 60], [11, 100, 20]])})
    pred = tmp_path / "pred"
    assert main(["freehand", "predict", str(data), "--method", "decorrelation", "--out", str(pred)]) == 0
    p = tusrec.read_prediction(pred / "000" / "LH_rotation.h5")
    params = g.params_from_matrix(p.local_transforms)
    np.testing.assert_allclose(params[:, 3:5], np.broadcast_to(t[:2], (n - 1, 2)), atol=0.02)
    assert np.abs(params[:, 5]).max() < 0.05 and np.abs(params[:, :3]).max() < 1e-3
    [score] = _scores(data, pred)
    assert score.score > 0.95


@pytest.fixture(scope="module")
def sim_step_frames():
    pytest.importorskip("usnav.sim.bmode")
    from usnav.sim.bmode import render_frame
    from usnav.sim.probe import default_probe
    from usnav.sim.scene import homogeneous_scene

    probe = default_probe(240, 320)
    scene = homogeneous_scene(seed=7, attenuation=0.7)
    R = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])  # image z (elevation) = world +y
    frames = []
    for k in range(4):
        T = np.eye(4)
        T[:3, :3] = R
        T[:3, 3] = [-40.0, 3.0 + 0.4 * k, 5.0]
        frames.append(render_frame(scene, T, probe))
    S = np.diag([probe.spacing_mm[0], probe.spacing_mm[1], 1.0, 1.0])
    return np.stack(frames), S


@pytest.fixture(scope="module")
def sim_lateral_frames():
    pytest.importorskip("usnav.sim.bmode")
    from usnav.sim.bmode import render_frame
    from usnav.sim.probe import default_probe
    from usnav.sim.scene import homogeneous_scene

    probe = default_probe(240, 320)
    scene = homogeneous_scene(seed=8, attenuation=0.7)
    R = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])  # image x = world x
    frames = []
    for k in range(4):
        T = np.eye(4)
        T[:3, :3] = R
        T[:3, 3] = [-40.0 + 0.5 * k, 3.0, 5.0]
        frames.append(render_frame(scene, T, probe))
    S = np.diag([probe.spacing_mm[0], probe.spacing_mm[1], 1.0, 1.0])
    return np.stack(frames), S


def test_decorrelation_recovers_known_inplane_shift_of_simulated_speckle(sim_lateral_frames):
    """Simulator speckle, probe moved 0.5 mm along the image x axis per frame: frame n's tissue at p
    is at p + (0.5, 0, 0) mm in frame n-1 (T_previous_from_image translation +0.5 mm), within 20 %.
    The speckle of a curvilinear probe moved sideways is not a pure shift (each tissue point is seen
    along another beam direction), so some out-of-plane motion is reported: < 0.25 mm (measured 0.18)."""
    from usnav.freehand.decorrelation import estimate_transforms
    from usnav.geometry import params_from_matrix

    frames, S = sim_lateral_frames
    G, L = estimate_transforms(frames, S)
    p = params_from_matrix(L)
    np.testing.assert_allclose(p[:, 3], 0.5, rtol=0.2)
    assert np.all(np.abs(p[:, 4]) < 0.1) and np.all(np.abs(p[:, 2]) < 2e-3)
    centre = np.array([frames.shape[2] / 2 * S[0, 0], frames.shape[1] / 2 * S[1, 1], 0.0, 1.0])
    assert np.all(np.abs((L @ centre)[:, 2]) < 0.25)
    np.testing.assert_allclose(G[-1][0, 3], 1.5, rtol=0.2)


def test_relative_signs_from_frames_two_apart():
    """|z_n - z_n-2| = d_n-1 + d_n means the same direction, |d_n - d_n-1| a reversal; small motions are undecided (+1)."""
    from usnav.freehand.decorrelation import relative_signs

    d = np.full((3, 8), 0.4)
    e = np.stack([np.full(8, 0.8), np.full(8, 0.02), np.full(8, 0.8)])
    np.testing.assert_array_equal(relative_signs(d, d, e), [1.0, -1.0, 1.0])
    small = np.full((1, 8), 0.05)
    np.testing.assert_array_equal(relative_signs(small, small, np.zeros((1, 8))), [1.0])


def test_abs_plane_fit_finds_a_sign_change_inside_the_image():
    """Fanning about the contact point: dz = -0.3 + 0.012 y changes sign at y = 25 mm; the unsigned
    distances are fitted by |plane| with the sign change, not by a plane through |dz|."""
    from usnav.freehand.decorrelation import fit_abs_plane

    x, y = np.meshgrid([40.0, 55.0, 70.0, 85.0], [10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    Az = np.stack([np.ones(x.size), x.ravel(), y.ravel()], 1)
    true = np.array([-0.3, 0.0, 0.012])
    planes = fit_abs_plane(Az, np.abs(Az @ true)[None])
    np.testing.assert_allclose(np.abs(Az @ planes[0]), np.abs(Az @ true), atol=1e-9)
    assert np.allclose(planes[0], true) or np.allclose(planes[0], -true)


def test_decorrelation_recovers_known_elevational_step(sim_step_frames):
    """Simulator speckle, image plane stepped 0.4 mm out of plane per frame: the decorrelation
    method finds ~0.4 mm per frame along z (sign +: the documented starting direction)."""
    from usnav.freehand.decorrelation import estimate_transforms
    from usnav.geometry import params_from_matrix

    frames, S = sim_step_frames
    G, L = estimate_transforms(frames, S)
    p = params_from_matrix(L)
    assert np.all(np.abs(p[:, 3:5]) < 0.1)  # no in-plane motion
    # out-of-plane displacement at the image centre
    centre = np.array([frames.shape[2] / 2 * S[0, 0], frames.shape[1] / 2 * S[1, 1], 0.0, 1.0])
    dz = (L @ centre)[:, 2]
    np.testing.assert_allclose(dz, 0.4, rtol=0.2)
    np.testing.assert_allclose((G[-1] @ centre)[2], 1.2, rtol=0.2)


def _train_tiny(data: Path, run: Path) -> None:
    from usnav.freehand.train import TrainConfig, train

    cfg = TrainConfig(method="sequence", input_hw=(16, 16), window=6, window_stride=3, batch_size=2, epochs=1,
                      val_fraction=0.25, steps_per_epoch=2,
                      model_overrides={"channels": [4, 8], "feature_dim": 16, "hidden": 8, "layers": 1})
    train(data, run, cfg, show_progress=False)


def _import_submission(folder: Path):
    for name in [m for m in sys.modules if m == "usnav_freehand" or m.startswith("usnav_freehand.")]:
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location(f"predict_ddfs_{abs(hash(str(folder)))}", folder / "predict_ddfs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model", ["run", "decorrelation"])
def test_submission_matches_tusrec_ddfs(tmp_path: Path, model: str):
    data = tmp_path / "data"
    written = make_tusrec_dataset(data, subjects=("000",), scans=("LH_rotation",), n_frames=14, frame_shape=(96, 128))
    if model == "run":
        _train_tiny(data, tmp_path / "run")
        model_arg = str(tmp_path / "run")
        predict_args = ["--model", model_arg]
    else:
        model_arg = "decorrelation"
        predict_args = ["--method", "decorrelation"]
    sub = tmp_path / "submission"
    assert main(["freehand", "submission", "--model", model_arg, "--out", str(sub)]) == 0
    assert (sub / "predict_ddfs.py").exists() and (sub / "requirements.txt").exists()
    assert "torch==" in (sub / "requirements.txt").read_text()
    # reference: usnav freehand predict + usnav tusrec ddfs
    pred, ddfs = tmp_path / "pred", tmp_path / "ddfs"
    assert main(["freehand", "predict", str(data), *predict_args, "--out", str(pred)]) == 0
    assert main(["tusrec", "ddfs", str(data), str(pred), str(ddfs)]) == 0
    scan = written[("000", "LH_rotation")]
    module = _import_submission(sub)
    GP, GL, LP, LL = module.predict_ddfs(scan["frames"], scan["landmarks"], str(data / "calib_matrix.csv"),
                                         torch.device("cpu"))
    n, H, W = scan["frames"].shape
    assert GP.shape == LP.shape == (n - 1, 3, H * W) and GL.shape == LL.shape == (3, len(scan["landmarks"]))
    with h5py.File(ddfs / "000" / "LH_rotation.h5") as f:
        for name, arr in zip(("GP", "GL", "LP", "LL"), (GP, GL, LP, LL)):
            assert arr.dtype == np.float32
            np.testing.assert_allclose(arr, f[name][()], atol=1e-5, rtol=0)
    assert np.abs(GP).max() > 0  # a real prediction, not all zeros


def test_cli_train_then_predict_with_run(tusrec_data, tmp_path: Path):
    data, _ = tusrec_data
    run = tmp_path / "run"
    args = ["freehand", "train", str(data), "--method", "sequence", "--out", str(run), "--epochs", "1",
            "--frame-size", "16x16", "--window", "4", "--window-stride", "4", "--steps-per-epoch", "1", "--threads", "1"]
    assert main(args) == 0
    assert (run / "metrics.csv").exists() and (run / "best" / "model.safetensors").exists()
    assert main(args) == 2  # the run exists: --resume is required
    pred = tmp_path / "pred"
    assert main(["freehand", "predict", str(data), "--model", str(run), "--out", str(pred)]) == 0
    assert main(["freehand", "predict", str(data), "--model", str(run), "--method", "two-frame", "--out", str(pred)]) == 2
    assert len(_scores(data, pred)) == 4


def test_default_weights_ship_and_predict(tusrec_data, tmp_path: Path):
    from usnav.freehand.predict import DEFAULT_MODEL_DIR, resolve_checkpoint

    if not (DEFAULT_MODEL_DIR / "model.safetensors").exists():
        pytest.fail(f"default weights missing in {DEFAULT_MODEL_DIR}")
    folder = resolve_checkpoint("default")
    assert (folder / "model.safetensors").stat().st_size <= 30 * 2**20
    data, _ = tusrec_data
    pred = tmp_path / "pred"
    assert main(["freehand", "predict", str(data), "--model", "default", "--out", str(pred)]) == 0
    scores = _scores(data, pred)
    assert len(scores) == 4 and all(np.isfinite(s.score) for s in scores)
