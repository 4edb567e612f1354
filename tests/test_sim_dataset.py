"""Simulated TUS-REC data sets: reader validation, ground truth, landmarks, determinism, CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from usnav.geometry import is_rigid
from usnav.io.tusrec import open_dataset
from usnav.sim.tusrec_sim import SimConfig, dataset_calibration, scan_names, simulate_dataset, simulate_scan

# small but complete: 2 scans of 3 frames, 20 mm deep fan on 64x80 frames
CONFIG = SimConfig(
    anatomy="forearm", protocol="rotation", n_frames=3, frame_hw=(64, 80), depth_mm=20.0, seed=7, scene_voxel_mm=1.0
)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sim") / "train"
    simulate_dataset(root, CONFIG, subjects=1, first_subject=2)
    return root


def test_dataset_passes_reader_validation(dataset):
    ds = open_dataset(dataset)
    assert ds.layout == "train"
    assert [r.scan for r in ds.scans] == ["LH_rotation", "RH_rotation"]
    assert {r.subject for r in ds.scans} == {"002"}
    calib = ds.calibration
    np.testing.assert_allclose(calib.T_mm_from_pixel, CONFIG.probe().T_mm_from_pixel)
    assert is_rigid(calib.T_tool_from_mm)
    assert not np.allclose(calib.T_tool_from_mm, np.eye(4), atol=0.1)  # a realistic, non-identity C
    for ref in ds.scans:
        scan = ds.open_scan(ref)
        assert scan.n_frames == 3 and scan.frame_shape == (64, 80)
        frames = scan.read_frames()
        assert frames.dtype == np.uint8 and frames.max() > 50
        assert np.all(is_rigid(scan.tforms, atol=1e-3))
        lm = scan.landmarks
        assert lm.shape == (100, 3)
        assert lm[:, 0].min() >= 1 and lm[:, 0].max() <= 2
        fan = CONFIG.probe().fan_mask
        assert np.all(fan[lm[:, 2] - 1, lm[:, 1] - 1])  # 1-based (x, y) inside the fan


def test_ground_truth_is_what_a_tracker_records(dataset):
    ds = open_dataset(dataset)
    C = ds.calibration.T_tool_from_mm
    scene, T_world_from_image, tforms, _ = simulate_scan(CONFIG, 2, "LH_rotation")
    scan = ds.open_scan(ds.scans[0])
    np.testing.assert_allclose(scan.tforms, tforms, atol=1e-3)
    # T_tracker_from_image = tforms @ C is the rendered image pose up to one fixed camera placement
    T_tracker_from_image = scan.tforms @ C
    T_tracker_from_world = T_tracker_from_image @ np.linalg.inv(T_world_from_image)
    np.testing.assert_allclose(T_tracker_from_world, np.broadcast_to(T_tracker_from_world[0], (3, 4, 4)), atol=2e-3)
    # the reader's frame-to-frame transforms equal the true image-plane motion
    rel_true = np.linalg.inv(T_world_from_image[0]) @ T_world_from_image
    np.testing.assert_allclose(scan.T_image0_from_image, rel_true[1:], atol=5e-3)  # frames 1..N-1


def test_same_seed_same_bytes_and_seed_matters(dataset, tmp_path):
    again = tmp_path / "again"
    simulate_dataset(again, CONFIG, subjects=1, first_subject=2)
    assert _digest(again) == _digest(dataset)
    probe = CONFIG.probe()
    assert not np.allclose(dataset_calibration(7, probe).T_tool_from_mm, dataset_calibration(8, probe).T_tool_from_mm)


def test_eval_layout_with_dataset_keys(tmp_path):
    from dataclasses import replace

    root = tmp_path / "eval"
    simulate_dataset(root, replace(CONFIG, layout="eval", n_frames=2), subjects=1, first_subject=2)
    assert (root / "dataset_keys.h5").exists()
    ds = open_dataset(root)
    assert ds.layout == "eval"
    assert sorted(r.key for r in ds.scans) == ["sub002__LH_rotation", "sub002__RH_rotation"]
    assert ds.open_scan(ds.scans[0]).tforms.shape == (2, 4, 4)


def test_scan_names_cover_both_editions():
    assert scan_names("rotation") == ["LH_rotation", "RH_rotation"]
    names = scan_names("2024")
    assert len(names) == 24 and len(set(names)) == 24
    assert "RH_Per_S_PtD" in names and "LH_Par_L_DtP" in names


def test_calibration_is_rigid_and_deterministic():
    probe = CONFIG.probe()
    a = dataset_calibration(3, probe)
    b = dataset_calibration(3, probe)
    np.testing.assert_array_equal(a.T_tool_from_mm, b.T_tool_from_mm)
    assert is_rigid(a.T_tool_from_mm)
    assert 30.0 < np.linalg.norm(a.T_tool_from_mm[:3, 3]) < 150.0


def test_cli_writes_a_readable_dataset(tmp_path):
    from usnav.cli import main

    out = tmp_path / "cli"
    code = main(
        ["simulate", "tusrec", str(out), "--subjects", "1", "--first-subject", "2", "--frames", "3",
         "--frame-size", "64x80", "--depth-mm", "20", "--seed", "7", "--voxel-mm", "1.0"]
    )
    assert code == 0
    ds = open_dataset(out)
    assert len(ds.scans) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--frame-size", "big"], "--frame-size"),
        (["--anatomy", "liver"], "anatomy"),
        (["--protocol", "zigzag"], "protocol"),
        (["--frames", "1"], "at least 2 frames"),
        (["--subjects", "0"], "--subjects"),
    ],
)
def test_cli_bad_input_is_one_sentence_and_exit_2(tmp_path, capsys, args, message):
    from usnav.cli import main

    out = tmp_path / "bad"
    code = main(["simulate", "tusrec", str(out), *args])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not out.exists()


def test_cli_refuses_a_non_empty_folder(tmp_path, capsys):
    from usnav.cli import main

    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["simulate", "tusrec", str(out), "--frames", "2"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_worker_processes_write_the_same_bytes(dataset, tmp_path):
    par = tmp_path / "par"
    simulate_dataset(par, CONFIG, subjects=1, first_subject=2, workers=2)
    assert _digest(par) == _digest(dataset)
