"""Errors meant for users.

Every problem with a user's input is raised as :class:`InputError` whose
message is one clear sentence naming the file and what is wrong. The CLI turns
it into that sentence on stderr and exit code 2.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["InputError", "input_error"]


class InputError(ValueError):
    """Bad user input (file missing, wrong shape, NaN, ...). CLI exit code 2."""


def input_error(path: str | Path | None, problem: str) -> InputError:
    """Build an :class:`InputError` reading ``"<path>: <problem>"``."""
    if path is None:
        return InputError(problem)
    return InputError(f"{path}: {problem}")
