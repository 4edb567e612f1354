"""`usnav simulate tusrec`: write a simulated TUS-REC data set."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from usnav.batch.options import ray_option, retries_option, workers_option


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
        out: Path = typer.Argument(..., help="Output folder (must not exist or be empty; or an earlier run's folder, to resume it)."),
        subjects: int = typer.Option(1, "--subjects", help="Number of subjects."),
        first_subject: int = typer.Option(0, "--first-subject", help="Index of the first subject (folder 000, 001, ...)."),
        protocol: str = typer.Option("rotation", "--protocol", help="rotation (2025: LH/RH_rotation) or 2024 (24 sweeps per subject)."),
        anatomy: str = typer.Option("forearm", "--anatomy", help="forearm or brain."),
        frames: int = typer.Option(1500, "--frames", help="Frames per scan (20 Hz)."),
        frame_size: str = typer.Option("480x640", "--frame-size", help="Frame size HxW in pixels (same field of view)."),
        layout: str = typer.Option("train", "--layout", help="train (frames_transfs/) or eval (frames/, transfs/, dataset_keys.h5)."),
        seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same bytes."),
        workers: Optional[int] = workers_option(),  # batch layer (usnav.batch)
        ray: Optional[str] = ray_option(),  # batch layer
        retries: int = retries_option(),  # batch layer
        depth_mm: float = typer.Option(90.0, "--depth-mm", help="Imaging depth, mm (10-90)."),
        voxel_mm: float = typer.Option(0.0, "--voxel-mm", help="Voxel size of the anatomy volumes, mm (0: the anatomy's default, 0.5 forearm / 0.75 brain)."),
        scatterer_spacing_mm: float = typer.Option(0.2, "--scatterer-spacing-mm", help="Mean spacing of the fixed scatterer field, mm (0.1-0.4; larger is faster, 0.2 is sub-resolution)."),
    ) -> None:
        """Simulate freehand sweeps (B-mode frames, tracker transforms, calibration, landmarks) in the TUS-REC layout."""
        from usnav.errors import InputError
        from usnav.sim.tusrec_sim import SimConfig

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
        # ---- batch layer (usnav.batch): one case per scan, resumable; --workers / --ray / --retries
        from usnav.batch import MANIFEST_NAME, Case, run_batch
        from usnav.batch.options import batch_options, finish
        from usnav.io.tusrec import write_calibration, write_dataset_keys, write_landmarks
        from usnav.sim.tusrec_sim import dataset_calibration, scan_names, subject_name

        opts = batch_options(workers, ray, retries, description="simulate tusrec")
        resuming = (out / MANIFEST_NAME).is_file()
        if out.exists() and not resuming and (not out.is_dir() or any(out.iterdir())):
            raise InputError(f"{out}: output folder already exists and is not empty; choose a new folder")
        subject_ids = range(first_subject, first_subject + subjects)
        pairs = [(subject_name(s), scan) for s in subject_ids for scan in scan_names(protocol)]
        cases = [Case(f"{subject_name(s)}/{scan}", {"config": config, "subject": s, "scan": scan})
                 for s in subject_ids for scan in scan_names(protocol)]
        report = run_batch(_simulate_scan_case, cases, out, opts)
        # Files of the whole data set, from every finished scan (this run's and earlier runs').
        write_calibration(out / "calib_matrix.csv", dataset_calibration(config.seed, config.probe()))
        results = report.results
        for s in subject_ids:
            keys = {scan: f"{subject_name(s)}/{scan}" for scan in scan_names(protocol)}
            if all(k in results for k in keys.values()):
                write_landmarks(out, subject_name(s), {scan: results[k]["landmarks"] for scan, k in keys.items()})
        if layout == "eval" and not report.failed:
            write_dataset_keys(out, pairs)
        typer.echo(f"wrote {len(pairs) - len(report.failed)} of {len(pairs)} scans of {frames} frames "
                   f"({anatomy}, {protocol}, layout {layout}) to {out}")
        finish(report)  # exit code 3 if some scans failed (see usnav_failures.json)


def _simulate_scan_case(payload: dict, out: Path) -> dict:
    """Batch task (usnav.batch): render and write one scan into ``out``; its landmarks go to the manifest."""
    from usnav.sim.tusrec_sim import write_one_scan

    landmarks = write_one_scan(payload["config"], out, payload["subject"], payload["scan"])
    return {"landmarks": landmarks.tolist()}
