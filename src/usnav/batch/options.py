"""The batch options every per-case command shares: ``--workers``, ``--ray``, ``--retries``.

A command adds them with three parameters and hands them to
:func:`batch_options`; after :func:`usnav.batch.run_batch` it calls
:func:`finish` (summary line, exit code 3 when some cases failed)::

    from usnav.batch.options import finish, batch_options, ray_option, retries_option, workers_option

    def simulate(..., workers: int | None = workers_option(), ray: str | None = ray_option(),
                 retries: int = retries_option()) -> None:
        report = run_batch(task, cases, out, batch_options(workers, ray, retries, description="simulate"))
        finish(report)
"""

from __future__ import annotations

from typing import Any

import typer

from usnav.batch.executor import EXIT_SOME_FAILED, BatchOptions, BatchReport, Resources

__all__ = ["workers_option", "ray_option", "retries_option", "batch_options", "finish"]

RAY_HELP = (
    "Run the cases on Ray: 'local' starts a private cluster on this machine (loopback only, --workers CPUs, "
    "default all), 'auto' joins the cluster started with `ray start` here, HOST:PORT joins a head node. "
    "Needs `pip install -e .[ray]`."
)


def workers_option(default: int | None = None) -> Any:
    """``--workers N``: local worker processes (1: in this process).

    No typer ``min=``: :func:`batch_options` checks the values, so a bad one is
    one sentence and exit code 2 like every other bad input.
    """
    return typer.Option(
        default, "--workers", help="Cases run in parallel: local worker processes (default 1: in this process)."
    )


def ray_option() -> Any:
    """``--ray ADDRESS``: run on Ray (local | auto | HOST:PORT)."""
    return typer.Option(None, "--ray", metavar="ADDRESS", help=RAY_HELP)


def retries_option(default: int = 0) -> Any:
    """``--retries R``: extra attempts of a failing case."""
    return typer.Option(default, "--retries", help="Extra attempts of a case that raises before it is reported failed.")


def batch_options(
    workers: int | None,
    ray: str | None,
    retries: int,
    *,
    resources: Resources = Resources(),
    description: str = "cases",
    progress: bool = True,
    redo: bool = False,
) -> BatchOptions:
    """Validated :class:`BatchOptions` from the CLI values (InputError, exit 2, if bad)."""
    opts = BatchOptions(
        workers=workers, ray_address=ray, retries=retries, resources=resources, description=description,
        progress=progress, redo=redo,
    )
    opts.validate()
    return opts


def finish(report: BatchReport) -> None:
    """Print the batch summary; exit with code 3 if some cases failed."""
    typer.echo(report.summary(), err=True)
    for o in report.failed[:5]:
        typer.echo(f"  failed {o.key} after {o.attempts} attempt(s): {o.error}", err=True)
    if len(report.failed) > 5:
        typer.echo(f"  ... and {len(report.failed) - 5} more", err=True)
    if report.failed:
        # SystemExit, not typer.Exit: usnav.cli.main turns SystemExit into its code,
        # while click (standalone_mode=False) returns typer.Exit's code, which main drops.
        raise SystemExit(EXIT_SOME_FAILED)
