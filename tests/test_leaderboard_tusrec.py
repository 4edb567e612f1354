"""TUS-REC leaderboards: known-answer rankings under the 2025 and 2024 rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from usnav.cli import main
from usnav.leaderboard.tusrec import load_tusrec_results, tusrec_board

IDENT = {"GPE": 10.0, "GLE": 8.0, "LPE": 1.0, "LLE": 0.5}
KEYS = ("sub050__LH_rotation", "sub050__RH_rotation")


def _scan(key: str, fractions, time_s=1.0, status="ok", shift=0.0) -> dict:
    """A scan entry whose error for metric m is fractions[m] * identity error (+ shift on GPE)."""
    row = {"key": key, "status": status, "time_s": time_s}
    for m, ident in IDENT.items():
        row[f"{m}_identity"] = ident
        row[m] = fractions[m] * ident if status == "ok" else None
    if status == "ok":
        row["GPE"] += shift
    return row


def _team(root: Path, name: str, rows: list[dict], team_field: str | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    doc = {"challenge": "tusrec", "scans": rows}
    if team_field:
        doc["team"] = team_field
    (folder / "results.json").write_text(json.dumps(doc))
    return folder


def _uniform(f: float) -> dict:
    return {m: f for m in IDENT}


@pytest.fixture
def teams(tmp_path):
    root = tmp_path / "results"
    return {
        # 0.5 of identity everywhere: score 0.5
        "A": _team(root, "A", [_scan(k, _uniform(0.5), time_s=2.0) for k in KEYS]),
        # 0.2 of identity: score 0.8, slow
        "B": _team(root, "B", [_scan(k, _uniform(0.2), time_s=5.0) for k in KEYS]),
        # GPE 0.002 mm worse than B: 0.79995 unrounded, equal to B at three decimals, but faster
        "C": _team(root, "C", [_scan(k, _uniform(0.2), time_s=1.0, shift=0.002) for k in KEYS]),
        # worse than identity on GPE (1.2), 0.9 elsewhere
        "D": _team(root, "D", [_scan(k, {"GPE": 1.2, "GLE": 0.9, "LPE": 0.9, "LLE": 0.9}) for k in KEYS]),
        # perfect on the first scan, timed out on the second (counts as identity): 0.5
        "E": _team(root, "E_folder", [_scan(KEYS[0], _uniform(0.0)), _scan(KEYS[1], _uniform(0.0), time_s=60.0,
                                                                          status="timeout")], team_field="Team E"),
    }


def test_2025_rule_known_ranking_with_runtime_tiebreak(teams):
    board = tusrec_board([load_tusrec_results(p) for p in teams.values()], rule="2025")
    order = [(r["rank"], r["team"], r["score"]) for r in board.rows]
    # C and B tie at 0.800 and C is faster; A and E tie at 0.500 and A (2 s) is faster than E (30.5 s mean);
    # D: (-0.2 + 3 * 0.1) / 4
    assert order == [(1, "C", 0.8), (2, "B", 0.8), (3, "A", 0.5), (4, "Team E", 0.5), (5, "D", 0.025)]
    c = board.rows[0]
    assert c["score_unrounded"] == pytest.approx(0.79995)
    assert c["global"] == pytest.approx((0.7998 + 0.8) / 2)
    assert c["local"] == pytest.approx(0.8) and c["landmark"] == pytest.approx(0.8)
    assert c["pixel"] == pytest.approx((0.7998 + 0.8) / 2)
    e = next(r for r in board.rows if r["team"] == "Team E")
    assert e["per_scan"][KEYS[1]]["score"] == 0.0 and e["per_scan"][KEYS[0]]["score"] == pytest.approx(1.0)
    assert e["scans_ok"] == "1/2" and e["GPE"] == 0.0  # errors averaged over completed scans
    d = board.rows[-1]
    assert d["per_scan"][KEYS[0]]["GPE*"] == pytest.approx(-0.2)


def test_2024_rule_min_max_excludes_teams_below_baseline(teams):
    board = tusrec_board([load_tusrec_results(teams[k]) for k in ("A", "B", "D")], rule="2024")
    scores = {r["team"]: r for r in board.rows}
    # GPE: D (12 mm > identity 10 mm) is excluded and gets 0; min-max over A (5) and B (2): A 0, B 1.
    assert scores["D"]["per_scan"][KEYS[0]]["GPE*"] == 0.0
    assert scores["A"]["per_scan"][KEYS[0]]["GPE*"] == pytest.approx(0.0)
    assert scores["B"]["per_scan"][KEYS[0]]["GPE*"] == pytest.approx(1.0)
    # GLE: all three better than identity: max 7.2 (D), min 1.6 (B): A = (7.2 - 4) / 5.6.
    assert scores["A"]["per_scan"][KEYS[0]]["GLE*"] == pytest.approx(3.2 / 5.6)
    assert scores["D"]["per_scan"][KEYS[0]]["GLE*"] == pytest.approx(0.0)
    assert scores["A"]["score"] == round(3 * (3.2 / 5.6) / 4, 3) == 0.429
    assert [(r["rank"], r["team"]) for r in board.rows] == [(1, "B"), (2, "A"), (3, "D")]
    assert scores["B"]["score"] == 1.0 and scores["D"]["score"] == 0.0


def test_cli_writes_md_html_json(teams, tmp_path, capsys):
    paths = [str(p) for p in teams.values()]
    for suffix in ("md", "html", "json"):
        out = tmp_path / f"board.{suffix}"
        assert main(["leaderboard", "tusrec", *paths, "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "Team E" in stdout and "TUS-REC leaderboard" in stdout
    md = (tmp_path / "board.md").read_text()
    assert "| 1 | C | 0.800 |" in md and "| 2 | B | 0.800 |" in md
    page = (tmp_path / "board.html").read_text()
    assert "<style>" in page and "<script" not in page and "<link" not in page and "http" not in page
    assert "Team E" in page
    doc = json.loads((tmp_path / "board.json").read_text())
    assert [r["team"] for r in doc["rows"]] == ["C", "B", "A", "Team E", "D"]
    assert doc["rule"] == "2025" and doc["rows"][0]["runtime_s"] == 1.0
    out = tmp_path / "board2024.json"
    assert main(["leaderboard", "tusrec", *paths, "--out", str(out), "--rule", "2024"]) == 0
    assert json.loads(out.read_text())["rule"] == "2024"


def test_harness_results_rank_perfect_first(tmp_path):
    """Results written by the harness (results.json of evaluate-submission) feed the board directly."""
    from usnav.harness.tusrec import ScanResult, summarise_results

    def results(name: str, frac: float, status: str = "ok") -> Path:
        rows = []
        for key in KEYS:
            r = ScanResult(key=key, subject="050", scan=key.split("__")[1], status=status, time_s=1.0)
            for m, ident in IDENT.items():
                setattr(r, f"{m}_identity", ident)
                if status == "ok":
                    setattr(r, m, frac * ident)
            rows.append(r)
        folder = tmp_path / name
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(summarise_results(rows)))
        return folder

    teams = [results("identity", 1.0), results("perfect", 0.0), results("half", 0.5), results("crashed", 0.0, "crash")]
    board = tusrec_board([load_tusrec_results(p) for p in teams])
    assert [(r["team"], r["score"]) for r in board.rows][:2] == [("perfect", 1.0), ("half", 0.5)]
    assert {r["team"]: r["score"] for r in board.rows}["identity"] == 0.0
    assert {r["team"]: r["score"] for r in board.rows}["crashed"] == 0.0


def test_bad_inputs_one_sentence_exit_2(teams, tmp_path, capsys):
    out = tmp_path / "board.md"
    good = str(teams["A"])
    cases = []
    cases.append(([good, str(tmp_path / "nope")], "results file or folder not found"))
    bad_json = tmp_path / "badjson"
    bad_json.mkdir()
    (bad_json / "results.json").write_text('{"scans": [')
    cases.append(([good, str(bad_json)], "is not valid JSON"))
    no_json = tmp_path / "empty"
    no_json.mkdir()
    cases.append(([good, str(no_json)], "results folder has no results.json"))
    other = _team(tmp_path, "other", [_scan(KEYS[0], _uniform(0.5))])
    cases.append(([good, str(other)], "covers different scans"))
    nonnum = _team(tmp_path, "nonnum", [{**_scan(k, _uniform(0.5)), "GPE": "x"} for k in KEYS])
    cases.append(([good, str(nonnum)], "'GPE' must be a finite number"))
    dup = _team(tmp_path, "dup", [_scan(k, _uniform(0.5)) for k in KEYS], team_field="A")
    cases.append(([good, str(dup)], "team name 'A' is also used"))
    for args, message in cases:
        assert main(["leaderboard", "tusrec", *args, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.startswith("error: ") and err.count("\n") == 1, err
        assert not out.exists()
    assert main(["leaderboard", "tusrec", good, "--out", str(tmp_path / "board.txt")]) == 2
    assert "must end in .md, .html or .json" in capsys.readouterr().err
    assert main(["leaderboard", "tusrec", good, "--out", str(out), "--rule", "2023"]) == 2
    assert "--rule must be one of 2025, 2024" in capsys.readouterr().err


def test_missing_runtime_loses_a_tie(tmp_path):
    timed = _team(tmp_path, "timed", [_scan(k, _uniform(0.3), time_s=900.0) for k in KEYS])
    untimed = _team(tmp_path, "untimed", [{**_scan(k, _uniform(0.3)), "time_s": None} for k in KEYS])
    board = tusrec_board([load_tusrec_results(untimed), load_tusrec_results(timed)])
    assert [(r["rank"], r["team"], r["runtime_s"]) for r in board.rows] == [(1, "timed", 900.0), (2, "untimed", None)]


def test_column_format_has_no_negative_zero():
    from usnav.leaderboard.render import Column

    assert Column("x", "x", 3).format(-0.0000001) == "0.000"
    assert Column("x", "x", 3).format(-0.0012) == "-0.001"
    assert Column("x", "x", 2).format(None) == "-"
