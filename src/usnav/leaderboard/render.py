"""Render a leaderboard as a rich table, Markdown, self-contained HTML or JSON.

A :class:`Board` is plain data (title, columns, rows, notes), so every
renderer shows the same numbers; files are written atomically and the format
is chosen by the output's suffix (``.md``, ``.html``/``.htm``, ``.json``).
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from usnav.errors import input_error
from usnav.io.atomic import atomic_path

__all__ = ["Board", "Column", "render", "render_html", "render_json", "render_markdown", "print_board", "write_board"]

FORMATS = {".md": "md", ".markdown": "md", ".html": "html", ".htm": "html", ".json": "json"}


@dataclass(frozen=True)
class Column:
    """One column: ``key`` in each row dict, a header, and the number of decimals
    (None: shown as text)."""

    key: str
    header: str
    decimals: int | None = None

    def format(self, value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if self.decimals is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            if abs(value) < 0.5 * 10.0 ** -self.decimals:
                value = 0.0  # no "-0.000"
            return f"{value:.{self.decimals}f}"
        return str(value)


@dataclass
class Board:
    """A ranked table. ``rows`` are dicts, already in rank order; ``data`` is the
    machine-readable detail (per team, per case) kept in the JSON output."""

    title: str
    columns: list[Column]
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> list[list[str]]:
        return [[c.format(row.get(c.key)) for c in self.columns] for row in self.rows]


def _is_numeric(column: Column) -> bool:
    return column.decimals is not None


def render_markdown(board: Board) -> str:
    """GitHub-flavoured Markdown table with the notes as a list below it."""

    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [f"# {board.title}", ""]
    lines.append("| " + " | ".join(esc(c.header) for c in board.columns) + " |")
    lines.append("|" + "|".join("---:" if _is_numeric(c) else ":---" for c in board.columns) + "|")
    for cells in board.cells():
        lines.append("| " + " | ".join(esc(x) for x in cells) + " |")
    if board.notes:
        lines += ["", *[f"- {n}" for n in board.notes]]
    return "\n".join(lines) + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.35em 0.7em; }
th { background: #f0f3f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafbfc; }
tr.first td { font-weight: bold; background: #eef8ee; }
ul.notes { color: #555; font-size: 0.9em; max-width: 60em; }
""".strip()


def render_html(board: Board) -> str:
    """A self-contained HTML page (inline CSS, no scripts, no external resources)."""
    e = html.escape
    head = "".join(f"<th>{e(c.header)}</th>" for c in board.columns)
    body = []
    for row, cells in zip(board.rows, board.cells()):
        cls = ' class="first"' if row.get("rank") == 1 else ""
        tds = "".join(
            f'<td class="num">{e(x)}</td>' if _is_numeric(c) else f"<td>{e(x)}</td>" for c, x in zip(board.columns, cells)
        )
        body.append(f"<tr{cls}>{tds}</tr>")
    notes = "".join(f"<li>{e(n)}</li>" for n in board.notes)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{e(board.title)}</title>\n<style>\n{_CSS}\n</style>\n</head>\n<body>\n"
        f"<h1>{e(board.title)}</h1>\n<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n"
        + "\n".join(body)
        + "\n</tbody>\n</table>\n"
        + (f'<ul class="notes">{notes}</ul>\n' if notes else "")
        + "</body>\n</html>\n"
    )


def _strict(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def render_json(board: Board) -> str:
    """Machine-readable: title, columns, ranked rows (raw numbers), notes and details."""
    doc = {
        "title": board.title,
        "columns": [{"key": c.key, "header": c.header} for c in board.columns],
        "rows": board.rows,
        "notes": board.notes,
        **board.data,
    }
    return json.dumps(_strict(doc), indent=2, allow_nan=False) + "\n"


def format_of(path: str | Path) -> str:
    """``md``, ``html`` or ``json`` from the file suffix; InputError otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise input_error(path, "the leaderboard output must end in .md, .html or .json")
    return FORMATS[suffix]


def render(board: Board, fmt: str) -> str:
    return {"md": render_markdown, "html": render_html, "json": render_json}[fmt](board)


def write_board(board: Board, path: str | Path) -> Path:
    """Write the board in the format given by the suffix (atomic)."""
    path = Path(path)
    text = render(board, format_of(path))
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def print_board(board: Board, console=None) -> None:
    """Print the board as a rich table (notes below it)."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=max(console.width, 200))
    table = Table(title=board.title)
    for c in board.columns:
        table.add_column(c.header, justify="right" if _is_numeric(c) else "left")
    for row, cells in zip(board.rows, board.cells()):
        table.add_row(*cells, style="bold" if row.get("rank") == 1 else None)
    console.print(table)
    for n in board.notes:
        console.print(f"  {n}", style="dim", highlight=False)
