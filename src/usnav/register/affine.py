"""Rigid then affine initialisation on feature maps (multi-start, Adam).

Transforms map fixed voxels to moving voxels of one shared level grid:
``y = S^-1 (M (S x - c) + c + t)`` with ``S`` the voxel spacing (mm, so
rotations are rigid in mm), ``c`` the rotation centre (mm) and ``M`` a
rotation (rigid) or a general 3x3 matrix (affine). Results are returned as a
4x4 ``T_movvox_from_fixvox`` on the level grid and converted between levels
with :func:`scale_transform`.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from usnav.register.warp import _normalise, identity_grid, sample_points

__all__ = ["rotation_matrix", "fit_rigid_affine", "scale_transform", "masked_feature_loss"]


def rotation_matrix(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues: rotation vector (3,) radians -> (3,3)."""
    theta = torch.sqrt((w**2).sum() + 1e-12)
    k = w / theta
    K = torch.zeros(3, 3, dtype=w.dtype)
    K[0, 1], K[0, 2], K[1, 0], K[1, 2], K[2, 0], K[2, 1] = -k[2], k[1], k[2], -k[0], -k[1], k[0]
    return torch.eye(3, dtype=w.dtype) + torch.sin(theta) * K + (1 - torch.cos(theta)) * (K @ K)


def _matrix(M: torch.Tensor, t_mm: torch.Tensor, c_mm: torch.Tensor, spacing: torch.Tensor) -> torch.Tensor:
    """4x4 T_movvox_from_fixvox from M (3,3), t (3,) mm, centre (3,) mm."""
    S = torch.diag(spacing)
    Si = torch.diag(1.0 / spacing)
    A = Si @ M @ S
    b = Si @ (c_mm + t_mm - M @ c_mm)
    T = torch.eye(4, dtype=M.dtype)
    T = torch.cat([torch.cat([A, b[:, None]], 1), T[3:]], 0)
    return T


def warp_affine(vol: torch.Tensor, T: torch.Tensor, grid: torch.Tensor | None = None) -> torch.Tensor:
    """Sample vol (C,X,Y,Z) at T @ x for every voxel x of the same grid -> (C,X,Y,Z)."""
    shape = tuple(vol.shape[1:])
    g = identity_grid(shape) if grid is None else grid
    pts = g @ T[:3, :3].T + T[:3, 3]
    return F.grid_sample(vol[None], _normalise(pts, shape)[None], align_corners=True, padding_mode="zeros")[0]


def masked_feature_loss(fix_p: torch.Tensor, mov: torch.Tensor, pts: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Mean squared feature difference at the mask points.

    fix_p: (C, N) fixed features at the points; mov: (C, X, Y, Z) moving features;
    pts: (N, 3) fixed voxel points; T: 4x4 moving-from-fixed voxels.
    """
    q = pts @ T[:3, :3].T + T[:3, 3]
    return ((fix_p - sample_points(mov, q, padding="border")) ** 2).mean()


def scale_transform(T: np.ndarray, factor_from: float, factor_to: float) -> np.ndarray:
    """Convert a voxel transform between block-averaged levels (level voxel = factor fine voxels).

    Level coordinates relate to fine ones by ``x_fine = f x_level + (f-1)/2``.
    """
    def to_fine(f: float) -> np.ndarray:
        M = np.diag([f, f, f, 1.0])
        M[:3, 3] = (f - 1) / 2.0
        return M

    A = to_fine(factor_from)
    B = to_fine(factor_to)
    return np.linalg.inv(B) @ A @ T @ np.linalg.inv(A) @ B


def _optimise(
    fix: torch.Tensor,
    mov: torch.Tensor,
    pts: torch.Tensor,
    spacing: torch.Tensor,
    centre: torch.Tensor,
    w0: torch.Tensor,
    t0: torch.Tensor,
    iters: int,
    affine: bool,
    lr: float,
    B0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    w = w0.clone().requires_grad_(True)
    t = t0.clone().requires_grad_(True)
    B = (torch.zeros(3, 3) if B0 is None else B0.clone()).requires_grad_(affine)
    params = [w, t] + ([B] if affine else [])
    opt = torch.optim.Adam(
        [{"params": [w], "lr": lr * 0.02}, {"params": [t], "lr": lr}] + ([{"params": [B], "lr": lr * 0.005}] if affine else [])
    )
    for _ in range(iters):
        opt.zero_grad()
        M = rotation_matrix(w) @ (torch.eye(3) + B)
        T = _matrix(M, t, centre, spacing)
        loss = masked_feature_loss(fix, mov, pts, T)
        loss.backward()
        opt.step()
    del params
    with torch.no_grad():
        M = rotation_matrix(w) @ (torch.eye(3) + B)
        T = _matrix(M, t, centre, spacing)
        loss_v = float(masked_feature_loss(fix, mov, pts, T))
    return w.detach(), t.detach(), B.detach(), loss_v


def _points(weight: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(weight > 0.5).float()


def fit_rigid_affine(
    levels: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]],
    spacing_mm: np.ndarray,
    max_rot_deg: float = 15.0,
    max_shift_mm: float = 12.0,
    affine: bool = True,
    iters: int = 40,
    n_candidates: int = 3,
) -> tuple[np.ndarray, dict]:
    """Multi-start rigid (+ affine) fit, coarse to fine.

    Args:
        levels: list of (fixed features (C,X,Y,Z), moving features, weight (X,Y,Z), factor) from
            coarse to fine; ``factor`` = level voxel size in units of the finest (fine) grid voxel.
            The loss is evaluated at the voxels where weight > 0.5 only.
        spacing_mm: (3,) fine-grid spacing.

    Search: at the coarsest level, for the identity and +-0.7*max_rot_deg about
    each axis, an exhaustive integer-voxel translation search within
    +-max_shift_mm; the ``n_candidates`` best starts and the identity-rotation
    start are refined rigidly with Adam on the coarse and then on the next
    level, where the lowest loss wins (the coarse level alone can prefer a
    wrong rotation); that level and finer ones then refine the winner
    (affine when ``affine``).

    Returns:
        (T_movvox_from_fixvox on the fine grid (4x4 float64), info dict).
    """
    info: dict = {}
    fix, mov, wgt, f0 = levels[0]
    sp = torch.tensor(np.asarray(spacing_mm) * f0, dtype=torch.float32)
    pts = _points(wgt)
    fix_p = fix[:, pts[:, 0].long(), pts[:, 1].long(), pts[:, 2].long()]
    centre = pts.mean(0) * sp
    a = np.deg2rad(max_rot_deg * 0.7)
    starts = [np.zeros(3)]
    for ax, sgn in itertools.product(range(3), (-1, 1)):
        v = np.zeros(3)
        v[ax] = sgn * a
        starts.append(v)
    # exhaustive integer search covers +-(max_shift_mm - one level voxel); Adam refines the rest
    n = max(1, int(np.floor(max_shift_mm / float(sp.min()))) - 1)
    shifts = torch.tensor(list(itertools.product(range(-n, n + 1), repeat=3)), dtype=torch.long)
    shape = torch.tensor(mov.shape[1:])
    results = []
    pi = pts.long()
    with torch.no_grad():
        for w0 in starts:
            wt = torch.tensor(w0, dtype=torch.float32)
            T = _matrix(rotation_matrix(wt), torch.zeros(3), centre, sp)
            movw = warp_affine(mov, T)  # rotated moving on the fixed level grid
            pad = n
            mp = F.pad(movw[None], [pad] * 6, mode="replicate")[0]
            best = (float("inf"), torch.zeros(3))
            for d in shifts:
                q = pi + d + pad
                vals = mp[:, q[:, 0], q[:, 1], q[:, 2]]
                lv = float(((fix_p - vals) ** 2).mean())
                if lv < best[0]:
                    best = (lv, rotation_matrix(wt) @ (d.float() * sp))
            results.append((best[0], wt, best[1]))
    del shape
    ident = results[0]  # the identity-rotation start
    results.sort(key=lambda r: r[0])
    cands = results[:n_candidates]
    if all(c is not ident for c in cands):
        cands.append(ident)
    refined = []
    for _, wt, tt in cands:
        w, t, B, lv = _optimise(fix_p, mov, pts, sp, centre, wt, tt, iters, False, lr=0.5)
        refined.append([lv, w, t])
    info["coarse_losses"] = [r[0] for r in refined]
    B = torch.zeros(3, 3)
    f_prev = f0
    for li, (fix_l, mov_l, wgt_l, f_l) in enumerate(levels[1:], start=1):
        sp_l = torch.tensor(np.asarray(spacing_mm) * f_l, dtype=torch.float32)
        # level mm frames differ by the voxel-centre offset; re-centre
        off = torch.tensor(np.asarray(spacing_mm) * ((f_prev - 1) / 2.0 - (f_l - 1) / 2.0), dtype=torch.float32)
        centre = centre + off
        pts_l = _points(wgt_l)
        fix_pl = fix_l[:, pts_l[:, 0].long(), pts_l[:, 1].long(), pts_l[:, 2].long()]
        if li == 1:
            # the candidates compete on the finer (more discriminative) level, rigidly
            for r in refined:
                r[1], r[2], _, r[0] = _optimise(fix_pl, mov_l, pts_l, sp_l, centre, r[1], r[2], iters, False, lr=0.3)
            info["candidate_losses"] = [r[0] for r in refined]
            info["candidate_rotation_deg"] = [float(np.rad2deg(float(torch.linalg.norm(r[1])))) for r in refined]
            refined.sort(key=lambda r: r[0])
            lv, w, t = refined[0]
        if affine:
            w, t, B, lv = _optimise(fix_pl, mov_l, pts_l, sp_l, centre, w, t, iters, True, lr=0.2, B0=B)
        elif li > 1:
            w, t, _, lv = _optimise(fix_pl, mov_l, pts_l, sp_l, centre, w, t, iters, False, lr=0.3)
        info[f"level{li}_loss"] = lv
        f_prev = f_l
        sp = sp_l
    if len(levels) == 1:
        refined.sort(key=lambda r: r[0])
        lv, w, t = refined[0]
    M = rotation_matrix(w) @ (torch.eye(3) + B)
    T = _matrix(M, t, centre, sp).double().numpy()
    info["rotation_deg"] = float(np.rad2deg(float(torch.linalg.norm(w))))
    info["translation_mm"] = [float(v) for v in t]
    return scale_transform(T, f_prev, 1.0), info
