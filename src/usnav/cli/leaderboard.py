"""`usnav leaderboard tusrec|remind`: rank teams from their results files."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

app = typer.Typer(help="Challenge leaderboards from evaluation results (Markdown, HTML or JSON).", no_args_is_help=True)


@app.command("tusrec")
def tusrec(
    results: List[Path] = typer.Argument(..., help="Results folders (with results.json) or JSON files, one per team."),
    out: Path = typer.Option(..., "--out", help="Board to write: .md, .html (self-contained) or .json."),
    rule: str = typer.Option("2025", "--rule", help="Normalisation rule: 2025 (official, 1 - M/M_identity) or 2024."),
) -> None:
    """Rank TUS-REC teams: per-scan normalised scores, three decimals, ties broken by runtime."""
    from usnav.errors import InputError
    from usnav.leaderboard.render import format_of, print_board, write_board
    from usnav.leaderboard.tusrec import RULES, load_tusrec_results, tusrec_board

    if rule not in RULES:
        raise InputError(f"--rule must be one of {', '.join(RULES)}, got {rule!r}")
    format_of(out)
    board = tusrec_board([load_tusrec_results(p) for p in results], rule=rule)
    print_board(board)
    write_board(board, out)
    typer.echo(f"wrote {out}")


@app.command("remind")
def remind(
    results: List[Path] = typer.Argument(..., help="Results folders (with results.json) or JSON files, one per team."),
    out: Path = typer.Option(..., "--out", help="Board to write: .md, .html (self-contained) or .json."),
    missing_runtime: float = typer.Option(3500.0, "--missing-runtime", help="Seconds counted for a pair without runtime."),
) -> None:
    """Rank ReMIND2Reg teams Learn2Reg-style: Wilcoxon rank-sum comparisons per metric, geometric mean of rank scores."""
    from usnav.leaderboard.remind import load_remind_results, remind_board
    from usnav.leaderboard.render import format_of, print_board, write_board

    format_of(out)
    board = remind_board([load_remind_results(p) for p in results], missing_runtime_s=missing_runtime)
    print_board(board)
    write_board(board, out)
    typer.echo(f"wrote {out}")
