"""Round trips and validation of the TUS-REC layouts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import calibration_example, make_tusrec_dataset

from usnav.cli import main
from usnav.errors import InputError
from usnav.io import tusrec


@pytest.mark.parametrize("layout", ["train", "eval"])
@pytest.mark.parametrize("scans", [("LH_rotation", "RH_rotation"), ("LH_Par_C_DtP", "RH_Per_S_PtD")])
def test_round_trip_exact(tmp_path, layout, scans):
    written = make_tusrec_dataset(tmp_path, layout=layout, scans=scans)
    ds = tusrec.open_dataset(tmp_path)
    assert ds.layout == layout
    assert sorted(ds.scans) == sorted(tusrec.ScanRef(s, n) for s, n in written)
    calib = calibration_example()
    assert np.array_equal(ds.calibration.T_mm_from_pixel, calib.T_mm_from_pixel)
    assert np.array_equal(ds.calibration.T_tool_from_mm, calib.T_tool_from_mm)
    for ref in ds.scans:
        want = written[(ref.subject, ref.scan)]
        with ds.open_scan(ref) as scan:
            assert isinstance(scan.frames, h5py.Dataset)  # lazy
            assert np.array_equal(scan.frames[3:5], want["frames"][3:5])
            assert np.array_equal(scan.read_frames(), want["frames"])
            assert np.array_equal(scan.tforms, want["tforms"])
            assert np.array_equal(scan.landmarks, want["landmarks"])


def test_eval_layout_keys_order_and_files(tmp_path):
    make_tusrec_dataset(tmp_path, layout="eval", subjects=("050", "051"))
    with h5py.File(tmp_path / "dataset_keys.h5") as f:
        assert sorted(f.keys()) == ["sub050__LH_rotation", "sub050__RH_rotation", "sub051__LH_rotation", "sub051__RH_rotation"]
    assert (tmp_path / "frames" / "050" / "LH_rotation.h5").exists()
    with h5py.File(tmp_path / "transfs" / "050" / "LH_rotation.h5") as f:
        assert list(f.keys()) == ["tforms"]
    with h5py.File(tmp_path / "frames" / "050" / "LH_rotation.h5") as f:
        assert list(f.keys()) == ["frames"]
    assert (tmp_path / "landmarks" / "landmark_050.h5").exists()


def test_same_input_same_bytes(tmp_path):
    digests = []
    for name in ("a", "b"):
        make_tusrec_dataset(tmp_path / name, layout="eval", seed=3)
        files = sorted(p for p in (tmp_path / name).rglob("*") if p.is_file())
        digests.append([(p.relative_to(tmp_path / name).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest()) for p in files])
    assert digests[0] == digests[1]


def test_calibration_reads_unlabelled_8_rows(tmp_path):
    calib = calibration_example()
    rows = np.concatenate([calib.T_mm_from_pixel, calib.T_tool_from_mm])
    path = tmp_path / "calib_matrix.csv"
    path.write_text("\n".join(",".join(repr(float(v)) for v in r) for r in rows) + "\n")
    back = tusrec.read_calibration(path)
    assert np.array_equal(back.T_tool_from_pixel, calib.T_tool_from_mm @ calib.T_mm_from_pixel)


def test_calibration_official_reader_layout(tmp_path):
    # The official reader skips lines 0 and 5 and reads rows 1-4 and 6-9.
    path = tmp_path / "calib_matrix.csv"
    tusrec.write_calibration(path, calibration_example())
    lines = [line.split(",") for line in path.read_text().splitlines()]
    S = np.array(lines[1:5], dtype=float)
    C = np.array(lines[6:10], dtype=float)
    assert np.array_equal(S, calibration_example().T_mm_from_pixel)
    assert np.array_equal(C, calibration_example().T_tool_from_mm)


def test_scan_writer_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with tusrec.ScanWriter(tmp_path, "000", "LH_rotation", 4, (8, 8)) as w:
            w.write(0, np.zeros((2, 8, 8), np.uint8), np.broadcast_to(np.eye(4), (2, 4, 4)))
            raise RuntimeError("crash mid-scan")
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="never written"):
        with tusrec.ScanWriter(tmp_path, "000", "LH_rotation", 4, (8, 8)) as w:
            w.write(0, np.zeros((2, 8, 8), np.uint8), np.broadcast_to(np.eye(4), (2, 4, 4)))
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


# ----------------------------------------------------------------- bad inputs


def _scan_file(root: Path) -> Path:
    return root / "frames_transfs" / "000" / "LH_rotation.h5"


def _rewrite(path: Path, **datasets) -> None:
    with h5py.File(path, "a") as f:
        for name, value in datasets.items():
            if name in f:
                del f[name]
            if value is not None:
                f.create_dataset(name, data=value)


def _corrupt_tforms(fn):
    def apply(root):
        path = _scan_file(root)
        with h5py.File(path, "r") as f:
            tforms = f["tforms"][()]
        _rewrite(path, tforms=fn(tforms))
    return apply


def _set_landmarks(rows):
    def apply(root):
        tusrec.write_landmarks(root, "000", {"LH_rotation": np.array(rows)})
    return apply


def _nan(t):
    t = t.copy()
    t[5, 0, 3] = np.nan
    return t


def _scale(t):
    t = t.copy()
    t[2, :3, :3] *= 1.1
    return t


def _write_calib(text):
    def apply(root):
        (root / "calib_matrix.csv").write_text(text)
    return apply


def _truncate(root):
    path = _scan_file(root)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


BAD_CASES = {
    "missing frames": (lambda r: _rewrite(_scan_file(r), frames=None), "missing dataset 'frames'"),
    "missing tforms": (lambda r: _rewrite(_scan_file(r), tforms=None), "missing dataset 'tforms'"),
    "wrong frame dtype": (lambda r: _rewrite(_scan_file(r), frames=np.zeros((12, 24, 32), np.float32)), "expected uint8"),
    "wrong frame shape": (lambda r: _rewrite(_scan_file(r), frames=np.zeros((12, 24), np.uint8)), "(N, H, W)"),
    "wrong tforms shape": (lambda r: _rewrite(_scan_file(r), tforms=np.zeros((12, 3, 4))), "(N, 4, 4)"),
    "NaN tforms": (_corrupt_tforms(_nan), "NaN or Inf in frame 5"),
    "non-rigid tforms": (_corrupt_tforms(_scale), "tforms[2] is not rigid"),
    "count mismatch": (_corrupt_tforms(lambda t: t[:-1]), "has 12 frames but 'tforms' has 11"),
    "landmark frame 0": (_set_landmarks([[0, 5, 5]]), "frame index 0"),
    "landmark frame N": (_set_landmarks([[12, 5, 5]]), "frame index 12"),
    "landmark outside": (_set_landmarks([[3, 33, 5]]), "outside the 1-based 32x24 image"),
    "landmark x 0": (_set_landmarks([[3, 0, 5]]), "outside the 1-based"),
    "calib text": (_write_calib("S\n1,0,0,0\n0,1,x,0\n"), "mixes numbers and text"),
    "calib short": (_write_calib("S\n1,0,0,0\n0,1,0,0\n0,0,1,0\n0,0,0,1\n"), "found 4 numeric rows"),
    "calib 3 columns": (_write_calib("S\n1,0,0\n"), "has 3 numbers"),
    "calib non-rigid C": (_write_calib("S\n0.2,0,0,0\n0,0.2,0,0\n0,0,1,0\n0,0,0,1\nC\n2,0,0,0\n0,1,0,0\n0,0,1,0\n0,0,0,1\n"), "not rigid"),
    "truncated file": (_truncate, "truncated"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_errors_and_exit_code(tmp_path, case, capsys):
    make_tusrec_dataset(tmp_path, subjects=("000",), scans=("LH_rotation",))
    corrupt, phrase = BAD_CASES[case]
    corrupt(tmp_path)
    with pytest.raises(InputError, match=None) as info:
        ds = tusrec.open_dataset(tmp_path)
        ds.open_scan(ds.scans[0]).close()
    assert phrase in str(info.value)
    assert str(tmp_path) in str(info.value)  # names the file
    capsys.readouterr()
    assert main(["tusrec", "validate", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and phrase in err and err.count("\n") == 1


def test_dataset_keys_path_tricks_rejected(tmp_path):
    make_tusrec_dataset(tmp_path, layout="eval", subjects=("000",), scans=("LH_rotation",))
    for key, phrase in [("sub..__LH_rotation", "not a plain file name"), ("sub000__..", "not a plain file name"),
                        ("sub000__.hidden", "not a plain file name"), ("sub../../etc__passwd", "is not of the form")]:
        with h5py.File(tmp_path / "dataset_keys.h5", "w") as f:
            f.create_dataset(key, data=0)
        with pytest.raises(InputError, match=phrase) as info:
            tusrec.open_dataset(tmp_path)
        assert "dataset_keys.h5" in str(info.value)


def test_missing_folder_and_not_a_dataset(tmp_path):
    with pytest.raises(InputError, match="data set folder not found"):
        tusrec.open_dataset(tmp_path / "nope")
    tusrec.write_calibration(tmp_path / "calib_matrix.csv", calibration_example())
    with pytest.raises(InputError, match="is not a TUS-REC data set"):
        tusrec.open_dataset(tmp_path)


def test_prediction_round_trip_and_validation(tmp_path, rng):
    from conftest import smooth_trajectory

    G = smooth_trajectory(rng, 9)
    L = smooth_trajectory(rng, 9)
    path = tmp_path / "000" / "LH_rotation.h5"
    tusrec.write_prediction(path, G, L)
    back = tusrec.read_prediction(path, n_frames=10)
    assert np.array_equal(back.global_transforms, G) and np.array_equal(back.local_transforms, L)
    with pytest.raises(InputError, match="expected 10"):
        tusrec.read_prediction(path, n_frames=11)
    bad = G.copy()
    bad[4, 0, 0] = np.inf
    tusrec.write_prediction(path, bad, L)
    with pytest.raises(InputError, match="NaN or Inf in transform 4"):
        tusrec.read_prediction(path)


def test_hidden_temporary_files_are_not_scans(tmp_path):
    make_tusrec_dataset(tmp_path, subjects=("000",), scans=("LH_rotation",))
    (tmp_path / "frames_transfs" / "000" / ".LH_rotation.abc123.tmp.h5").write_bytes(b"partial")
    (tmp_path / "frames_transfs" / ".000.tmpdir").mkdir()
    ds = tusrec.open_dataset(tmp_path)
    assert ds.scans == [tusrec.ScanRef("000", "LH_rotation")]
