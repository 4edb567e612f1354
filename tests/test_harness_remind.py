"""ReMIND2Reg submission check and scoring (`usnav remind evaluate`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from usnav import geometry as g
from usnav.cli import main
from usnav.errors import InputError

SHAPE = (12, 10, 8)
SPACING = 0.5
# Moving landmarks = fixed landmarks + this shift (voxels), per (case, moving modality).
SHIFTS = {(1, 1): (1.0, -0.5, 0.25), (1, 2): (0.0, 2.0, 0.0), (2, 1): (-1.5, 0.0, 1.0)}


def _affine() -> np.ndarray:
    """Oblique 0.5 mm grid."""
    A = g.matrix_from_euler_zyx([0.3, -0.2, 0.1], [10.0, -20.0, 5.0])
    A[:3, :3] *= SPACING
    return A


def _make_data(root: Path, rng) -> Path:
    from usnav.io import learn2reg as l2r

    data = root / "data"
    affine = _affine()
    val_pairs = []
    for case in (1, 2):
        fixed_name = l2r.image_name(case, 0)
        l2r.write_volume(data / "imagesVal" / fixed_name, rng.random(SHAPE, dtype=np.float32), affine)
        pts = rng.uniform([3, 3, 3], [s - 4 for s in SHAPE], size=(6, 3))
        l2r.write_landmarks(data / "landmarksVal" / fixed_name.replace(".nii.gz", ".csv"), pts)
        for (c, mod), shift in SHIFTS.items():
            if c != case:
                continue
            name = l2r.image_name(case, mod)
            l2r.write_volume(data / "imagesVal" / name, rng.random(SHAPE, dtype=np.float32), affine)
            l2r.write_landmarks(data / "landmarksVal" / name.replace(".nii.gz", ".csv"), pts + np.array(shift))
            val_pairs.append((f"imagesVal/{fixed_name}", f"imagesVal/{name}"))
    l2r.write_dataset_json(data, train_pairs=[], val_pairs=val_pairs, shape=SHAPE)
    return data


def _disp_name(case: int, mod: int) -> str:
    return f"disp_{case:04d}_0000_{case:04d}_{mod:04d}.nii.gz"


def _submission(root: Path, name: str, perfect: bool, runtimes: dict | None = None, dtype=np.float32,
                shape=SHAPE, affine=None) -> Path:
    from usnav.io import learn2reg as l2r

    folder = root / name
    folder.mkdir(parents=True)
    for (case, mod), shift in SHIFTS.items():
        disp = np.zeros((*shape, 3), dtype=np.float32)
        if perfect:
            disp[...] = shift
        l2r.write_volume(folder / _disp_name(case, mod), disp.astype(dtype), _affine() if affine is None else affine)
    if runtimes is not None:
        (folder / "runtimes.json").write_text(json.dumps(runtimes))
    return folder


def _run(args: list[str]) -> int:
    """`usnav remind evaluate ...`, or the same command on a bare app until the remind group exists."""
    import typer

    from usnav.cli import app as root

    group = next((grp for grp in root.registered_groups if getattr(grp, "name", None) == "remind"), None)
    if group is not None and any(c.name == "evaluate" for c in group.typer_instance.registered_commands):
        return main(["remind", "evaluate", *args])
    from usnav.cli.remind_harness import register

    mini = typer.Typer()

    @mini.callback()
    def _root() -> None:
        """test app"""

    register(mini)
    try:
        mini(args=["evaluate", *args], standalone_mode=False)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


@pytest.fixture
def data(tmp_path, rng):
    return _make_data(tmp_path, rng)


def test_perfect_and_zero_submissions_known_tre(data, tmp_path):
    perfect = _submission(tmp_path / "subs", "perfect", True,
                          runtimes={_disp_name(1, 1): 12.5, "disp_0001_0000_0001_0002": 7, "0002_0000_0002_0001": 3})
    zero = _submission(tmp_path / "subs", "zero", False, runtimes={_disp_name(1, 1): 1.0})
    assert _run([str(data), str(perfect), "--out", str(tmp_path / "res" / "perfect")]) == 0
    assert _run([str(data), str(zero), "--out", str(tmp_path / "zero.json"), "--team", "Zero"]) == 0
    p = json.loads((tmp_path / "res" / "perfect" / "results.json").read_text())
    z = json.loads((tmp_path / "zero.json").read_text())
    assert z["team"] == "Zero"
    assert [r["pair"] for r in p["pairs"]] == [_disp_name(1, 1), _disp_name(1, 2), _disp_name(2, 1)]
    for rp, rz in zip(p["pairs"], z["pairs"]):
        case, mod = int(rp["pair"][5:9]), int(rp["pair"][-11:-7])
        initial = SPACING * float(np.linalg.norm(SHIFTS[(case, mod)]))
        assert rz["tre_mm"] == pytest.approx(initial, rel=1e-6)
        assert rz["tre_initial_mm"] == pytest.approx(initial, rel=1e-6)
        assert rp["tre_mm"] == pytest.approx(0.0, abs=1e-3)
        assert rp["tre30_mm"] == pytest.approx(0.0, abs=1e-3)
        assert rp["sdlogj"] == pytest.approx(0.0, abs=1e-6) and rp["folding_fraction"] == 0.0
        assert rp["n_landmarks"] == 6
    assert [r["runtime_s"] for r in p["pairs"]] == [12.5, 7.0, 3.0]
    assert [r["runtime_s"] for r in z["pairs"]] == [1.0, None, None]
    assert z["summary"]["runtime_missing"] == 2
    # the results feed the leaderboard; the zero team's missing runtimes count as 3500 s
    from usnav.leaderboard.remind import load_remind_results, remind_board

    board = remind_board([load_remind_results(tmp_path / "res" / "perfect"), load_remind_results(tmp_path / "zero.json")])
    rows = {r["team"]: r for r in board.rows}
    assert rows["perfect"]["tre_mm"] < 1e-3
    assert rows["Zero"]["runtime_s"] == pytest.approx((1.0 + 3500 + 3500) / 3)


def test_runtimes_option_overrides_default(data, tmp_path):
    sub = _submission(tmp_path / "subs", "perfect", True, runtimes={_disp_name(1, 1): 12.5})
    other = tmp_path / "times.json"
    other.write_text(json.dumps({_disp_name(1, 1): 2.0}))
    assert _run([str(data), str(sub), "--out", str(tmp_path / "r.json"), "--runtimes", str(other)]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["pairs"][0]["runtime_s"] == 2.0


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "displacement field missing from the submission"),
        ("dtype", "has dtype float64, expected float32"),
        ("shape", "has shape (12, 10, 7, 3), expected (12, 10, 8, 3)"),
        ("affine", "affine differs from the fixed image's affine"),
        ("runtimes", "is not valid JSON"),
        ("negative", "must be a non-negative number of seconds"),
    ],
)
def test_bad_submissions_exit_2(data, tmp_path, capsys, kind, message):
    subs = tmp_path / "subs"
    if kind == "dtype":
        sub = _submission(subs, kind, True, dtype=np.float64)
    elif kind == "shape":
        sub = _submission(subs, kind, True, shape=(12, 10, 7))
    elif kind == "affine":
        shifted = _affine()
        shifted[:3, 3] += 1.0
        sub = _submission(subs, kind, True, affine=shifted)
    else:
        sub = _submission(subs, kind, True, runtimes={_disp_name(1, 1): -1.0} if kind == "negative" else None)
        if kind == "missing":
            (sub / _disp_name(1, 2)).unlink()
        if kind == "runtimes":
            (sub / "runtimes.json").write_text("{oops")
    out = tmp_path / "out"
    assert _run([str(data), str(sub), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    if kind == "missing":
        assert _disp_name(1, 2) in err
    assert message in err and err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists()


def test_evaluate_equals_remind_score_and_both_feed_the_board(data, tmp_path):
    sub = _submission(tmp_path / "subs", "half", False, runtimes={_disp_name(2, 1): 4.0})
    # a non-trivial field: half of the true shift
    from usnav.io import learn2reg as l2r

    for (case, mod), shift in SHIFTS.items():
        disp = np.broadcast_to(np.asarray(shift, dtype=np.float32) / 2, (*SHAPE, 3)).copy()
        disp[2:5, 3:6, 2:4, 0] += 0.3  # a bump, so SDlogJ is not zero
        l2r.write_displacement(sub / _disp_name(case, mod), disp, _affine())
    assert _run([str(data), str(sub), "--out", str(tmp_path / "ours.json")]) == 0
    assert main(["remind", "score", str(data), str(sub), "--json", str(tmp_path / "theirs.json")]) == 0
    ours = {r["pair"]: r for r in json.loads((tmp_path / "ours.json").read_text())["pairs"]}
    theirs = {r["pair"]: r for r in json.loads((tmp_path / "theirs.json").read_text())["pairs"]}
    assert set(ours) == set(theirs)
    for name, r in ours.items():
        for k in ("tre_mm", "tre30_mm", "tre_initial_mm", "sdlogj", "folding_fraction", "runtime_s"):
            if theirs[name][k] is None:
                assert r[k] is None, (name, k)
            else:
                assert r[k] == pytest.approx(theirs[name][k], rel=1e-9, abs=1e-12), (name, k)
    assert ours[_disp_name(1, 1)]["sdlogj"] > 0
    from usnav.leaderboard.remind import load_remind_results, remind_board

    board = remind_board([load_remind_results(tmp_path / "ours.json"), load_remind_results(tmp_path / "theirs.json")])
    assert [r["score"] for r in board.rows] == [1.0, 1.0]  # identical results: no significant differences
