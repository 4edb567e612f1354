"""`usnav remind run|score`: ReMIND2Reg (Learn2Reg layout) batch registration and official scoring."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from usnav.batch.options import ray_option, retries_option, workers_option

app = typer.Typer(help="ReMIND2Reg iUS-MRI registration: run on a Learn2Reg data set, score displacement fields.",
                  no_args_is_help=True)

RUNTIME_JSON = "runtimes.json"


def _select(ds, which: str):
    from usnav.errors import input_error

    if which not in ("val", "train", "test", "all"):
        raise input_error(None, f"--pairs must be val, train, test or all, got {which!r}")
    pairs = ds.pairs(which)
    if not pairs:
        raise input_error(ds.root, f"has no registration pairs for --pairs {which}")
    return pairs


@app.command("run")
def run(
    data: Path = typer.Argument(..., help="Data set folder (Learn2Reg layout)."),
    out: Path = typer.Option(..., "--out", help="Output folder for disp_*.nii.gz."),
    pairs: str = typer.Option("val", "--pairs", help="val | train | test | all"),
    resume: bool = typer.Option(False, "--resume", help="Skip cases already finished (checked against the folder's manifest)."),
    threads: int = typer.Option(2, "--threads", min=1, help="CPU threads (per case)."),
    workers: Optional[int] = workers_option(),  # batch layer (usnav.batch)
    ray: Optional[str] = ray_option(),  # batch layer
    retries: int = retries_option(),  # batch layer
) -> None:
    """Register every selected pair; ceT1 and T2 of a case are used jointly (one field, both outputs)."""
    from usnav.io import learn2reg as l2r
    from usnav.io.atomic import atomic_path

    ds = l2r.open_dataset(data)
    sel = _select(ds, pairs)
    # validate everything first: bad input -> one sentence, exit 2, nothing written
    for p in sel:
        l2r.check_pair(p, landmarks=False)
    by_fixed: dict[Path, list] = {}
    for p in sel:
        by_fixed.setdefault(p.fixed, []).append(p)
    # ---- batch layer (usnav.batch): one case per fixed image, resumable; --workers / --ray / --retries
    from usnav.batch import Case, Resources, case_fingerprint, run_batch
    from usnav.batch.options import batch_options, finish

    opts = batch_options(workers, ray, retries, resources=Resources(cpus=threads), description="remind run",
                         redo=not resume)
    cases = []
    for fixed, plist in by_fixed.items():
        # use every moving modality of the case jointly (same pre-operative grid)
        movs_paths = sorted({p.moving for p in ds.pairs("all") if p.fixed == fixed} | {p.moving for p in plist})
        payload = {"fixed": str(Path(fixed).resolve()), "movings": [str(Path(m).resolve()) for m in movs_paths],
                   "disp_names": [p.disp_name for p in plist]}
        fp = case_fingerprint(Case(Path(fixed).name, payload))  # --threads does not change the result
        cases.append(Case(Path(fixed).name, {**payload, "threads": threads}, fingerprint=fp))
    report = run_batch(_register_case, cases, out, opts)
    rt_path = out / RUNTIME_JSON
    runtimes = json.loads(rt_path.read_text()) if rt_path.is_file() else {}
    for o in report.done:
        for name in o.result["disp_names"]:
            runtimes[name] = o.result["runtime_s"]
            typer.echo(f"{name}: {o.result['runtime_s']:.1f} s")
    with atomic_path(rt_path) as tmp:
        tmp.write_text(json.dumps(runtimes, indent=2))
    finish(report)  # exit code 3 if some cases failed (see usnav_failures.json)


def _register_case(payload: dict, out: Path) -> dict:
    """Batch task (usnav.batch): register one fixed image with its moving images, write its fields into ``out``."""
    from usnav.io import learn2reg as l2r
    from usnav.register.pipeline import RegistrationConfig, register_pair

    fix = l2r.read_volume(Path(payload["fixed"]))
    movs = [l2r.read_volume(Path(m)).array for m in payload["movings"]]
    res = register_pair(fix.array, movs, fix.spacing_mm, config=RegistrationConfig(threads=payload["threads"]))
    for name in payload["disp_names"]:
        l2r.write_displacement(out / name, res.disp_vox, fix.affine)
    return {"runtime_s": res.runtime_s, "disp_names": payload["disp_names"]}


@app.command("score")
def score(
    data: Path = typer.Argument(..., help="Data set folder with landmarks."),
    outdir: Path = typer.Argument(..., help="Folder with disp_*.nii.gz."),
    pairs: str = typer.Option("all", "--pairs", help="val | train | test | all (pairs with landmarks)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the scores as JSON."),
) -> None:
    """TRE, TRE30, SDlogJ, folding fraction and runtime per pair, their means, and the initial TRE."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from usnav.errors import input_error
    from usnav.io import learn2reg as l2r
    from usnav.io.atomic import atomic_path
    from usnav.metrics.remind import score_pair

    ds = l2r.open_dataset(data)
    sel = [p for p in _select(ds, pairs) if p.has_landmarks]
    if not sel:
        raise input_error(data, "has no pairs with landmark files to score")
    if not outdir.is_dir():
        raise input_error(outdir, "output folder not found")
    rt_path = outdir / RUNTIME_JSON
    runtimes = json.loads(rt_path.read_text()) if rt_path.is_file() else {}
    scores = []
    for p in sel:
        fix = l2r.read_volume(p.fixed, dtype=None)
        lms = l2r.check_landmark_pair(p.fixed_landmarks, p.moving_landmarks, fix.shape)
        assert lms is not None
        disp = l2r.read_displacement(outdir / p.disp_name, fix.shape)
        s = score_pair(p.disp_name, disp.array, lms[0], lms[1], fix.spacing_mm, runtimes.get(p.disp_name))
        scores.append(s)
    keys = ["tre_initial_mm", "tre_mm", "tre30_initial_mm", "tre30_mm", "sdlogj", "folding_fraction", "runtime_s"]
    means = {}
    for k in keys:
        vals = [getattr(s, k) for s in scores if getattr(s, k) is not None]
        means[k] = float(np.mean(vals)) if vals else None
    table = Table(title=f"ReMIND2Reg scores ({len(scores)} pairs)")
    for col in ["pair", "n", "TRE0", "TRE", "TRE30_0", "TRE30", "SDlogJ", "fold", "time s"]:
        table.add_column(col, justify="right")

    def fmt(v, f=".2f"):
        return "-" if v is None else format(v, f)

    for s in scores:
        table.add_row(s.pair, str(s.n_landmarks), fmt(s.tre_initial_mm), fmt(s.tre_mm), fmt(s.tre30_initial_mm),
                      fmt(s.tre30_mm), fmt(s.sdlogj, ".3f"), fmt(s.folding_fraction, ".2e"), fmt(s.runtime_s, ".1f"))
    table.add_row("mean", "", *[fmt(means[k], ".3f" if k == "sdlogj" else ".2e" if k == "folding_fraction"
                                     else ".1f" if k == "runtime_s" else ".2f") for k in keys])
    Console().print(table)
    if json_out is not None:
        with atomic_path(json_out) as tmp:
            tmp.write_text(json.dumps({"pairs": [s.as_dict() for s in scores], "mean": means}, indent=2))


from usnav.cli.remind_harness import register as _register_harness; _register_harness(app)  # noqa: E402  (usnav remind evaluate)
