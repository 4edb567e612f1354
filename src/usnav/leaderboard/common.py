"""Reading results files for the leaderboards: one sentence per bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from usnav.errors import input_error
from usnav.io.json_file import read_json

__all__ = ["load_results_json", "competition_ranks", "check_unique_teams"]


def load_results_json(path: str | Path, default_name: str = "results.json") -> tuple[dict[str, Any], Path, str]:
    """Read a results JSON given as a file or a results folder holding ``default_name``.

    Returns (document, file path, team name): the ``team`` field of the JSON if
    present, else the results folder's name (a file's folder when the file is
    named ``default_name``, else the file's stem).
    """
    path = Path(path)
    if path.is_dir():
        file = path / default_name
        if not file.is_file():
            raise input_error(path, f"results folder has no {default_name}")
        fallback = path.resolve().name
    elif path.is_file():
        file = path
        fallback = path.resolve().parent.name if path.name == default_name else path.name.split(".")[0]
    else:
        raise input_error(path, "results file or folder not found")
    doc = read_json(file)
    if not isinstance(doc, dict):
        raise input_error(file, "must hold a JSON object")
    team = doc.get("team")
    if team is not None and (not isinstance(team, str) or not team.strip()):
        raise input_error(file, "field 'team' must be a non-empty string")
    return doc, file, (team.strip() if team else fallback)


def check_unique_teams(teams: list[tuple[str, Path]]) -> None:
    """InputError if two results files carry the same team name."""
    seen: dict[str, Path] = {}
    for team, file in teams:
        if team in seen:
            raise input_error(file, f"team name {team!r} is also used by {seen[team]}; give each team its own folder or 'team' field")
        seen[team] = file


def competition_ranks(keys: list[tuple]) -> list[int]:
    """Standard competition ranks ("1224") of already sorted keys: equal keys share a rank."""
    ranks: list[int] = []
    for i, key in enumerate(keys):
        ranks.append(ranks[-1] if i and key == keys[i - 1] else i + 1)
    return ranks
