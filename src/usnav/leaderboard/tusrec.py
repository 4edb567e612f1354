"""TUS-REC leaderboards from harness results (``results.json``).

Input per team: the ``results.json`` of ``usnav tusrec evaluate-submission``
(or the ``--json`` output of ``usnav tusrec score``, which has the same
per-scan keys): a list ``scans`` with ``key`` (or ``subject`` and ``scan``),
``status`` (default ``"ok"``), the errors ``GPE``, ``GLE``, ``LPE``, ``LLE``
(mm), the identity errors ``GPE_identity`` ... and ``time_s`` (seconds).
Every team must cover the same scans.

2025 rule (official, FORMATS.md): per scan and metric ``M* = 1 - M /
M_identity``; per-scan score = mean of the four (0.25 (GPE* + GLE* + LPE* +
LLE*); a scan without landmarks averages the two pixel scores); team score =
mean over scans, rounded to three decimals; rank by the rounded score, ties
broken by the mean runtime per scan (faster first; a team without runtimes
comes last among the tied). A scan the submission failed (timeout, crash,
exception, invalid output) counts as the identity prediction: every M* = 0.

2024 rule (our reading; the 2024 paper describes "min-max normalisation
across participants", the details below are ours): per scan and metric, the
participants whose error is at least the identity error (below the
baseline) and those that failed the scan are excluded and get 0; the others
get ``(max - M) / (max - min)`` with max/min over the included participants
(1 when only one is included or all are equal). Per-scan score = mean of the
four; team score = mean over scans, three decimals, same tie-break.

Side scores (both rules): global = mean(GPE*, GLE*), local = mean(LPE*,
LLE*), pixel = mean(GPE*, LPE*), landmark = mean(GLE*, LLE*), each averaged
over scans.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from usnav.errors import input_error
from usnav.leaderboard.common import check_unique_teams, competition_ranks, load_results_json
from usnav.leaderboard.render import Board, Column

__all__ = ["RULES", "SIDE_SCORES", "TeamResults", "load_tusrec_results", "tusrec_board", "normalised_scores"]

METRICS = ("GPE", "GLE", "LPE", "LLE")
RULES = ("2025", "2024")
SIDE_SCORES = {
    "global": ("GPE", "GLE"),
    "local": ("LPE", "LLE"),
    "pixel": ("GPE", "LPE"),
    "landmark": ("GLE", "LLE"),
}


@dataclass
class TeamResults:
    """One team's per-scan results: ``scans[key]`` = dict with status, errors, identity errors, time_s."""

    team: str
    file: Path
    scans: dict[str, dict[str, Any]]


def _number(value: Any, file: Path, key: str, field: str, required: bool) -> float | None:
    if value is None:
        if required:
            raise input_error(file, f"scan {key} has no value for '{field}'")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise input_error(file, f"scan {key}: '{field}' must be a finite number, got {value!r}")
    return float(value)


def load_tusrec_results(path: str | Path) -> TeamResults:
    """Read one team's results (folder with results.json, or the JSON file)."""
    doc, file, team = load_results_json(path)
    scans = doc.get("scans")
    if not isinstance(scans, list) or not scans:
        raise input_error(file, "has no non-empty list 'scans' (is it a TUS-REC results file?)")
    out: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(scans):
        if not isinstance(row, dict):
            raise input_error(file, f"entry {i} of 'scans' is not an object")
        key = row.get("key")
        if key is None and "subject" in row and "scan" in row:
            key = f"sub{row['subject']}__{row['scan']}"
        if not isinstance(key, str):
            raise input_error(file, f"entry {i} of 'scans' has no 'key' (or 'subject' and 'scan')")
        if key in out:
            raise input_error(file, f"scan {key} appears twice")
        status = row.get("status", "ok")
        if not isinstance(status, str):
            raise input_error(file, f"scan {key}: 'status' must be a string")
        ok = status == "ok"
        entry: dict[str, Any] = {"status": status}
        for m in METRICS:
            pixel = m in ("GPE", "LPE")
            entry[m] = _number(row.get(m), file, key, m, required=ok and pixel) if ok else None
            entry[f"{m}_identity"] = _number(row.get(f"{m}_identity"), file, key, f"{m}_identity", required=ok and pixel)
        if ok and (entry["GLE"] is None) != (entry["LLE"] is None):
            raise input_error(file, f"scan {key} has only one of 'GLE' and 'LLE'")
        if ok:
            for m in METRICS:
                if entry[m] is not None and entry[f"{m}_identity"] is None:
                    raise input_error(file, f"scan {key} has '{m}' but no '{m}_identity'")
        entry["time_s"] = _number(row.get("time_s"), file, key, "time_s", required=False)
        out[key] = entry
    return TeamResults(team=team, file=file, scans=out)


def _check_same_scans(teams: list[TeamResults]) -> list[str]:
    ref = teams[0]
    keys = list(ref.scans)
    for t in teams[1:]:
        missing = [k for k in keys if k not in t.scans]
        extra = [k for k in t.scans if k not in ref.scans]
        if missing or extra:
            what = f"lacks scan {missing[0]}" if missing else f"has scan {extra[0]} that {ref.file} lacks"
            raise input_error(t.file, f"covers different scans than {ref.file}: it {what}")
    return keys


def normalised_scores(teams: list[TeamResults], rule: str = "2025") -> dict[str, dict[str, dict[str, float | None]]]:
    """Per team, per scan, per metric normalised score (None: metric undefined for the scan)."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    keys = _check_same_scans(teams)
    out: dict[str, dict[str, dict[str, float | None]]] = {t.team: {} for t in teams}
    for key in keys:
        for m in METRICS:
            # Is the metric defined for this scan? (landmarks present)
            ident = next((t.scans[key][f"{m}_identity"] for t in teams if t.scans[key][f"{m}_identity"] is not None), None)
            if ident is None:
                for t in teams:
                    out[t.team].setdefault(key, {})[m] = None
                continue
            values = {t.team: (t.scans[key][m] if t.scans[key]["status"] == "ok" else None) for t in teams}
            if rule == "2025":
                for t in teams:
                    v = values[t.team]
                    own_ident = t.scans[key][f"{m}_identity"]
                    own_ident = ident if own_ident is None else own_ident
                    if v is None:
                        s = 0.0
                    elif own_ident == 0.0:
                        s = 1.0 if v == 0.0 else 0.0
                    else:
                        s = 1.0 - v / own_ident
                    out[t.team].setdefault(key, {})[m] = s
            else:
                eligible = {name: v for name, v in values.items() if v is not None and v < ident}
                if eligible:
                    hi, lo = max(eligible.values()), min(eligible.values())
                for t in teams:
                    v = eligible.get(t.team)
                    s = 0.0 if v is None else (1.0 if hi == lo else (hi - v) / (hi - lo))
                    out[t.team].setdefault(key, {})[m] = s
    return out


def _mean_defined(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def tusrec_board(teams: list[TeamResults], rule: str = "2025", decimals: int = 3) -> Board:
    """Rank teams under ``rule`` and build the board (see module doc)."""
    if not teams:
        raise ValueError("no teams to rank")
    check_unique_teams([(t.team, t.file) for t in teams])
    scores = normalised_scores(teams, rule)
    keys = list(teams[0].scans)
    rows = []
    for t in teams:
        per_scan = {k: _mean_defined([scores[t.team][k][m] for m in METRICS]) for k in keys}
        final = float(np.mean([per_scan[k] for k in keys]))
        side = {name: _mean_defined([_mean_defined([scores[t.team][k][m] for m in ms]) for k in keys])
                for name, ms in SIDE_SCORES.items()}
        times = [t.scans[k]["time_s"] for k in keys]
        runtime = float(np.mean(times)) if all(v is not None for v in times) else None
        ok = [k for k in keys if t.scans[k]["status"] == "ok"]
        row: dict[str, Any] = {
            "team": t.team,
            "score": round(final, decimals) + 0.0,  # + 0.0: no negative zero
            "score_unrounded": final,
            **side,
            **{m: _mean_defined([t.scans[k][m] for k in ok]) for m in METRICS},
            "runtime_s": runtime,
            "scans_ok": f"{len(ok)}/{len(keys)}",
            "source": str(t.file),
            "per_scan": {k: {"score": per_scan[k], **{f"{m}*": scores[t.team][k][m] for m in METRICS},
                             "status": t.scans[k]["status"]} for k in keys},
        }
        rows.append(row)
    rows.sort(key=lambda r: (-r["score"], math.inf if r["runtime_s"] is None else r["runtime_s"], r["team"]))
    ranks = competition_ranks([(r["score"], r["runtime_s"]) for r in rows])
    for r, rank in zip(rows, ranks):
        r["rank"] = rank
    columns = [
        Column("rank", "rank", 0), Column("team", "team"), Column("score", "score", decimals),
        Column("global", "global", decimals), Column("local", "local", decimals),
        Column("pixel", "pixel", decimals), Column("landmark", "landmark", decimals),
        Column("GPE", "GPE mm", 2), Column("GLE", "GLE mm", 2), Column("LPE", "LPE mm", 3), Column("LLE", "LLE mm", 3),
        Column("runtime_s", "runtime s/scan", 2), Column("scans_ok", "scans ok"),
    ]
    if rule == "2025":
        rule_note = ("2025 rule: per scan and metric M* = 1 - M / M_identity, score = mean of GPE*, GLE*, LPE*, LLE* "
                     "over scans, rounded to 3 decimals; failed scans count as identity (M* = 0).")
    else:
        rule_note = ("2024 rule (our reading): per scan and metric, min-max normalisation (max - M) / (max - min) across "
                     "the participants better than the identity baseline; others and failed scans get 0.")
    notes = [
        rule_note,
        "Ties at 3 decimals are broken by the mean runtime per scan (faster first).",
        "Side scores: global = (GPE*+GLE*)/2, local = (LPE*+LLE*)/2, pixel = (GPE*+LPE*)/2, landmark = (GLE*+LLE*)/2.",
        "Errors in mm are means over the scans each team completed.",
    ]
    data = {"challenge": "tusrec", "rule": rule, "scans": keys}
    return Board(title=f"TUS-REC leaderboard ({rule} rule, {len(keys)} scans)", columns=columns, rows=rows, notes=notes,
                 data=data)
