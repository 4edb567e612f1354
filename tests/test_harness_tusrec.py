"""TUS-REC submission harness: isolation, limits, per-scan failures, scoring = `usnav tusrec score`."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import make_tusrec_dataset

from usnav import geometry as g
from usnav.cli import main
from usnav.harness.tusrec import OutputError, score_outputs
from usnav.io import tusrec
from usnav.metrics.tusrec import ddfs_from_transforms

SCANS = ("s_ok", "s_shape", "s_nan", "s_dtype", "s_raise", "s_loop", "s_exit", "s_memory", "s_ok2")

# A submission helper shared by the test submissions: which scan are these frames?
_FIND_SCAN = '''
import numpy as np
from usnav.io.tusrec import open_dataset
from usnav.metrics.tusrec import ddfs_from_transforms

DATA = {data!r}


def find_scan(frames):
    ds = open_dataset(DATA)
    for ref in ds.scans:
        with ds.open_scan(ref) as scan:
            if scan.n_frames == len(frames) and np.array_equal(scan.read_frames(), frames):
                return ds, ref, scan.T_image0_from_image, scan.T_previous_from_image, scan.frame_shape
    raise RuntimeError("unknown scan")
'''

SUBMISSIONS = {
    "perfect": '''
def predict_ddfs(frames, landmark, data_path_calib, device):
    ds, ref, G, L, shape = find_scan(frames)
    return ddfs_from_transforms(G, L, ds.calibration.T_mm_from_pixel, shape, landmark)
''',
    "identity": '''
def predict_ddfs(frames, landmark, data_path_calib, device):
    n, h, w = frames.shape
    zeros = np.zeros((n - 1, 3, h * w), dtype=np.float32)
    return zeros, np.zeros((3, len(landmark)), np.float32), zeros.copy(), np.zeros((3, len(landmark)), np.float32)
''',
    # DDFs of a stored prediction set, in float64: must equal `usnav tusrec score` of that set.
    "fromfile": '''
import os
from usnav.io.tusrec import prediction_path, read_prediction

def predict_ddfs(frames, landmark, data_path_calib, device):
    ds, ref, G, L, shape = find_scan(frames)
    p = read_prediction(prediction_path(os.environ["USNAV_TEST_PRED"], ref))
    return ddfs_from_transforms(p.global_transforms, p.local_transforms, ds.calibration.T_mm_from_pixel, shape,
                                landmark, dtype=np.float64)
''',
    "broken": '''
import os, time, torch

def predict_ddfs(frames, landmark, data_path_calib, device):
    assert isinstance(device, torch.device) and os.path.exists(data_path_calib)
    ds, ref, G, L, shape = find_scan(frames)
    GP, GL, LP, LL = ddfs_from_transforms(G, L, ds.calibration.T_mm_from_pixel, shape, landmark)
    name = ref.scan
    print("running", name)
    if name == "s_shape":
        return GP[:, :, :-1], GL, LP, LL
    if name == "s_nan":
        LP[3, 1, 7] = np.nan
        return GP, GL, LP, LL
    if name == "s_dtype":
        return GP, GL.astype(np.int64), LP, LL
    if name == "s_raise":
        raise ValueError("deliberate failure")
    if name == "s_loop":
        while True:
            time.sleep(0.01)
    if name == "s_exit":
        os._exit(3)
    if name == "s_memory":
        big = np.ones(3_000_000_000, dtype=np.uint8)
        return big, GL, LP, LL
    return torch.from_numpy(GP), GL, LP, LL   # tensors are accepted
''',
    "importerror": '''
import a_module_that_does_not_exist

def predict_ddfs(frames, landmark, data_path_calib, device):
    pass
''',
}


def _write_submission(root: Path, name: str, data: Path) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    text = _FIND_SCAN.format(data=str(data)) + SUBMISSIONS[name]
    if name == "importerror":
        text = SUBMISSIONS[name]
    (folder / "predict_ddfs.py").write_text(textwrap.dedent(text))
    if name == "perfect":
        # a package in the submission folder must not shadow the harness's own imports
        (folder / "usnav").mkdir()
        (folder / "usnav" / "__init__.py").write_text("raise ImportError('shadowed')\n")
    return folder


@pytest.fixture(scope="module")
def harness_runs(tmp_path_factory):
    """One data set, every test submission run once through the CLI."""
    root = tmp_path_factory.mktemp("harness")
    data = root / "data"
    make_tusrec_dataset(data, layout="eval", subjects=("050",), scans=SCANS, n_frames=10, frame_shape=(24, 32),
                        n_landmarks=8, seed=3)
    # A noisy prediction set for the "fromfile" submission.
    ds = tusrec.open_dataset(data)
    rng = np.random.default_rng(5)
    pred = root / "pred"
    for ref in ds.scans:
        with ds.open_scan(ref) as scan:
            G, L = scan.T_image0_from_image, scan.T_previous_from_image
        noise = lambda n: g.matrix_from_params(rng.normal(0, [0.02, 0.02, 0.02, 1.0, 1.0, 1.0], size=(n, 6)))  # noqa: E731
        tusrec.write_prediction(tusrec.prediction_path(pred, ref), G @ noise(len(G)), L @ noise(len(L)))
    runs = {}
    import os

    os.environ["USNAV_TEST_PRED"] = str(pred)
    try:
        for name in SUBMISSIONS:
            sub = _write_submission(root / "submissions", name, data)
            out = root / "results" / name
            # a short limit only where a scan loops forever; generous elsewhere (shared, busy test machines)
            limit = "8" if name == "broken" else "120"
            args = ["tusrec", "evaluate-submission", str(sub), str(data), "--out", str(out),
                    "--time-limit", limit, "--memory-limit-gb", "2"]
            code = main(args)
            runs[name] = {"code": code, "out": out}
    finally:
        del os.environ["USNAV_TEST_PRED"]
    return {"root": root, "data": data, "pred": pred, "runs": runs}


def _results(run) -> dict:
    return json.loads((run["out"] / "results.json").read_text())


def test_perfect_submission_scores_one_and_identity_zero(harness_runs):
    runs = harness_runs["runs"]
    for name in ("perfect", "identity"):
        assert runs[name]["code"] == 0
    perfect, identity = _results(runs["perfect"]), _results(runs["identity"])
    assert [s["status"] for s in perfect["scans"]] == ["ok"] * len(SCANS)
    for s in perfect["scans"]:
        assert s["score"] == pytest.approx(1.0, abs=1e-5)
        assert s["GPE"] < 1e-4 and s["LLE"] < 1e-4
        assert s["time_s"] is not None and s["time_s"] >= 0
    for s in identity["scans"]:
        assert s["status"] == "ok"
        for m in ("GPE", "GLE", "LPE", "LLE"):
            assert s[f"{m}_score"] == pytest.approx(0.0, abs=1e-6)
            assert s[m] == pytest.approx(s[f"{m}_identity"], rel=1e-6)
            assert s[f"{m}_identity"] > 0.1


def test_metrics_h5_official_layout(harness_runs):
    out = harness_runs["runs"]["perfect"]["out"]
    with h5py.File(out / "metrics.h5", "r") as f:
        assert set(f.keys()) == {"GPE", "GLE", "LPE", "LLE", "time_elapsed"}
        for k in f.keys():
            assert f[k].shape == (len(SCANS),)
        keys = [k.decode() for k in f.attrs["keys"]]
        gpe = f["GPE"][()]
        seconds = f["time_elapsed"][()]
    with h5py.File(harness_runs["data"] / "dataset_keys.h5", "r") as f:
        assert keys == list(f.keys())  # dataset_keys order
    res = _results(harness_runs["runs"]["perfect"])
    np.testing.assert_allclose(gpe, [s["GPE"] for s in res["scans"]])
    np.testing.assert_allclose(seconds, [s["time_s"] for s in res["scans"]])


def test_harness_equals_usnav_tusrec_score(harness_runs, tmp_path):
    json_out = tmp_path / "score.json"
    assert main(["tusrec", "score", str(harness_runs["data"]), str(harness_runs["pred"]), "--json", str(json_out)]) == 0
    reference = {f"sub{s['subject']}__{s['scan']}": s for s in json.loads(json_out.read_text())["scans"]}
    res = _results(harness_runs["runs"]["fromfile"])
    assert len(res["scans"]) == len(SCANS)
    for s in res["scans"]:
        ref = reference[s["key"]]
        assert s["status"] == "ok"
        assert 0.2 < s["score"] < 0.99  # a real, imperfect prediction
        for k in ("GPE", "GLE", "LPE", "LLE", "GPE_identity", "GLE_identity", "LPE_identity", "LLE_identity", "score"):
            assert s[k] == pytest.approx(ref[k], rel=1e-7, abs=1e-9), k


def test_broken_submission_reported_per_scan(harness_runs):
    run = harness_runs["runs"]["broken"]
    assert run["code"] == 0
    res = {s["scan"]: s for s in _results(run)["scans"]}
    assert res["s_ok"]["status"] == "ok" and res["s_ok"]["score"] == pytest.approx(1.0, abs=1e-5)
    assert res["s_ok2"]["status"] == "ok"  # a fresh process after the timeout and the crash
    assert res["s_shape"]["status"] == "invalid"
    assert "GP has shape (9, 3, 767), expected (9, 3, 768)" in res["s_shape"]["message"]
    assert res["s_nan"]["status"] == "invalid" and "LP contains NaN or Inf" in res["s_nan"]["message"]
    assert res["s_dtype"]["status"] == "invalid" and "GL has dtype int64" in res["s_dtype"]["message"]
    assert res["s_raise"]["status"] == "exception"
    assert "ValueError: deliberate failure" in res["s_raise"]["message"]
    assert res["s_loop"]["status"] == "timeout" and "time limit of 8 s" in res["s_loop"]["message"]
    assert res["s_exit"]["status"] == "crash" and "exit code 3" in res["s_exit"]["message"]
    assert res["s_memory"]["status"] == "exception" and "MemoryError" in res["s_memory"]["message"]
    for name, s in res.items():
        # identity errors are known for every scan, scores only for the good ones
        assert s["GPE_identity"] > 0
        if s["status"] != "ok":
            assert s["GPE"] is None and s["score"] is None
    with h5py.File(run["out"] / "metrics.h5", "r") as f:
        gpe = f["GPE"][()]
        status = [x.decode() for x in f.attrs["status"]]
        keys = [x.decode() for x in f.attrs["keys"]]
    assert status[keys.index("sub050__s_loop")] == "timeout"
    assert np.isnan(gpe[keys.index("sub050__s_nan")]) and np.isfinite(gpe[keys.index("sub050__s_ok")])
    log = (run["out"] / "submission.log").read_text()
    assert "running s_ok" in log  # what the submission prints goes to the log
    assert 'raise ValueError("deliberate failure")' in log  # the traceback is kept for the organisers


def test_import_error_reported_for_every_scan(harness_runs):
    run = harness_runs["runs"]["importerror"]
    assert run["code"] == 0
    res = _results(run)
    assert {s["status"] for s in res["scans"]} == {"import-error"}
    assert "ModuleNotFoundError" in res["scans"][0]["message"]
    assert "import a_module_that_does_not_exist" in (run["out"] / "submission.log").read_text()
    assert res["summary"]["status_counts"]["import-error"] == len(SCANS)
    assert res["summary"]["score_failed_as_identity"] == 0.0


def test_bad_harness_inputs_exit_2(tmp_path, capsys, harness_runs):
    empty = tmp_path / "empty_submission"
    empty.mkdir()
    out = tmp_path / "out"
    assert main(["tusrec", "evaluate-submission", str(empty), str(harness_runs["data"]), "--out", str(out)]) == 2
    assert "has no predict_ddfs.py" in capsys.readouterr().err
    assert not out.exists()
    sub = harness_runs["root"] / "submissions" / "identity"
    assert main(["tusrec", "evaluate-submission", str(sub), str(tmp_path / "nodata"), "--out", str(out)]) == 2
    assert "data set folder not found" in capsys.readouterr().err
    assert main(["tusrec", "evaluate-submission", str(sub), str(harness_runs["data"]), "--out", str(out),
                 "--time-limit", "0"]) == 2
    assert not out.exists()
    import torch

    if not torch.cuda.is_available():
        assert main(["tusrec", "evaluate-submission", str(sub), str(harness_runs["data"]), "--out", str(out),
                     "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
        assert not out.exists()


def test_score_outputs_checks_and_chunking(rng):
    S = np.diag([0.3, 0.2, 1.0, 1.0])
    G = g.matrix_from_params(rng.normal(0, [0.1, 0.1, 0.1, 5, 5, 5], size=(7, 6)))
    L = g.matrix_from_params(rng.normal(0, [0.01, 0.01, 0.01, 1, 1, 1], size=(7, 6)))
    lm = np.array([[1, 2, 3], [7, 5, 4], [3, 1, 1]])
    GP, GL, LP, LL = ddfs_from_transforms(G, L, S, (4, 5), lm, dtype=np.float64)
    offset = np.zeros_like(GP)
    offset[:, 2] = 2.0  # every pixel 2 mm off along z
    errs = score_outputs(GP + offset, GL, LP, LL, G, L, S, (4, 5), lm, chunk_frames=3)
    assert errs["GPE"] == pytest.approx(2.0) and errs["LPE"] == pytest.approx(0.0, abs=1e-12)
    assert errs["GLE"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(OutputError, match=r"LL has shape \(2, 3\), expected \(3, 3\)"):
        score_outputs(GP, GL, LP, LL[:2], G, L, S, (4, 5), lm)
    bad = GP.copy()
    bad[5, 0, 0] = np.inf
    with pytest.raises(OutputError, match=r"GP contains NaN or Inf \(first in row 5, i.e. frame 6\)"):
        score_outputs(bad, GL, LP, LL, G, L, S, (4, 5), lm, chunk_frames=2)


def test_npy_rows_reads_slices(tmp_path, rng):
    from usnav.harness.tusrec import NpyRows

    arr = rng.normal(size=(7, 3, 5)).astype(np.float32)
    np.save(tmp_path / "a.npy", arr)
    rows = NpyRows(tmp_path / "a.npy")
    assert rows.shape == (7, 3, 5) and rows.dtype == np.float32 and len(rows) == 7
    np.testing.assert_array_equal(rows[2:5], arr[2:5])
    np.testing.assert_array_equal(rows[5:100], arr[5:])
    np.testing.assert_array_equal(np.asarray(rows), arr)
    np.save(tmp_path / "f.npy", np.asfortranarray(arr))
    with pytest.raises(OutputError, match="not a C-ordered"):
        NpyRows(tmp_path / "f.npy")


def test_harness_results_feed_the_leaderboard(harness_runs, tmp_path):
    runs = harness_runs["runs"]
    out = tmp_path / "board.json"
    folders = [str(runs[name]["out"]) for name in ("identity", "broken", "importerror", "fromfile", "perfect")]
    assert main(["leaderboard", "tusrec", *folders, "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    scores = {r["team"]: r["score"] for r in rows}
    assert rows[0]["team"] == "perfect" and rows[0]["rank"] == 1 and scores["perfect"] == 1.0
    assert scores["identity"] == 0.0 and scores["importerror"] == 0.0
    # broken: two perfect scans out of nine, the failed ones count as identity
    assert scores["broken"] == round(2 / len(SCANS), 3)
    assert 0 < scores["fromfile"] < 1


def test_submission_cannot_rewrite_the_ground_truth(tmp_path):
    """The truth is read before any submission code runs: overwriting transfs/ changes nothing."""
    data = tmp_path / "data"
    make_tusrec_dataset(data, layout="eval", subjects=("001",), scans=("LH_rotation",), n_frames=6, seed=9)
    sub = tmp_path / "cheater"
    sub.mkdir()
    (sub / "predict_ddfs.py").write_text(textwrap.dedent(f'''
        import h5py, numpy as np

        def predict_ddfs(frames, landmark, data_path_calib, device):
            with h5py.File({str(data / "transfs" / "001" / "LH_rotation.h5")!r}, "r+") as f:
                f["tforms"][...] = np.broadcast_to(np.eye(4), f["tforms"].shape)  # "truth" = identity
            n, h, w = frames.shape
            z = np.zeros((n - 1, 3, h * w), np.float32)
            k = np.zeros((3, len(landmark)), np.float32)
            return z, k, z.copy(), k.copy()
    '''))
    out = tmp_path / "res"
    assert main(["tusrec", "evaluate-submission", str(sub), str(data), "--out", str(out), "--time-limit", "30"]) == 0
    scan = _results({"out": out})["scans"][0]
    assert scan["status"] == "ok"
    assert scan["GPE_identity"] > 1.0 and scan["score"] == pytest.approx(0.0, abs=1e-6)


def test_freehand_submission_folders_pass_through_unchanged(tmp_path):
    """Folders written by `usnav freehand submission` run in the harness as they are."""
    data = tmp_path / "data"
    make_tusrec_dataset(data, layout="eval", subjects=("002",), scans=("LH_rotation",), n_frames=6,
                        frame_shape=(96, 128), seed=4)
    for method in ("identity", "decorrelation"):
        sub = tmp_path / f"sub_{method}"
        assert main(["freehand", "submission", "--model", method, "--out", str(sub)]) == 0
        out = tmp_path / f"res_{method}"
        assert main(["tusrec", "evaluate-submission", str(sub), str(data), "--out", str(out), "--time-limit", "120"]) == 0
        scan = _results({"out": out})["scans"][0]
        assert scan["status"] == "ok", scan["message"]
        if method == "identity":
            assert scan["score"] == pytest.approx(0.0, abs=1e-6)
        else:
            assert np.isfinite(scan["score"]) and scan["time_s"] > 0


def _scores(out: Path) -> list[tuple]:
    """Per-scan (key, status, errors, identity errors) of a results folder; seconds left out."""
    keys = ("key", "status", "GPE", "GLE", "LPE", "LLE", "GPE_identity", "GLE_identity", "LPE_identity", "LLE_identity")
    return [tuple(s[k] for k in keys) for s in _results({"out": out})["scans"]]


def test_batch_layer_workers_resume_and_repair(tmp_path, capsys):
    """One batch case per scan: a 2-worker pool equals one process; a rerun skips finished scans,
    a truncated per-scan result is redone, a changed submission is evaluated again."""
    data = tmp_path / "data"
    scans = ("LH_rotation", "RH_rotation", "LH_scan3")
    make_tusrec_dataset(data, layout="eval", subjects=("004",), scans=scans, n_frames=6, frame_shape=(16, 20),
                        n_landmarks=4, seed=21)
    sub = _write_submission(tmp_path / "submissions", "identity", data)
    one, two = tmp_path / "one", tmp_path / "two"
    base = ["tusrec", "evaluate-submission", str(sub), str(data), "--time-limit", "120", "--memory-limit-gb", "2"]
    assert main([*base, "--out", str(one)]) == 0
    assert main([*base, "--out", str(two), "--workers", "2"]) == 0
    assert "3 cases: 3 done, 0 skipped" in capsys.readouterr().err
    assert _scores(one) == _scores(two)
    assert [s[1] for s in _scores(two)] == ["ok"] * 3
    assert sorted(p.relative_to(two).as_posix() for p in (two / "scans").rglob("*.json")) == [
        f"scans/004/{s}.json" for s in sorted(scans)]

    assert main([*base, "--out", str(two), "--workers", "2"]) == 0
    assert "3 cases: 0 done, 3 skipped" in capsys.readouterr().err

    part = two / "scans" / "004" / "RH_rotation.json"
    part.write_bytes(part.read_bytes()[:20])  # truncated
    before = _scores(two)
    assert main([*base, "--out", str(two)]) == 0
    err = capsys.readouterr().err
    assert "3 cases: 1 done, 2 skipped" in err
    assert _scores(two) == before
    assert json.loads(part.read_text())["status"] == "ok"
    assert "sub004__RH_rotation: ok" in (two / "submission.log").read_text()

    (sub / "predict_ddfs.py").write_text((sub / "predict_ddfs.py").read_text() + "\n# version 2\n")
    assert main([*base, "--out", str(two)]) == 0
    assert "3 cases: 3 done, 0 skipped" in capsys.readouterr().err
