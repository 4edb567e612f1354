"""`usnav simulate remind`: synthetic ReMIND2Reg-like cases (ceT1, T2, post-resection 3D iUS, landmarks)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from usnav.batch.options import ray_option, retries_option, workers_option


def register(app: typer.Typer) -> None:
    """Add the `remind` command to the `usnav simulate` group."""

    @app.command("remind")
    def remind(
        out: Path = typer.Argument(..., help="Output data set folder (Learn2Reg layout)."),
        cases: int = typer.Option(1, "--cases", min=1, help="Number of cases."),
        first_case: int = typer.Option(0, "--first-case", min=0, max=9999, help="Number of the first case."),
        seed: int = typer.Option(0, "--seed", help="Random seed (cases are reproducible from seed and case number)."),
        split: str = typer.Option("val", "--split", help="Write into imagesVal (val) or imagesTr (train)."),
        grid: int = typer.Option(256, "--grid", min=32, help="Voxels per axis (challenge: 256)."),
        spacing: float = typer.Option(0.5, "--spacing", min=0.05, help="Voxel spacing, mm (challenge: 0.5)."),
        clean_us: bool = typer.Option(
            False, "--clean-us",
            help="Also write the iUS rendered without speckle (groundtruth/<case>_0000_clean.nii.gz), a "
                 "reference for despeckling and oracle checks (the speckled iUS is unchanged).",
        ),
        workers: Optional[int] = workers_option(),  # batch layer (usnav.batch)
        ray: Optional[str] = ray_option(),  # batch layer
        retries: int = retries_option(),  # batch layer
    ) -> None:
        """Simulate brain-shift cases: pre-op ceT1/T2, known deformation, post-resection iUS, landmark pairs."""
        from usnav.errors import input_error
        from usnav.sim.remind import SimConfig

        if split not in ("val", "train"):
            raise input_error(None, f"--split must be 'val' or 'train', got {split!r}")
        if first_case + cases > 10000:
            raise input_error(None, "case numbers must stay below 10000 (4 digits)")
        if grid % 8:
            raise input_error(None, f"--grid must be a multiple of 8, got {grid}")
        if out.exists() and not out.is_dir():
            raise input_error(out, "exists and is not a folder")
        scale = grid / 256 * 0.5 / spacing
        cfg = SimConfig(
            shape=(grid, grid, grid),
            spacing_mm=spacing,
            n_r=max(64, int(320 * min(1.0, grid / 256 * 2))),
            n_ang=max(48, int(128 * min(1.0, grid / 256 * 2))),
            clean_us=clean_us,
        )
        del scale
        # ---- batch layer (usnav.batch): one case per ReMIND case, resumable; --workers / --ray / --retries
        from usnav.batch import Case, run_batch
        from usnav.batch.options import batch_options, finish
        from usnav.sim.remind import rewrite_dataset_json

        opts = batch_options(workers, ray, retries, description="simulate remind")
        todo = [Case(f"case_{c:04d}", {"case": c, "seed": seed, "split": split, "config": cfg})
                for c in range(first_case, first_case + cases)]
        report = run_batch(_simulate_remind_case, todo, out, opts)
        for key, info in report.results.items():
            s = info["shift_stats"]
            typer.echo(f"case {info['case']:04d}: shift mean {s['mean_mm']:.1f} mm, max {s['max_mm']:.1f} mm, "
                       f"{info['n_landmarks']} landmarks")
        rewrite_dataset_json(out, cfg.shape)
        finish(report)  # exit code 3 if some cases failed (see usnav_failures.json)


def _simulate_remind_case(payload: dict, out: Path) -> dict:
    """Batch task (usnav.batch): simulate and write one case into ``out``; its info goes to the manifest."""
    from usnav.sim.remind import simulate_case, write_case

    truth = simulate_case(payload["case"], payload["seed"], payload["config"])
    write_case(out, truth, payload["split"])
    return truth.info
