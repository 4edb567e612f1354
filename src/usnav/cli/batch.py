"""`usnav batch ...`: inspect a batch output folder; check a pool or Ray setup with synthetic cases."""

from __future__ import annotations

from pathlib import Path

import typer

from usnav.batch.options import batch_options, finish, ray_option, retries_option, workers_option

app = typer.Typer(help="Batch runs: manifest status, synthetic cases to test a pool or Ray cluster.", no_args_is_help=True)


@app.command("status")
def status(
    folder: Path = typer.Argument(..., help="Output folder of a batch command."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check every output's sha256."),
) -> None:
    """Count finished cases in FOLDER's manifest and check their outputs (exit 3 if any are corrupt or failed)."""
    import json

    from usnav.batch import FAILURES_NAME, MANIFEST_NAME, read_manifest, verify_record
    from usnav.errors import input_error

    if not (folder / MANIFEST_NAME).is_file():
        raise input_error(folder, f"no batch manifest ({MANIFEST_NAME}) in this folder")
    records = read_manifest(folder)
    bad = []
    if verify:
        for rec in records.values():
            why = verify_record(folder, rec)
            if why:
                bad.append((rec.key, why))
    n_out = sum(len(r.outputs) for r in records.values())
    typer.echo(f"{folder}: {len(records)} finished cases, {n_out} output files" + (f", {len(bad)} corrupt" if verify else ""))
    for key, why in bad:
        typer.echo(f"  corrupt {key}: {why}")
    failures = folder / FAILURES_NAME
    n_failed = 0
    if failures.is_file():
        failed = json.loads(failures.read_text())["failed"]
        n_failed = len(failed)
        typer.echo(f"{len(failed)} failed case(s) in the last run (see {failures}):")
        for f in failed:
            typer.echo(f"  {f['key']}: {f['error']}")
    if bad or n_failed:
        raise SystemExit(3)  # see usnav.batch.options.finish


@app.command("synthetic")
def synthetic(
    out: Path = typer.Argument(..., help="Output folder (resumable: rerun to finish)."),
    cases: int = typer.Option(8, "--cases", min=1, help="Number of cases."),
    kind: str = typer.Option("array", "--kind", help="array (sleep, then write a seeded array) or cpu (about 1 s of matrix products)."),
    sleep_s: float = typer.Option(0.2, "--sleep-s", min=0.0, help="array: seconds each case sleeps."),
    fail: str = typer.Option("", "--fail", help="array: comma-separated case indices that always raise (to see --retries and the failures file)."),
    workers: int | None = workers_option(),
    ray: str | None = ray_option(),
    retries: int = retries_option(),
) -> None:
    """Run cheap deterministic synthetic cases through the batch layer (test a pool or a Ray cluster)."""
    from usnav.batch import run_batch
    from usnav.batch.synthetic import array_case, cpu_case
    from usnav.errors import InputError

    try:
        failing = {int(s) for s in fail.split(",") if s.strip()}
    except ValueError:
        raise InputError(f"--fail must be comma-separated case indices, got {fail!r}") from None
    opts = batch_options(workers, ray, retries, description=f"synthetic {kind}")
    from usnav.batch import Case

    if kind == "array":
        task = array_case
        todo = [Case(f"case_{i:04d}", {"index": i, "sleep_s": sleep_s, **({"always_fail": True} if i in failing else {})})
                for i in range(cases)]
    elif kind == "cpu":
        task = cpu_case
        todo = [Case(f"cpu_{i:04d}", {"index": i}) for i in range(cases)]
    else:
        raise InputError(f"--kind must be array or cpu, got {kind!r}")
    report = run_batch(task, todo, out, opts)
    finish(report)


if __name__ == "__main__":  # pragma: no cover - `python -m usnav.cli.batch` (tests run it as a subprocess)
    import sys

    from usnav.errors import InputError as _InputError

    try:
        sys.exit(app(standalone_mode=False) or 0)
    except _InputError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
