"""Reconstruct a PLUS sequence with its config, reproducing PLUS's
``VolumeReconstructor`` (``vtkPlusVolumeReconstructor`` +
``vtkPlusPasteSliceIntoVolume`` with ``Optimization="FULL"``).

What is reproduced, and how:

- poses: ``Image -> Reference`` chained through the config's
  CoordinateDefinitions and the per-frame transforms; frames whose chain has
  a non-OK status (or whose ``ImageStatus`` is not OK) are skipped for both
  the extent and the insertion;
- grid: origin = minimum of the clipped frame corners (pixel centres of the
  clip rectangle's corners) over all valid frames; voxel count per axis
  ``round(range / spacing) + 1``, the rule that reproduces the dimensions of
  PLUS's shipped reference volumes (the current PLUS source reads
  ``ceil + 1``, older sources ``floor + 1``; both are available through
  ``extent_rounding``);
  ``OutputOrigin`` + ``OutputExtent`` in the config override it;
- geometry in 14-bit fixed point, nearest neighbour = round half up,
  trilinear weights with fixed-point products, 1/8 weight threshold for
  MAXIMUM/LATEST;
- MEAN as PLUS's in-place running mean on the output type (integer
  truncation for uint8), with the uint16 accumulation buffer (256 per hit,
  saturating) that also drives hole filling;
- hole filling elements in order (STICK, GAUSSIAN, ...), integer
  truncation as PLUS;
- ``PixelRejectionThreshold``: darker pixels are not inserted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from usnav.compound.core import Grid, clipped_corners, grid_from_frames
from usnav.compound.holes import apply_hole_filling, from_plus_config
from usnav.compound.masks import PixelMask, row_segments
from usnav.compound.volume import Volume
from usnav.errors import InputError
from usnav.io.plus import PlusConfig, PlusSequence, frame_transforms

__all__ = ["PlusResult", "reconstruct_plus", "plus_mask"]


@dataclass
class PlusResult:
    """``volume`` (uint8 for uint8 input), ``accumulation`` (nx, ny, nz)
    uint16 PLUS accumulation buffer, ``frames_inserted``, ``overflow`` (PLUS
    accumulation saturation events)."""

    volume: Volume
    accumulation: np.ndarray
    frames_inserted: int
    overflow: int


def plus_mask(config: PlusConfig) -> PixelMask:
    """The clip rectangle and fan of a PLUS config, in pixels."""
    r = config.reconstruction
    assert r is not None
    return PixelMask(
        clip_origin_px=tuple(float(v) for v in r.clip_rectangle_origin),  # type: ignore[arg-type]
        clip_size_px=tuple(float(v) for v in r.clip_rectangle_size),  # type: ignore[arg-type]
        fan_angles_deg=r.fan_angles_deg,
        fan_origin_px=r.fan_origin_pixel,
        radius_start_px=r.fan_radius_start_pixel,
        radius_stop_px=r.fan_radius_stop_pixel,
    )


def reconstruct_plus(
    sequence: PlusSequence,
    config: PlusConfig,
    extent_rounding: str = "round",
    grid: Grid | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PlusResult:
    """Reconstruct ``sequence`` with the ``VolumeReconstruction`` settings of
    ``config`` (see module docstring). Raises :class:`InputError` when the
    config has no VolumeReconstruction element, no frame has a valid pose,
    or the frames are not 8-bit."""
    from usnav.compound import _kernels as K

    r = config.reconstruction
    if r is None:
        raise InputError(f"{config.path}: has no VolumeReconstruction element")
    if sequence.frames.dtype != np.uint8:
        raise InputError(f"{sequence.path}: PLUS-conformant reconstruction needs 8-bit frames, got {sequence.frames.dtype}")
    T, valid = frame_transforms(sequence, config, r.image_frame, r.reference_frame)
    keep = np.zeros(sequence.n_frames, bool)
    keep[:: r.skip_interval] = True
    if not (valid & keep).any():
        raise InputError(
            f"{sequence.path}: no frame has a valid {r.image_frame}To{r.reference_frame} transform "
            "(all statuses INVALID or transforms missing)"
        )
    H, W = sequence.frame_shape
    mask = plus_mask(config)
    if grid is not None:
        pass
    elif r.output_origin is not None and r.output_extent is not None:
        e = r.output_extent
        shape = (e[1] - e[0] + 1, e[3] - e[2] + 1, e[5] - e[4] + 1)
        if min(shape) < 1:
            raise InputError(f"{config.path}: OutputExtent {e} is empty")
        origin = tuple(float(o + s * lo) for o, s, lo in zip(r.output_origin, r.output_spacing, e[0::2]))
        grid = Grid(origin, tuple(r.output_spacing), shape)  # type: ignore[arg-type]
    else:
        try:
            grid = grid_from_frames(T, clipped_corners(mask, H, W), r.output_spacing, valid=valid, rounding=extent_rounding)
        except ValueError as exc:
            raise InputError(f"{config.path}: {exc}") from None
    nx, ny, nz = grid.shape
    T_voxel_from_world = np.linalg.inv(grid.T_world_from_voxel)
    M = np.einsum("ij,njk->nik", T_voxel_from_world, np.where(np.isfinite(T), T, 0.0))[:, :3, [0, 1, 3]]
    Mq = np.round(M * K.FIXED_ONE).astype(np.int64)

    seg = tuple(np.ascontiguousarray(a) for a in row_segments(mask, H, W))
    mode = {"MEAN": 0, "MAXIMUM": 1, "LATEST": 2}[r.compounding_mode]
    linear = r.interpolation == "LINEAR"
    out = np.zeros(grid.n_voxels, np.uint8)
    acc = np.zeros(grid.n_voxels, np.int32)
    order = np.nonzero(valid & keep)[0]
    overflow = 0
    reject = -np.inf if r.pixel_rejection_threshold is None else float(r.pixel_rejection_threshold)
    for n, f in enumerate(order):
        overflow += K.plus_insert(sequence.frames[f : f + 1], Mq[f : f + 1], *seg, nx, ny, nz, mode, linear, out, acc, reject)
        if progress is not None:
            progress(n + 1, len(order))
    vol_zyx = out.reshape(nz, ny, nx)
    acc_zyx = acc.reshape(nz, ny, nx)
    if r.fill_holes and r.hole_filling:
        filled = apply_hole_filling(vol_zyx, acc_zyx, from_plus_config(r.hole_filling), truncate=True)
        vol_zyx = np.clip(filled, 0, 255).astype(np.uint8)
    volume = Volume(vol_zyx.transpose(2, 1, 0), grid.T_world_from_voxel, weight=acc_zyx.transpose(2, 1, 0).astype(np.float32))
    return PlusResult(volume, acc_zyx.transpose(2, 1, 0).astype(np.uint16), len(order), int(overflow))
