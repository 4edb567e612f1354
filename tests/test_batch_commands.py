"""The batch layer through real usnav commands (tiny, fast configurations)."""

from __future__ import annotations

from pathlib import Path

import pytest

from usnav.batch import MANIFEST_NAME, read_manifest, verify_record
from usnav.batch.manifest import LOCK_NAME

pytestmark = pytest.mark.timeout(300)

# A scan in about a second: 2 frames of 32x40 pixels, coarse scatterers and anatomy voxels.
TINY_SIM = ["--frames", "2", "--frame-size", "32x40", "--depth-mm", "10", "--scatterer-spacing-mm", "0.4",
            "--voxel-mm", "2", "--seed", "7"]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_simulate_tusrec_pool_resume_and_repair(tmp_path, capsys):
    from usnav.cli import main
    from usnav.io.tusrec import open_dataset
    from usnav.sim.tusrec_sim import SimConfig, simulate_dataset

    # Reference: the simulator's own whole-data-set writer.
    ref = tmp_path / "ref"
    simulate_dataset(ref, SimConfig(n_frames=2, frame_hw=(32, 40), depth_mm=10.0, scatterer_spacing_mm=0.4,
                                    scene_voxel_mm=2.0, seed=7), subjects=1)
    out = tmp_path / "out"
    args = ["simulate", "tusrec", str(out), *TINY_SIM]
    assert main([*args, "--workers", "2"]) == 0
    assert "2 done, 0 skipped" in capsys.readouterr().err
    # Same bytes as the reference, plus the manifest; every recorded output verifies.
    expected = _files(ref)
    got = _files(out)
    assert set(got) == set(expected) | {MANIFEST_NAME, LOCK_NAME}
    assert all(got[k] == v for k, v in expected.items())
    recs = read_manifest(out)
    assert sorted(recs) == ["000/LH_rotation", "000/RH_rotation"]
    assert all(verify_record(out, r) is None for r in recs.values())
    assert len(open_dataset(out).scans) == 2

    # Truncate one scan and delete the landmarks: the rerun (in-process) redoes
    # exactly that scan and rewrites the landmarks from the manifest.
    victim = next(iter(recs["000/RH_rotation"].outputs))
    (out / victim).write_bytes((out / victim).read_bytes()[:200])
    (out / "landmarks" / "landmark_000.h5").unlink()
    assert main(args) == 0
    assert "1 done, 1 skipped" in capsys.readouterr().err
    assert all(_files(out)[k] == v for k, v in expected.items())

    # A third run has nothing to do.
    assert main(args) == 0
    assert "0 done, 2 skipped" in capsys.readouterr().err


def test_simulate_tusrec_refuses_foreign_folder_and_bad_batch_options(tmp_path, capsys):
    from usnav.cli import main

    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    assert main(["simulate", "tusrec", str(full), *TINY_SIM]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["simulate", "tusrec", str(tmp_path / "x"), *TINY_SIM, "--workers", "0"]) == 2
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_simulate_tusrec_on_local_ray_matches_pool(tmp_path, capsys):
    pytest.importorskip("ray")
    from usnav.cli import main

    a, b = tmp_path / "pool", tmp_path / "ray"
    assert main(["simulate", "tusrec", str(a), *TINY_SIM, "--workers", "2"]) == 0
    assert main(["simulate", "tusrec", str(b), *TINY_SIM, "--ray", "local", "--workers", "2"]) == 0
    fa, fb = _files(a), _files(b)
    fa.pop(MANIFEST_NAME), fb.pop(MANIFEST_NAME)
    assert fa == fb


def test_freehand_predict_pool_matches_in_process_and_repairs(tusrec_data, tmp_path, capsys):
    from usnav.cli import main

    data, _ = tusrec_data
    a, b = tmp_path / "inproc", tmp_path / "pool"
    assert main(["freehand", "predict", str(data), "--method", "identity", "--out", str(a)]) == 0
    assert main(["freehand", "predict", str(data), "--method", "identity", "--out", str(b), "--workers", "2"]) == 0
    fa, fb = _files(a), _files(b)
    assert set(fa) == set(fb) and len([k for k in fa if k.endswith(".h5")]) == 4
    assert all(fa[k] == fb[k] for k in fa if k.endswith(".h5"))
    capsys.readouterr()
    victim = b / "001" / "LH_rotation.h5"
    victim.write_bytes(victim.read_bytes()[:100])
    assert main(["freehand", "predict", str(data), "--method", "identity", "--out", str(b), "--workers", "2"]) == 0
    assert "1 done, 3 skipped" in capsys.readouterr().err
    assert victim.read_bytes() == fa["001/LH_rotation.h5"]
