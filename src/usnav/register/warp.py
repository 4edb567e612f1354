"""Resampling on voxel grids with torch (trilinear, zero outside).

Voxel (0,0,0) is the centre of the first voxel; point coordinates are
(..., 3) in array-axis order (i, j, k), voxel units.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["sample_points", "warp_volume", "identity_grid", "resize_field", "upsample_field_to", "extend_field"]


def _normalise(idx: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(...,3) voxel indices (i,j,k) -> grid_sample coordinates (x=k, y=j, z=i) in [-1,1], align_corners=True."""
    size = torch.tensor([max(s - 1, 1) for s in shape], dtype=idx.dtype, device=idx.device)
    g = idx / size * 2.0 - 1.0
    return g.flip(-1)


def sample_points(vol: torch.Tensor, idx: torch.Tensor, mode: str = "bilinear", padding: str = "zeros") -> torch.Tensor:
    """Sample ``vol`` (C, X, Y, Z) at voxel points ``idx`` (N, 3) -> (C, N) float32."""
    grid = _normalise(idx.to(vol.dtype), tuple(vol.shape[1:])).reshape(1, -1, 1, 1, 3)
    out = F.grid_sample(vol[None], grid, mode=mode, padding_mode=padding, align_corners=True)
    return out.reshape(vol.shape[0], -1)


def identity_grid(shape: tuple[int, int, int], dtype=torch.float32) -> torch.Tensor:
    """(X, Y, Z, 3) voxel index grid."""
    axes = [torch.arange(s, dtype=dtype) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def warp_volume(vol: torch.Tensor, disp: torch.Tensor, mode: str = "bilinear", padding: str = "zeros") -> torch.Tensor:
    """Pull-warp ``vol`` (C, X, Y, Z) with ``disp`` (X', Y', Z', 3) voxels of ``vol`` -> (C, X', Y', Z').

    Output voxel x takes the value of ``vol`` at ``x + disp(x)`` (same voxel
    frame for both grids).
    """
    shape = tuple(disp.shape[:3])
    pts = identity_grid(shape, disp.dtype) + disp
    grid = _normalise(pts, tuple(vol.shape[1:]))[None]
    return F.grid_sample(vol[None], grid, mode=mode, padding_mode=padding, align_corners=True)[0]


def resize_field(disp: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Resample a displacement (X,Y,Z,3) in voxels to another grid covering the same extent.

    Grids share the outer voxel edges (voxel centres at (i+0.5)*s - 0.5 in
    fine units), so values are rescaled by the size ratio per axis.
    """
    src = tuple(disp.shape[:3])
    t = disp.permute(3, 0, 1, 2)[None]
    out = F.interpolate(t, size=shape, mode="trilinear", align_corners=False)[0].permute(1, 2, 3, 0)
    scale = torch.tensor([shape[k] / src[k] for k in range(3)], dtype=disp.dtype)
    return out * scale


def upsample_field_to(disp: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Alias of :func:`resize_field` (kept for readability at call sites)."""
    return resize_field(disp, shape)


def extend_field(disp: torch.Tensor, lo: list[int], full_shape: tuple[int, int, int]) -> torch.Tensor:
    """Place a field (X,Y,Z,3) computed on a box starting at voxel ``lo`` into ``full_shape``, replicate-padded."""
    pads: list[int] = []
    for k in (2, 1, 0):
        pads += [lo[k], full_shape[k] - lo[k] - disp.shape[k]]
    return F.pad(disp.permute(3, 0, 1, 2)[None], pads, mode="replicate")[0].permute(1, 2, 3, 0)
