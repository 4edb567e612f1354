"""ReMIND2Reg leaderboard, Learn2Reg style.

Input per team: the ``results.json`` of ``usnav remind evaluate``: a list
``pairs`` with ``pair`` (the displacement file name or pair id), ``tre_mm``,
``tre30_mm``, ``sdlogj``, ``folding_fraction`` and ``runtime_s`` (seconds, or
null when the team gave none). Every team must cover the same pairs.

Ranking (lower is better for every metric):

1. For each metric in TRE, TRE30, SDlogJ and runtime, every pair of teams
   (a, b) is compared with a two-sided Wilcoxon rank-sum test over the cases
   (``scipy.stats.ranksums``); a wins when p < 0.05 and its values are the
   smaller ones (negative statistic). A missing runtime counts as 3500 s.
2. Per metric, teams are ranked by comparisons won, with standard competition
   ranks (equal wins share a rank; "1224").
3. Rank r of n teams maps linearly to a score in [0.1, 1]:
   ``score = 0.1 + 0.9 * (n - r) / (n - 1)`` (rank 1 -> 1.0, rank n -> 0.1;
   a single team scores 1.0).
4. The final score is the geometric mean of the four metric scores; teams are
   ranked by it (higher first), equal final scores share a rank and are
   listed by mean TRE.
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

__all__ = ["RANKED_METRICS", "MISSING_RUNTIME_S", "TeamPairs", "load_remind_results", "rank_score", "remind_board",
           "wilcoxon_wins"]

#: metric key -> header; all lower-is-better
RANKED_METRICS = {"tre_mm": "TRE", "tre30_mm": "TRE30", "sdlogj": "SDlogJ", "runtime_s": "runtime"}
MISSING_RUNTIME_S = 3500.0
ALPHA = 0.05


@dataclass
class TeamPairs:
    """One team's per-pair results: ``pairs[name]`` = dict of metric values (runtime may be None)."""

    team: str
    file: Path
    pairs: dict[str, dict[str, float | None]]


def _value(row: dict, key: str, file: Path, pair: str, required: bool) -> float | None:
    v = row.get(key)
    if v is None:
        if required:
            raise input_error(file, f"pair {pair} has no value for '{key}'")
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise input_error(file, f"pair {pair}: '{key}' must be a finite number, got {v!r}")
    if key == "runtime_s" and v < 0:
        raise input_error(file, f"pair {pair}: 'runtime_s' must not be negative, got {v!r}")
    return float(v)


def load_remind_results(path: str | Path) -> TeamPairs:
    """Read one team's results (folder with results.json, or the JSON file)."""
    doc, file, team = load_results_json(path)
    rows = doc.get("pairs")
    if not isinstance(rows, list) or not rows:
        raise input_error(file, "has no non-empty list 'pairs' (is it a ReMIND2Reg results file?)")
    pairs: dict[str, dict[str, float | None]] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("pair"), str):
            raise input_error(file, f"entry {i} of 'pairs' is not an object with a 'pair' name")
        name = row["pair"]
        if name in pairs:
            raise input_error(file, f"pair {name} appears twice")
        pairs[name] = {
            "tre_mm": _value(row, "tre_mm", file, name, True),
            "tre30_mm": _value(row, "tre30_mm", file, name, True),
            "sdlogj": _value(row, "sdlogj", file, name, True),
            "folding_fraction": _value(row, "folding_fraction", file, name, False),
            "tre_initial_mm": _value(row, "tre_initial_mm", file, name, False),
            "runtime_s": _value(row, "runtime_s", file, name, False),
        }
    return TeamPairs(team=team, file=file, pairs=pairs)


def rank_score(rank: int, n_teams: int) -> float:
    """Linear map of rank 1..n to [1.0, 0.1] (see module doc)."""
    if n_teams <= 1:
        return 1.0
    return 0.1 + 0.9 * (n_teams - rank) / (n_teams - 1)


def wilcoxon_wins(values: dict[str, np.ndarray], alpha: float = ALPHA) -> tuple[dict[str, int], dict[tuple[str, str], float]]:
    """Comparisons won per team (lower is better) and the p value of every ordered pair."""
    from scipy.stats import ranksums

    wins = {t: 0 for t in values}
    pvalues: dict[tuple[str, str], float] = {}
    names = list(values)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            x, y = values[a], values[b]
            if np.array_equal(np.sort(x), np.sort(y)):
                stat, p = 0.0, 1.0
            else:
                stat, p = ranksums(x, y)
                stat, p = float(stat), float(p)
            pvalues[(a, b)] = pvalues[(b, a)] = p
            if p < alpha:
                wins[a if stat < 0 else b] += 1
    return wins, pvalues


def _check_same_pairs(teams: list[TeamPairs]) -> list[str]:
    ref = teams[0]
    names = list(ref.pairs)
    for t in teams[1:]:
        missing = [k for k in names if k not in t.pairs]
        extra = [k for k in t.pairs if k not in ref.pairs]
        if missing or extra:
            what = f"lacks pair {missing[0]}" if missing else f"has pair {extra[0]} that {ref.file} lacks"
            raise input_error(t.file, f"covers different pairs than {ref.file}: it {what}")
    return names


def remind_board(teams: list[TeamPairs], alpha: float = ALPHA, missing_runtime_s: float = MISSING_RUNTIME_S) -> Board:
    """Rank teams (see module doc) and build the board."""
    if not teams:
        raise ValueError("no teams to rank")
    check_unique_teams([(t.team, t.file) for t in teams])
    pairs = _check_same_pairs(teams)
    n = len(teams)
    metric_scores: dict[str, dict[str, float]] = {t.team: {} for t in teams}
    metric_ranks: dict[str, dict[str, int]] = {t.team: {} for t in teams}
    metric_wins: dict[str, dict[str, int]] = {t.team: {} for t in teams}
    pvalues_out: dict[str, dict[str, dict[str, float]]] = {}
    for key in RANKED_METRICS:
        values = {}
        for t in teams:
            v = [t.pairs[p][key] for p in pairs]
            if key == "runtime_s":
                v = [missing_runtime_s if x is None else x for x in v]
            values[t.team] = np.asarray(v, dtype=np.float64)
        wins, pv = wilcoxon_wins(values, alpha)
        for t in teams:
            rank = 1 + sum(w > wins[t.team] for w in wins.values())
            metric_wins[t.team][key] = wins[t.team]
            metric_ranks[t.team][key] = rank
            metric_scores[t.team][key] = rank_score(rank, n)
        pvalues_out[key] = {a: {b: pv[(a, b)] for b in values if b != a} for a in values}
    rows = []
    for t in teams:
        scores = [metric_scores[t.team][k] for k in RANKED_METRICS]
        final = float(np.exp(np.mean(np.log(scores))))
        runtimes = [t.pairs[p]["runtime_s"] for p in pairs]
        row: dict[str, Any] = {
            "team": t.team,
            "score": final,
            **{f"{k}_score": metric_scores[t.team][k] for k in RANKED_METRICS},
            **{f"{k}_rank": metric_ranks[t.team][k] for k in RANKED_METRICS},
            **{f"{k}_wins": metric_wins[t.team][k] for k in RANKED_METRICS},
            "tre_mm": float(np.mean([t.pairs[p]["tre_mm"] for p in pairs])),
            "tre30_mm": float(np.mean([t.pairs[p]["tre30_mm"] for p in pairs])),
            "sdlogj": float(np.mean([t.pairs[p]["sdlogj"] for p in pairs])),
            "folding_fraction": _mean_or_none([t.pairs[p]["folding_fraction"] for p in pairs]),
            "runtime_s": float(np.mean([missing_runtime_s if r is None else r for r in runtimes])),
            "runtime_missing": sum(r is None for r in runtimes),
            "source": str(t.file),
            "per_pair": {p: t.pairs[p] for p in pairs},
        }
        rows.append(row)
    rows.sort(key=lambda r: (-round(r["score"], 12), r["tre_mm"], r["team"]))
    ranks = competition_ranks([(round(r["score"], 12),) for r in rows])
    for r, rank in zip(rows, ranks):
        r["rank"] = rank
    columns = [
        Column("rank", "rank", 0), Column("team", "team"), Column("score", "score", 3),
        Column("tre_mm_score", "TRE score", 3), Column("tre30_mm_score", "TRE30 score", 3),
        Column("sdlogj_score", "SDlogJ score", 3), Column("runtime_s_score", "runtime score", 3),
        Column("tre_mm", "TRE mm", 2), Column("tre30_mm", "TRE30 mm", 2), Column("sdlogj", "SDlogJ", 3),
        Column("folding_fraction", "folding", 4), Column("runtime_s", "runtime s", 1),
        Column("runtime_missing", "runtimes missing", 0),
    ]
    notes = [
        f"Per metric (TRE, TRE30, SDlogJ, runtime; lower is better) every pair of teams is compared with a two-sided "
        f"Wilcoxon rank-sum test over the {len(pairs)} cases; p < {alpha:g} with smaller values wins.",
        "Teams are ranked per metric by comparisons won (ties share a rank); rank r of n maps to "
        "0.1 + 0.9 (n - r) / (n - 1); the score is the geometric mean of the four metric scores.",
        f"A missing runtime counts as {missing_runtime_s:g} s. Means shown are over cases.",
    ]
    data = {"challenge": "remind", "pairs": pairs, "alpha": alpha, "missing_runtime_s": missing_runtime_s,
            "pvalues": pvalues_out}
    return Board(title=f"ReMIND2Reg leaderboard ({len(pairs)} cases)", columns=columns, rows=rows, notes=notes, data=data)


def _mean_or_none(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None
