"""ReMIND2Reg leaderboard: Wilcoxon rank-sum comparisons, rank scores, geometric mean."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from usnav.cli import main
from usnav.leaderboard.remind import load_remind_results, rank_score, remind_board, wilcoxon_wins

N_CASES = 10


def _team(root: Path, name: str, tre: float, tre30: float, sdlogj: float, runtime: float | None,
          spread: float = 0.01) -> Path:
    pairs = []
    for i in range(N_CASES):
        pairs.append({
            "pair": f"disp_{i:04d}_0000_{i:04d}_0001.nii.gz",
            "tre_mm": tre + spread * i,
            "tre30_mm": tre30 + spread * i,
            "sdlogj": sdlogj + 0.001 * i,
            "folding_fraction": 0.0,
            "runtime_s": None if runtime is None else runtime + i,
        })
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"challenge": "remind", "pairs": pairs}))
    return folder


@pytest.fixture
def teams(tmp_path):
    root = tmp_path / "results"
    return [
        _team(root, "mid", 3.0, 4.0, 0.10, None),  # no runtimes: counted as 3500 s
        _team(root, "good", 1.0, 1.5, 0.05, 10.0),
        _team(root, "bad", 5.0, 7.0, 0.20, 100.0),
    ]


def test_rank_score_mapping():
    assert rank_score(1, 1) == 1.0
    assert [rank_score(r, 3) for r in (1, 2, 3)] == pytest.approx([1.0, 0.55, 0.1])
    assert [rank_score(r, 4) for r in (1, 2, 4)] == pytest.approx([1.0, 0.7, 0.1])


def test_wilcoxon_wins_separated_and_identical():
    x = np.arange(10.0)
    wins, p = wilcoxon_wins({"a": x, "b": x + 100, "c": x + 100})
    assert wins == {"a": 2, "b": 0, "c": 0}
    assert p[("b", "c")] == 1.0 and p[("a", "b")] < 1e-3
    # overlapping samples: no significant difference, no wins
    wins, _ = wilcoxon_wins({"a": x, "b": x + 0.5})
    assert wins == {"a": 0, "b": 0}


def test_known_ranking_better_team_wins_everything(teams):
    board = remind_board([load_remind_results(p) for p in teams])
    rows = {r["team"]: r for r in board.rows}
    assert [r["team"] for r in board.rows] == ["good", "mid", "bad"]
    assert [r["rank"] for r in board.rows] == [1, 2, 3]
    good = rows["good"]
    for k in ("tre_mm", "tre30_mm", "sdlogj", "runtime_s"):
        assert good[f"{k}_wins"] == 2 and good[f"{k}_score"] == 1.0
    assert good["score"] == pytest.approx(1.0)
    # mid: second on TRE, TRE30, SDlogJ; last on runtime because its missing runtimes count as 3500 s
    mid = rows["mid"]
    assert mid["runtime_s"] == 3500.0 and mid["runtime_missing"] == N_CASES
    assert mid["runtime_s_rank"] == 3 and mid["runtime_s_score"] == pytest.approx(0.1)
    assert mid["score"] == pytest.approx((0.55 ** 3 * 0.1) ** 0.25)
    bad = rows["bad"]
    assert bad["runtime_s_rank"] == 2
    assert bad["score"] == pytest.approx((0.1 ** 3 * 0.55) ** 0.25)


def test_cli_boards_and_missing_runtime_option(teams, tmp_path, capsys):
    out = tmp_path / "board.json"
    assert main(["leaderboard", "remind", *map(str, teams), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [r["team"] for r in doc["rows"]] == ["good", "mid", "bad"]
    assert doc["missing_runtime_s"] == 3500.0 and doc["pvalues"]["tre_mm"]["good"]["bad"] < 0.05
    html = tmp_path / "board.html"
    assert main(["leaderboard", "remind", *map(str, teams), "--out", str(html)]) == 0
    page = html.read_text()
    assert "<style>" in page and "http" not in page and "<script" not in page
    md = tmp_path / "board.md"
    assert main(["leaderboard", "remind", *map(str, teams), "--out", str(md), "--missing-runtime", "1"]) == 0
    # with missing runtimes counted as 1 s, "mid" becomes the fastest
    assert main(["leaderboard", "remind", *map(str, teams), "--out", str(out), "--missing-runtime", "1"]) == 0
    rows = {r["team"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["mid"]["runtime_s_rank"] == 1
    assert "| 1 | good |" in md.read_text()


def test_bad_inputs_exit_2(teams, tmp_path, capsys):
    out = tmp_path / "board.md"
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    notremind = tmp_path / "tusrec.json"
    notremind.write_text(json.dumps({"scans": [{"key": "x"}]}))
    for extra, message in ((tmp_path / "missing", "results file or folder not found"),
                           (broken, "is not valid JSON"),
                           (notremind, "has no non-empty list 'pairs'")):
        assert main(["leaderboard", "remind", str(teams[0]), str(extra), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
        assert not out.exists()
