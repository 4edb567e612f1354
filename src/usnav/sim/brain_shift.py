"""Known brain-shift deformations for synthetic iUS-MRI cases.

The field is a pull/backward map on the fixed (intra-operative) grid: the
pre-operative image sampled at ``x + u(x)`` shows the post-resection anatomy
at fixed voxel ``x``. It is the sum of

- a small rigid navigation error (rotation about the grid centre, translation),
- a gravity-directed sag that is largest under the craniotomy and decays with
  depth and lateral distance,
- a cavity collapse: tissue around the resected tumour moves towards the
  cavity centre (so post-operative points pull from further out),
- a smooth random part (Gaussian-smoothed noise on a coarse grid).

The field is built on a coarse grid (``factor`` times coarser, voxel centres at
``factor*j + (factor-1)/2`` fine voxels) and upsampled trilinearly (see
:func:`usnav.register.warp.resize_field`); the upsampled field IS the ground
truth. Its non-rigid amplitude is scaled to a target mean magnitude inside a
weight mask, limited to a maximum magnitude, and shrunk until every Jacobian
determinant is positive (min det > ``min_jac``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from usnav.geometry.rigid import rotation_from_euler_zyx

__all__ = ["BrainShiftParams", "coarse_centres_vox", "make_brain_shift", "upsample_shift", "min_jacobian"]


@dataclass
class BrainShiftParams:
    """Random parameters of one brain shift (mm, degrees)."""

    sag_mm: float
    sag_depth_mm: float
    collapse_mm: float
    random_mm: float
    nav_rot_deg: tuple[float, float, float]
    nav_shift_mm: tuple[float, float, float]
    target_mean_mm: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "BrainShiftParams":
        return cls(
            sag_mm=float(rng.uniform(3.0, 9.0)),
            sag_depth_mm=float(rng.uniform(40.0, 70.0)),
            collapse_mm=float(rng.uniform(1.5, 4.5)),
            random_mm=float(rng.uniform(1.0, 2.5)),
            nav_rot_deg=tuple(float(v) for v in rng.uniform(-1.5, 1.5, 3)),
            nav_shift_mm=tuple(float(v) for v in rng.uniform(-1.5, 1.5, 3)),
            target_mean_mm=float(rng.uniform(3.5, 7.0)),
        )


def coarse_centres_vox(shape: tuple[int, int, int], factor: int) -> np.ndarray:
    """(x, y, z, 3) fine-voxel coordinates of the coarse grid's voxel centres."""
    cs = [s // factor for s in shape]
    axes = [np.arange(c) * factor + (factor - 1) / 2.0 for c in cs]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def min_jacobian(coarse_disp_fine_vox: np.ndarray, factor: int) -> float:
    """Minimum det J of x + u on the coarse grid (u in fine voxels, central differences)."""
    u = coarse_disp_fine_vox / factor  # coarse-voxel units
    g = [np.gradient(u[..., a], axis=b) for a in range(3) for b in range(3)]
    j = np.array(g).reshape(3, 3, *u.shape[:3]) + np.eye(3).reshape(3, 3, 1, 1, 1)
    det = (
        j[0, 0] * (j[1, 1] * j[2, 2] - j[1, 2] * j[2, 1])
        - j[0, 1] * (j[1, 0] * j[2, 2] - j[1, 2] * j[2, 0])
        + j[0, 2] * (j[1, 0] * j[2, 1] - j[1, 1] * j[2, 0])
    )
    return float(det.min())


def make_brain_shift(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    T_world_from_vox: np.ndarray,
    gravity_world: np.ndarray,
    craniotomy_world: np.ndarray,
    cavity_centre_world: np.ndarray,
    cavity_radius_mm: float,
    weight_mask_coarse: np.ndarray,
    params: BrainShiftParams | None = None,
    factor: int = 4,
    max_mm: float = 18.0,
    min_jac: float = 0.25,
) -> tuple[np.ndarray, BrainShiftParams, dict]:
    """Build a brain shift on the coarse grid.

    Returns ``(u_coarse, params, stats)``: ``u_coarse`` (X/f, Y/f, Z/f, 3)
    float32 displacement in FINE voxel units sampled at the coarse centres;
    ``stats`` has mean/max magnitude (mm) inside ``weight_mask_coarse`` and the
    minimum Jacobian determinant.
    """
    from scipy.ndimage import gaussian_filter

    p = params or BrainShiftParams.sample(rng)
    A = np.asarray(T_world_from_vox, dtype=np.float64)
    spacing = np.linalg.norm(A[:3, :3], axis=0)
    R_world_from_vox = A[:3, :3] / spacing  # rotation (orthonormal columns)
    xc = coarse_centres_vox(shape, factor)
    pw = xc @ A[:3, :3].T + A[:3, 3]  # world mm
    g = np.asarray(gravity_world, dtype=np.float64)
    g = g / np.linalg.norm(g)

    # gravity sag: post-op tissue sank by s along g -> pull from x - s g
    rel = pw - np.asarray(craniotomy_world)
    depth = np.clip(rel @ g, 0.0, None)
    lateral = np.linalg.norm(rel - (rel @ g)[..., None] * g, axis=-1)
    s = np.exp(-depth / p.sag_depth_mm) * np.exp(-0.5 * (lateral / 45.0) ** 2)
    u_sag = -s[..., None] * g

    # cavity collapse: pull outward from the cavity centre
    rc = pw - np.asarray(cavity_centre_world)
    d = np.linalg.norm(rc, axis=-1)
    r0 = max(cavity_radius_mm, 3.0)
    lam = r0 + 25.0
    prof = np.exp(-0.5 * (d / lam) ** 2) / np.sqrt(d**2 + (1.5 * r0) ** 2)
    u_cav = rc * prof[..., None]
    u_cav /= max(np.abs(np.linalg.norm(u_cav, axis=-1)).max(), 1e-9)

    # smooth random part
    cs = xc.shape[:3]
    u_rnd = np.stack([gaussian_filter(rng.standard_normal(cs), sigma=5.0, mode="nearest") for _ in range(3)], -1)
    u_rnd /= max(np.linalg.norm(u_rnd, axis=-1).max(), 1e-9)

    nonrigid_mm = p.sag_mm * u_sag + p.collapse_mm * u_cav + p.random_mm * u_rnd  # world mm, pull

    # rigid navigation error about the grid centre (world), pull
    centre_w = A[:3, :3] @ ((np.asarray(shape) - 1) / 2.0) + A[:3, 3]
    R = rotation_from_euler_zyx(np.deg2rad(p.nav_rot_deg))[:3, :3]
    rigid_mm = (pw - centre_w) @ R.T + centre_w + np.asarray(p.nav_shift_mm) - pw

    w = weight_mask_coarse.astype(bool)
    if not w.any():
        w = np.ones(cs, dtype=bool)
    scale = 1.0
    for _ in range(40):
        total_mm = rigid_mm + scale * nonrigid_mm
        mag = np.linalg.norm(total_mm, axis=-1)
        mean = float(mag[w].mean())
        if abs(mean - p.target_mean_mm) < 0.05:
            break
        nr = float(np.linalg.norm(scale * nonrigid_mm, axis=-1)[w].mean())
        scale *= max(0.5, min(2.0, (p.target_mean_mm - (mean - nr)) / max(nr, 1e-6)))
    # cap the maximum and keep the Jacobian positive
    for _ in range(60):
        total_mm = rigid_mm + scale * nonrigid_mm
        u_vox = total_mm @ R_world_from_vox / spacing  # world -> voxel axes
        mag = np.linalg.norm(total_mm, axis=-1)
        if mag[w].max() <= max_mm and min_jacobian(u_vox, factor) > min_jac:
            break
        scale *= 0.92
    stats = {
        "mean_mm": float(mag[w].mean()),
        "max_mm": float(mag[w].max()),
        "max_grid_mm": float(mag.max()),
        "min_jacobian": min_jacobian(u_vox, factor),
        "nonrigid_scale": float(scale),
    }
    return u_vox.astype(np.float32), p, stats


def upsample_shift(u_coarse: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Ground-truth fine field (X, Y, Z, 3) float32 from the coarse field (both in fine voxels)."""
    import torch

    from usnav.register.warp import resize_field

    t = torch.from_numpy(np.ascontiguousarray(u_coarse, dtype=np.float32))
    # resize_field rescales values by the size ratio; our values are already fine voxels
    out = resize_field(t, shape) / torch.tensor([shape[k] / u_coarse.shape[k] for k in range(3)])
    return out.numpy().astype(np.float32)
