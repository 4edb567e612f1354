"""`usnav compound ...`: frames + poses -> 3D volume (PLUS sequences, TUS-REC scans)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Compound tracked 2D ultrasound frames into a 3D volume.", no_args_is_help=True)

_OUT_SUFFIXES = (".mha", ".mhd", ".nii", ".nii.gz")


def _check_output(path: Path) -> None:
    from usnav.errors import input_error

    if not path.name.lower().endswith(_OUT_SUFFIXES):
        raise input_error(path, "output must end in .mha, .nii or .nii.gz")
    if path.parent and not path.parent.exists():
        raise input_error(path, f"output folder {path.parent} does not exist")


def _progress(description: str):
    """A rich progress bar and a ``callback(done, total)`` feeding it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True)
    task = bar.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return bar, update


@app.command("plus")
def plus(
    sequence: Path = typer.Argument(..., help="PLUS sequence file (.igs.mha / .seq.mha)."),
    config: Path = typer.Argument(..., help="PLUS device-set configuration XML with a VolumeReconstruction element."),
    out: Path = typer.Argument(..., help="Output volume (.mha or .nii.gz)."),
    extent_rounding: str = typer.Option(
        "round", help="Voxel count per axis from the frames' extent: round (matches PLUS's reference volumes), ceil or floor."
    ),
    compress: bool = typer.Option(False, help="zlib-compress .mha output."),
) -> None:
    """Reconstruct a PLUS sequence exactly as PLUS's VolumeReconstructor does."""
    from usnav.compound.plus import reconstruct_plus
    from usnav.errors import InputError
    from usnav.io.plus import read_config, read_sequence

    if extent_rounding not in ("round", "ceil", "floor"):
        raise InputError(f"--extent-rounding must be round, ceil or floor, got {extent_rounding!r}")
    _check_output(out)
    cfg = read_config(config)
    if cfg.reconstruction is None:
        raise InputError(f"{config}: has no VolumeReconstruction element")
    seq = read_sequence(sequence)
    bar, update = _progress("compounding")
    with bar:
        result = reconstruct_plus(seq, cfg, extent_rounding=extent_rounding, progress=update)
    result.volume.save(out, compress=compress)
    v = result.volume
    typer.echo(
        f"{out}: {v.shape[0]}x{v.shape[1]}x{v.shape[2]} voxels at {v.spacing_mm[0]:g} mm, "
        f"{result.frames_inserted}/{seq.n_frames} frames inserted, "
        f"{(result.accumulation > 0).mean() * 100:.1f}% voxels hit"
    )


@app.command("tusrec")
def tusrec(
    scan: Path = typer.Argument(..., help="TUS-REC scan file (.h5 with 'frames', and 'tforms' unless --pred is given)."),
    out: Path = typer.Argument(..., help="Output volume (.nii.gz or .mha), in frame 0's image-mm space."),
    calib: Path = typer.Option(..., "--calib", help="calib_matrix.csv of the data set."),
    pred: Path | None = typer.Option(None, "--pred", help="Prediction file (global_transforms frame n -> frame 0); default: tracked tforms."),
    spacing: float = typer.Option(0.5, "--spacing", help="Voxel size, mm."),
    method: str = typer.Option("nn", "--method", help="nn (pixel nearest neighbour) or linear (trilinear splat)."),
    mode: str = typer.Option("mean", "--mode", help="mean, max or latest."),
    fill_holes: bool = typer.Option(False, "--fill-holes", help="Fill unhit voxels (PLUS stick filler, then a 5^3 Gaussian)."),
    threads: int = typer.Option(2, "--threads", help="Worker threads."),
    nifti_world: str = typer.Option(
        "lps", "--nifti-world",
        help="lps: NIfTI affine = diag(-1,-1,1) @ voxel->image-mm, so ITK/Slicer read image-mm (as for .mha); "
        "ras: nibabel affine maps voxels to image-mm directly.",
    ),
) -> None:
    """Compound a TUS-REC scan with its tracked or predicted transforms.

    The volume lives in frame 0's image-mm space: pixel (x, y) (1-based) of
    frame 0 is at (x * sx, y * sy, 0) mm with (sx, sy) from the calibration."""
    import numpy as np

    from usnav.compound import HoleFiller, PixelMask, clipped_corners, compound_frames, grid_from_frames, pixel_to_image_mm
    from usnav.errors import InputError, input_error
    from usnav.io.tusrec import read_calibration, read_prediction, read_scan_file

    if method not in ("nn", "linear"):
        raise InputError(f"--method must be nn or linear, got {method!r}")
    if mode not in ("mean", "max", "latest"):
        raise InputError(f"--mode must be mean, max or latest, got {mode!r}")
    if nifti_world not in ("lps", "ras"):
        raise InputError(f"--nifti-world must be lps or ras, got {nifti_world!r}")
    if not (spacing > 0 and np.isfinite(spacing)):
        raise InputError(f"--spacing must be a positive number of mm, got {spacing}")
    _check_output(out)
    cal = read_calibration(calib)
    s = read_scan_file(scan, calib_path=calib)
    n = s.n_frames
    if n < 1:
        raise input_error(scan, "has no frames")
    if pred is not None:
        G = read_prediction(pred, n_frames=n).global_transforms
    else:
        if s.tforms is None:
            raise input_error(scan, "has no 'tforms'; give predicted transforms with --pred")
        G = s.T_image0_from_image
    T_image0_from_image = np.concatenate([np.eye(4)[None], G], axis=0)
    # pixel (column c, row r) 0-based -> image-mm: S @ (c+1, r+1, 0, 1)
    sx, sy = cal.pixel_spacing_mm
    T_world_from_pixel = T_image0_from_image @ pixel_to_image_mm((sx, sy), one_based=True)
    H, W = s.frame_shape
    try:
        grid = grid_from_frames(T_world_from_pixel, clipped_corners(PixelMask(), H, W), spacing, max_voxels=400_000_000)
    except ValueError as exc:
        raise input_error(pred or scan, f"cannot place the frames in a volume: {exc} (check the transforms or use a larger --spacing)") from None
    fillers = [HoleFiller("stick", stick_length=9, n_sticks=1), HoleFiller("gaussian", size=5, stdev=1.0, min_ratio=0.1)] if fill_holes else None
    bar, update = _progress("compounding")
    with bar:
        vol = compound_frames(
            s.frames, T_world_from_pixel, grid=grid, method=method, mode=mode, fill_holes=fillers,
            threads=threads, progress=update,
        )
    s.close()
    vol.save(out, nifti_world=nifti_world)
    typer.echo(f"{out}: {vol.shape[0]}x{vol.shape[1]}x{vol.shape[2]} voxels at {spacing:g} mm, {(vol.weight > 0).mean() * 100:.1f}% voxels hit")
