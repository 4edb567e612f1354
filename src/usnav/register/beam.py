"""Beam directions of a sector (cone) iUS field of view, estimated from the mask alone.

A 3D sector scan images a cone whose apex is the probe's virtual source;
the beam at a voxel runs from the apex through it. Specular echoes depend on
the tissue-boundary normal relative to the beam (Wein et al. 2008 model the
reflection term with the image gradient projected on the beam direction), so
knowing the apex lets a similarity measure predict which MRI edges echo.

The apex is found from the lateral surface of the mask: every tangent plane
of a cone passes through its apex, so with boundary points ``p_i`` and
normals ``n_i`` the apex ``a`` minimises ``sum (n_i . (p_i - a))^2`` over the
lateral points. Those are unknown (the near and far caps have radial
normals), so a RANSAC over triples of tangent planes finds the consensus
apex, and a trimmed least-squares fit refines it. The fit is accepted only
when the cone it implies (axis, half-angle and depth range read off the mask)
overlaps the mask with an intersection-over-union of at least
``min_iou``; volumes compounded from a freehand sweep are not one cone and
fall back to no beam direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

__all__ = ["ConeFit", "fit_cone", "beam_directions"]


@dataclass
class ConeFit:
    """Apex in the mask's voxel coordinates and how well a cone explains the mask."""

    apex_vox: np.ndarray  # (3,)
    iou: float  # overlap of the implied cone with the mask
    accepted: bool

    def as_dict(self) -> dict:
        return {"apex_vox": [float(v) for v in self.apex_vox], "iou": self.iou, "accepted": self.accepted}


def _cone_iou(mask: np.ndarray, apex: np.ndarray) -> float:
    pts = np.argwhere(mask).astype(np.float64)
    if len(pts) == 0:
        return 0.0
    rel = pts - apex
    r = np.linalg.norm(rel, axis=1)
    axis = rel.sum(0)
    axis /= max(np.linalg.norm(axis), 1e-9)
    cos_in = (rel @ axis) / np.maximum(r, 1e-9)
    cos_min = np.quantile(cos_in, 0.005)
    r_lo, r_hi = np.quantile(r, 0.002), np.quantile(r, 0.998)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in mask.shape], indexing="ij"), -1)
    g = grid - apex
    rg = np.linalg.norm(g, axis=-1)
    cone = ((g @ axis) >= cos_min * rg) & (rg >= r_lo) & (rg <= r_hi)
    inter = float((cone & mask).sum())
    union = float((cone | mask).sum())
    return inter / max(union, 1.0)


def fit_cone(fov_mask: np.ndarray, step: int = 2, min_iou: float = 0.85, seed: int = 0) -> ConeFit:
    """Cone apex (voxels of ``fov_mask``) of a sector field of view; ``accepted`` when the cone explains the mask.

    ``step`` subsamples the mask (the fit and the overlap check run on every
    ``step``-th voxel); the apex is returned in full-resolution voxels.
    """
    m = np.asarray(fov_mask, dtype=bool)[::step, ::step, ::step]
    none = ConeFit(np.full(3, np.nan), 0.0, False)
    if m.sum() < 100:
        return none
    s = ndimage.gaussian_filter(m.astype(np.float32), 1.0)
    edge = (s > 0.2) & (s < 0.8)
    g = np.stack(np.gradient(s), -1)[edge].astype(np.float64)
    p = np.argwhere(edge).astype(np.float64)
    n = g / np.linalg.norm(g, axis=1, keepdims=True).clip(1e-9)
    if len(p) < 10:
        return none
    rng = np.random.default_rng(seed)
    best_count, apex = -1, None
    for _ in range(300):
        i = rng.choice(len(p), 3, replace=False)
        if abs(np.linalg.det(n[i])) < 0.2:
            continue
        a = np.linalg.solve(n[i], (n[i] * p[i]).sum(1))
        count = int((np.abs((n * (p - a)).sum(1)) < 1.0).sum())
        if count > best_count:
            best_count, apex = count, a
    if apex is None:
        return none
    for tol in (2.0, 1.0, 0.5):  # trimmed least squares on the consensus tangent planes
        w = (np.abs((n * (p - apex)).sum(1)) < tol).astype(np.float64)
        A = (n * w[:, None]).T @ n
        if np.linalg.cond(A) > 1e6:
            break
        apex = np.linalg.solve(A, (n * w[:, None]).T @ (n * p).sum(1))
    iou = _cone_iou(m, apex)
    return ConeFit(apex * step, float(iou), bool(iou >= min_iou))


def beam_directions(apex_vox: np.ndarray, lo_vox: list[int], shape: tuple[int, int, int], factor: int) -> torch.Tensor:
    """(3, X, Y, Z) unit beam directions on a block-``factor`` grid whose first cell starts at fine voxel ``lo_vox``.

    Cell ``i`` covers fine voxels ``lo + factor * i ... + factor - 1``; its centre is used.
    """
    axes = [torch.arange(n, dtype=torch.float64) * factor + lo_vox[k] + (factor - 1) / 2 for k, n in enumerate(shape)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    d = grid - torch.as_tensor(np.asarray(apex_vox, dtype=np.float64))[:, None, None, None]
    return (d / d.norm(dim=0, keepdim=True).clamp(min=1e-6)).float()
