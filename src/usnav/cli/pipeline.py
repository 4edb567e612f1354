"""`usnav pipeline` and `usnav demo`: the joined pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from usnav.errors import InputError


def _progress_bar():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


class _Stages:
    """One rich progress bar per pipeline stage, created on first use."""

    def __init__(self, progress) -> None:
        self.progress = progress
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)


def _print_summary(result, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    m = result.metrics
    table = Table(title=title)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    if "tusrec" in m:
        table.add_row("final frame drift (mm)", f"{m['drift_mm'][-1]:.2f}")
        table.add_row("TUS-REC GPE / LPE (mm)", f"{m['tusrec']['GPE']:.2f} / {m['tusrec']['LPE']:.3f}")
        table.add_row("TUS-REC score vs tracking", f"{m['tusrec']['score']:.3f}")
    if "landmarks" in m:
        lm = m["landmarks"]
        table.add_row("TRE before registration (mm)", f"{lm['before']['TRE_mm']:.2f}")
        table.add_row("TRE after registration (mm)", f"{lm['after']['TRE_mm']:.2f}")
        table.add_row("TRE30 after (mm)", f"{lm['after']['TRE30_mm']:.2f}")
    if "skipped" in m.get("registration", {}):
        table.add_row("registration", "skipped: " + m["registration"]["skipped"])
    for stage, seconds in m.get("timings_s", {}).items():
        table.add_row(f"time: {stage} (s)", f"{seconds:.1f}")
    Console().print(table)
    typer.echo(f"results: {result.out_dir}")
    typer.echo(f"report:  {result.report}")


def register(app: typer.Typer) -> None:
    @app.command("pipeline")
    def pipeline(
        sweep: Path = typer.Argument(..., help="Freehand sweep: TUS-REC scan (.h5) or PLUS sequence (.igs.mha)."),
        mri: list[Path] = typer.Option([], "--mri", help="Preoperative MRI (NIfTI); repeat for ceT1 and T2."),
        init_pose: Optional[Path] = typer.Option(None, help="4x4 text file: T_mri_from_image0, the navigation pose of frame 0."),
        out: Path = typer.Option(..., "--out", help="Output folder."),
        method: str = typer.Option("default", help="Pose estimation: default, a freehand method, tracked, identity."),
        model: Optional[Path] = typer.Option(None, help="Freehand training run folder (default: shipped weights)."),
        calib: Optional[Path] = typer.Option(None, help="calib_matrix.csv of a TUS-REC scan (default: found beside it)."),
        plus_config: Optional[Path] = typer.Option(None, help="PLUS device-set XML of a PLUS sequence."),
        spacing: float = typer.Option(0.5, help="Voxel size of the compounded volume, mm."),
        landmarks_mri: Optional[Path] = typer.Option(None, help="CSV of MRI-world landmarks paired with the sweep's landmarks."),
        device: str = typer.Option("cpu", help="cpu or cuda."),
    ) -> None:
        """Sweep -> trackerless poses -> 3D iUS -> MRI registration -> brain-shift-corrected MRI + report."""
        from usnav.pipeline import run

        with _progress_bar() as progress:
            result = run(sweep, mri, init_pose, out, method=method, model=model, calib=calib, plus_config=plus_config,
                         spacing_mm=spacing, landmarks_mri=landmarks_mri, device=device, progress=_Stages(progress))
        _print_summary(result, "usnav pipeline")

    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("demo_out"), "--out", help="Output folder."),
        seed: int = typer.Option(0, help="Seed of the simulated case."),
        frames: int = typer.Option(160, help="Frames in the simulated sweep."),
        method: str = typer.Option("default", help="Pose estimation method for the pipeline."),
        init_error_deg: float = typer.Option(8.0, help="Rotation error of the simulated navigation pose (degrees)."),
        init_error_mm: float = typer.Option(6.0, help="Translation error of the simulated navigation pose (mm)."),
        reference: bool = typer.Option(True, help="Also run the pipeline with the simulator's true (tracked) poses, "
                                                  "to separate reconstruction from registration errors."),
    ) -> None:
        """Simulate a brain case with a freehand sweep through the craniotomy and run the pipeline on it."""
        if not (0.0 <= init_error_deg <= 45.0 and 0.0 <= init_error_mm <= 50.0):
            raise InputError(f"--init-error-deg must be in [0, 45] and --init-error-mm in [0, 50], "
                             f"got {init_error_deg} and {init_error_mm}")
        from usnav.pipeline import run
        from usnav.pipeline.demo_case import simulate_demo_case, write_demo_case

        with _progress_bar() as progress:
            stages = _Stages(progress)
            case = simulate_demo_case(seed=seed, n_frames=frames, init_error=(init_error_deg, init_error_mm),
                                      progress=stages)
            inputs = write_demo_case(case, out / "inputs")
            result = run(inputs["sweep"], [inputs["cet1"], inputs["t2"]], inputs["init_pose"], out / "results",
                         method=method, spacing_mm=0.5, landmarks_mri=inputs["landmarks_mri"],
                         true_T_mri_from_image=case.T_world_from_image, progress=stages)
            tracked = None
            if reference and method != "tracked":
                tracked = run(inputs["sweep"], [inputs["cet1"], inputs["t2"]], inputs["init_pose"],
                              out / "results_tracked_poses", method="tracked", spacing_mm=0.5,
                              landmarks_mri=inputs["landmarks_mri"], true_T_mri_from_image=case.T_world_from_image,
                              progress=lambda stage, done, total: stages(f"{stage} (ref)", done, total))
        typer.echo(f"simulated case: brain shift {case.shift_stats['mean_mm']:.1f} mm mean "
                   f"({case.shift_stats['max_mm']:.1f} mm max); inputs in {out / 'inputs'}")
        _print_summary(result, f"usnav demo: trackerless poses ({method})")
        if tracked is not None:
            _print_summary(tracked, "reference: the same pipeline with the true (tracked) poses")
