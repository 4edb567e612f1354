"""A compounded volume: voxel array plus its geometry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

__all__ = ["Volume", "grid_matrix"]


def grid_matrix(origin_mm: np.ndarray, spacing_mm: np.ndarray, direction: np.ndarray | None = None) -> NDArray[np.float64]:
    """T_world_from_voxel (4, 4) for an origin (centre of voxel 0), spacing
    and (3, 3) direction cosines (columns = world direction of i, j, k)."""
    D = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    T = np.eye(4)
    T[:3, :3] = D * np.asarray(spacing_mm, dtype=np.float64)[None, :]
    T[:3, 3] = origin_mm
    return T


@dataclass
class Volume:
    """Voxel array and geometry.

    ``array``: (nx, ny, nz) indexed ``[i, j, k]`` (nibabel convention; the
    buffer is x-fastest, i.e. Fortran order, as MetaImage stores it).
    ``T_world_from_voxel``: (4, 4) float64, voxel indices (centre of voxel
    (0, 0, 0) at index 0) -> world mm. The world frame is the frame the
    frames were compounded in (PLUS ``Reference``; TUS-REC frame 0 image-mm).
    ``weight``: (nx, ny, nz) float32 accumulated weight (0 = never hit),
    or None.
    """

    array: np.ndarray
    T_world_from_voxel: NDArray[np.float64]
    weight: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> NDArray[np.float64]:
        return np.linalg.norm(self.T_world_from_voxel[:3, :3], axis=0)

    @property
    def origin_mm(self) -> NDArray[np.float64]:
        return self.T_world_from_voxel[:3, 3].copy()

    @property
    def direction(self) -> NDArray[np.float64]:
        return self.T_world_from_voxel[:3, :3] / self.spacing_mm[None, :]

    def __repr__(self) -> str:
        sp = ", ".join(f"{v:.4g}" for v in self.spacing_mm)
        org = ", ".join(f"{v:.4g}" for v in self.origin_mm)
        return f"Volume(shape={self.shape}, dtype={self.array.dtype}, spacing_mm=({sp}), origin_mm=({org}))"

    def save(self, path: str | Path, compress: bool = False, nifti_world: str = "lps") -> Path:
        """Write ``.mha``/``.mhd`` (MetaImage) or ``.nii``/``.nii.gz`` (NIfTI), atomically.

        MetaImage stores the world coordinates as they are (ITK/PLUS
        convention: world = LPS); NIfTI stores them as RAS, i.e. the affine is
        ``diag(-1, -1, 1) @ T_world_from_voxel`` so that ITK, 3D Slicer and
        nibabel-based tools place both files at the same physical location.
        ``nifti_world="ras"`` stores the matrix unchanged instead (then
        ``nibabel affine @ (i, j, k, 1)`` gives world coordinates directly).
        """
        from usnav.errors import input_error

        p = Path(path)
        name = p.name.lower()
        if name.endswith((".nii", ".nii.gz")):
            from usnav.io.nifti import write_nifti

            return write_nifti(p, self.array, self.T_world_from_voxel, world=nifti_world)
        if name.endswith((".mha", ".mhd")):
            from usnav.io.plus import write_metaimage

            return write_metaimage(
                p,
                np.asarray(self.array).transpose(2, 1, 0),
                self.spacing_mm,
                self.origin_mm,
                direction=self.direction,
                compress=compress,
            )
        raise input_error(p, "output must end in .mha, .mhd, .nii or .nii.gz")
