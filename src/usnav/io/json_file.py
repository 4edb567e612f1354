"""Reading a user's JSON file, with one clear error sentence when it is not JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from usnav.errors import input_error

__all__ = ["read_json"]


def read_json(path: str | Path) -> Any:
    """The parsed content of a UTF-8 JSON file; InputError (naming the file, and
    the line and column of a syntax error) when it is not UTF-8 or not JSON.
    The caller checks that the file exists and what the content must hold."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise input_error(path, "is not a UTF-8 text file") from None
    except json.JSONDecodeError as exc:
        raise input_error(path, f"is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
