"""`usnav simulate tusrec`: write a simulated TUS-REC data set."""

from __future__ import annotations

from pathlib import Path

import typer


def _parse_frame_size(text: str) -> tuple[int, int]:
    from usnav.errors import InputError

    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise InputError(f"--frame-size must look like HxW (for example 480x640), got {text!r}")
    return int(parts[0]), int(parts[1])


def register(app: typer.Typer) -> None:
    """Add the `tusrec` command to the `usnav simulate` group."""

    @app.command("tusrec")
    def tusrec(
        out: Path = typer.Argument(..., help="Output folder (must not exist or be empty)."),
        subjects: int = typer.Option(1, "--subjects", help="Number of subjects."),
        first_subject: int = typer.Option(0, "--first-subject", help="Index of the first subject (folder 000, 001, ...)."),
        protocol: str = typer.Option("rotation", "--protocol", help="rotation (2025: LH/RH_rotation) or 2024 (24 sweeps per subject)."),
        anatomy: str = typer.Option("forearm", "--anatomy", help="forearm or brain."),
        frames: int = typer.Option(1500, "--frames", help="Frames per scan (20 Hz)."),
        frame_size: str = typer.Option("480x640", "--frame-size", help="Frame size HxW in pixels (same field of view)."),
        layout: str = typer.Option("train", "--layout", help="train (frames_transfs/) or eval (frames/, transfs/, dataset_keys.h5)."),
        seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same bytes."),
        workers: int = typer.Option(1, "--workers", help="Worker processes (scans in parallel)."),
        depth_mm: float = typer.Option(90.0, "--depth-mm", help="Imaging depth, mm (10-90)."),
        voxel_mm: float = typer.Option(0.0, "--voxel-mm", help="Voxel size of the anatomy volumes, mm (0: the anatomy's default, 0.5 forearm / 0.75 brain)."),
        scatterer_spacing_mm: float = typer.Option(0.2, "--scatterer-spacing-mm", help="Mean spacing of the fixed scatterer field, mm (0.1-0.4; larger is faster, 0.2 is sub-resolution)."),
    ) -> None:
        """Simulate freehand sweeps (B-mode frames, tracker transforms, calibration, landmarks) in the TUS-REC layout."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from usnav.errors import InputError
        from usnav.io.atomic import atomic_dir
        from usnav.sim.tusrec_sim import SimConfig, simulate_dataset

        hw = _parse_frame_size(frame_size)
        config = SimConfig(
            anatomy=anatomy,
            protocol=protocol,
            n_frames=frames,
            frame_hw=hw,
            layout=layout,
            seed=seed,
            depth_mm=depth_mm,
            scene_voxel_mm=voxel_mm if voxel_mm > 0 else None,
            scatterer_spacing_mm=scatterer_spacing_mm,
        )
        try:
            config.validate()
        except ValueError as exc:
            raise InputError(f"{exc}") from None
        if subjects < 1:
            raise InputError(f"--subjects must be at least 1, got {subjects}")
        if first_subject < 0 or first_subject + subjects > 1000:
            raise InputError(f"subjects {first_subject}..{first_subject + subjects - 1} must lie in 0..999")
        if workers < 1:
            raise InputError(f"--workers must be at least 1, got {workers}")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise InputError(f"{out}: output folder already exists and is not empty; choose a new folder")

        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
        ) as progress:
            tasks: dict[tuple[int, str], int] = {}

            def on_start(subject: int, scan: str) -> None:
                tasks[(subject, scan)] = progress.add_task(f"{subject:03d}/{scan}", total=frames)

            def on_progress(subject: int, scan: str, n: int) -> None:
                if (subject, scan) not in tasks:
                    on_start(subject, scan)
                progress.advance(tasks[(subject, scan)], n)

            with atomic_dir(out) as tmp:
                pairs = simulate_dataset(
                    tmp, config, subjects, first_subject, workers=workers, on_start=on_start, on_progress=on_progress
                )
        typer.echo(f"wrote {len(pairs)} scans of {frames} frames ({anatomy}, {protocol}, layout {layout}) to {out}")
