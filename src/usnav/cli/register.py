"""`usnav register FIXED_US MOVING [MOVING ...] --out DISP.nii.gz [--warped OUT]`."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the top-level `register` command."""

    @app.command("register")
    def register_cmd(
        fixed: Path = typer.Argument(..., help="Fixed 3D iUS volume (NIfTI)."),
        moving: list[Path] = typer.Argument(..., help="Moving MRI(s) on the same grid (ceT1, T2), used jointly."),
        out: Path = typer.Option(..., "--out", help="Output displacement field (X,Y,Z,3) float32 voxels, pull."),
        warped: Path | None = typer.Option(None, "--warped", help="Also write the first moving image warped onto the iUS."),
        cavity: Path | None = typer.Option(None, "--cavity", help="Optional resection-cavity mask on the fixed grid."),
        threads: int = typer.Option(2, "--threads", min=1, help="CPU threads."),
    ) -> None:
        """Deformably register preoperative MRI to intraoperative 3D ultrasound (ConvexAdam-style)."""
        import numpy as np

        from usnav.errors import input_error
        from usnav.io.learn2reg import read_volume, write_displacement, write_volume
        from usnav.register.pipeline import RegistrationConfig, register_pair, warp_image

        fix = read_volume(fixed)
        movs = []
        for m in moving:
            v = read_volume(m)
            if v.shape != fix.shape:
                raise input_error(m, f"grid {v.shape} differs from the fixed image grid {fix.shape}")
            if not np.allclose(v.affine, fix.affine, atol=1e-4):
                raise input_error(m, "affine differs from the fixed image's affine (images must share one grid)")
            movs.append(v.array)
        cav = None
        if cavity is not None:
            c = read_volume(cavity)
            if c.shape != fix.shape:
                raise input_error(cavity, f"grid {c.shape} differs from the fixed image grid {fix.shape}")
            cav = c.array > 0
        if not np.any(fix.array > 0):
            raise input_error(fixed, "contains no ultrasound signal (all voxels <= 0)")
        res = register_pair(fix.array, movs, fix.spacing_mm, cavity_mask=cav, config=RegistrationConfig(threads=threads))
        write_displacement(out, res.disp_vox, fix.affine)
        if warped is not None:
            write_volume(warped, warp_image(movs[0], res.disp_vox), fix.affine)
        typer.echo(f"wrote {out} ({res.runtime_s:.1f} s)")
