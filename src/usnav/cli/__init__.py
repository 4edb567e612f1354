"""The ``usnav`` command line: one typer app, one sub-app per verb group.

Each verb group lives in its own module (``usnav.cli.<group>``) and keeps
heavy imports (torch, h5py, ...) inside its commands, so ``usnav --help``
stays fast.
"""

from __future__ import annotations

import importlib
import sys

import typer

from usnav import __version__
from usnav.errors import InputError

app = typer.Typer(
    name="usnav",
    help="Intraoperative ultrasound: trackerless 3D reconstruction, compounding, brain-shift registration.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# (module, name) of the verb groups; a module exposes `app` (a typer.Typer)
# to be mounted as `usnav <name> ...`, or `register(app)` to add top-level
# commands itself.
_GROUPS: list[tuple[str, str]] = [
    ("usnav.cli.tusrec", "tusrec"),
    ("usnav.cli.simulate", "simulate"),
    ("usnav.cli.compound", "compound"),
    ("usnav.cli.leaderboard", "leaderboard"),
    ("usnav.cli.batch", "batch"),
    ("usnav.cli.pipeline", "pipeline"),
    ("usnav.cli.freehand", "freehand"),
    ("usnav.cli.remind", "remind"),
    ("usnav.cli.register", "register"),
]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"usnav {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """usnav command line."""


def _mount_groups() -> None:
    for module_name, name in _GROUPS:
        module = importlib.import_module(module_name)
        if hasattr(module, "register"):
            module.register(app)
        else:
            app.add_typer(module.app, name=name)


_mount_groups()


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input becomes one sentence on stderr and exit code 2;
    a command's own ``typer.Exit(code)`` becomes the process exit code."""
    from typer._click.exceptions import ClickException  # typer vendors click

    try:
        code = app(args=argv, standalone_mode=False)
    except InputError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except ClickException as exc:  # usage errors: unknown option, bad value, missing argument
        exc.show()
        return exc.exit_code
    # With standalone_mode=False, click returns the code of typer.Exit(code) raised in a command.
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
