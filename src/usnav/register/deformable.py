"""Deformable stage: discrete coupled-convex optimisation, then Adam instance optimisation.

ConvexAdam-style (Siebert, Hansen, Heinrich 2021), written from the paper's
description in plain torch for the CPU:

1. Discrete step: for control points on a grid ``block`` times coarser than
   the feature grid, a cost volume of feature SSD over a cube of candidate
   displacements (feature-grid voxels) is built; points with too little
   valid (masked) support get a flat cost.
2. Coupled convex optimisation: alternately take, per point, the candidate
   minimising ``cost + coeff * |d - v|^2`` and smooth ``v`` (box filters),
   with increasing coupling ``coeff``.
3. Adam: the dense field on the feature grid is refined by minimising the
   masked feature SSD of the warped moving features plus a diffusion
   penalty; the field is box-smoothed before use (as in ConvexAdam).

All displacements are pull maps in voxels of the grid they live on.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from usnav.register.warp import sample_points, warp_volume

__all__ = ["discrete_convex", "adam_refine", "smooth_field", "jacobian_det", "unfold"]


def smooth_field(u: torch.Tensor, k: int = 3, times: int = 2) -> torch.Tensor:
    """Box-smooth a (X,Y,Z,3) field ``times`` times with kernel k (replicate borders)."""
    x = u.permute(3, 0, 1, 2)[None]
    p = k // 2
    for _ in range(times):
        x = F.avg_pool3d(F.pad(x, [p] * 6, mode="replicate"), k, stride=1)
    return x[0].permute(1, 2, 3, 0)


def _cost_volume(
    fix: torch.Tensor, mov: torch.Tensor, weight: torch.Tensor, radius: int, step: int, block: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean feature SSD per control cell for displacements {-radius..radius}*step (feature voxels).

    Only voxels with weight > 0.5 contribute. Returns (costs (D, x, y, z),
    displacements (D, 3) feature voxels, support fraction (x, y, z)).
    """
    C, X, Y, Z = fix.shape
    cshape = (X // block, Y // block, Z // block)
    pts = torch.nonzero(weight > 0.5)
    pts = pts[(pts[:, 0] < cshape[0] * block) & (pts[:, 1] < cshape[1] * block) & (pts[:, 2] < cshape[2] * block)]
    fix_p = fix[:, pts[:, 0], pts[:, 1], pts[:, 2]]
    cell = ((pts[:, 0] // block) * cshape[1] + pts[:, 1] // block) * cshape[2] + pts[:, 2] // block
    ncell = cshape[0] * cshape[1] * cshape[2]
    counts = torch.zeros(ncell).index_add_(0, cell, torch.ones(len(cell)))
    pad = radius * step
    movp = F.pad(mov[None], [pad] * 6, mode="replicate")[0]
    disps = torch.tensor(list(itertools.product(range(-radius, radius + 1), repeat=3)), dtype=torch.long) * step
    costs = torch.zeros((len(disps), ncell))
    for n, d in enumerate(disps):
        q = pts + d + pad
        e = ((fix_p - movp[:, q[:, 0], q[:, 1], q[:, 2]]) ** 2).mean(0)
        costs[n].index_add_(0, cell, e)
    costs = costs / counts.clamp(min=1)
    support = counts / float(block**3)
    return costs.reshape((len(disps),) + cshape), disps.float(), support.reshape(cshape)


def discrete_convex(
    fix: torch.Tensor,
    movs: list[torch.Tensor],
    weight: torch.Tensor,
    radius: int = 3,
    step: int = 1,
    block: int = 2,
    coeffs: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
    min_support: float = 0.25,
    pool: int = 1,
    fill: bool = False,
    smooth: int = 2,
) -> torch.Tensor:
    """Coupled-convex discrete displacement on the feature grid -> (X, Y, Z, 3) feature voxels.

    ``pool`` > 1 averages the costs over pool^3 neighbouring cells (weighted by
    their voxel counts) before the argmin, i.e. larger matching patches.
    """
    costs, D, support = _cost_volume(fix, movs[0], weight, radius, step, block)
    for mov in movs[1:]:
        costs = costs + _cost_volume(fix, mov, weight, radius, step, block)[0]
    if pool > 1:
        p = pool // 2
        cnt = support[None, None]
        num = F.avg_pool3d((costs * support)[None], pool, stride=1, padding=p, count_include_pad=False)[0]
        den = F.avg_pool3d(cnt, pool, stride=1, padding=p, count_include_pad=False)[0]
        costs = num / den.clamp(min=1e-6)
        support = den[0]
    valid = support >= min_support
    costs = costs * valid
    if valid.any():
        c = costs[:, valid]
        scale = (c - c.min(0, keepdim=True)[0]).mean().clamp(min=1e-6)
        costs = costs / scale
    idx = costs.argmin(0)
    v = D[idx] * valid[..., None]
    if fill and valid.any() and not valid.all():
        # unsupported cells: extrapolate the supported argmins (normalised box smoothing, grown
        # until every cell is reached) instead of 0, which would drag the FOV edge towards 0
        m = valid[..., None].float()
        num, den = v * m, m
        while bool((den <= 1e-6).any()):
            num, den = smooth_field(num, 3, 1), smooth_field(den, 3, 1)
        v = torch.where(valid[..., None], v, num / den.clamp(min=1e-6))
    v = smooth_field(v, 3, smooth)
    for c in coeffs:
        diff = ((D.view(-1, 1, 1, 1, 3) - v[None]) ** 2).sum(-1) / float(step * step)
        idx = (costs + c * diff).argmin(0)
        v = smooth_field(D[idx], 3, smooth)
    shape = tuple(fix.shape[1:])
    return F.interpolate(v.permute(3, 0, 1, 2)[None], size=shape, mode="trilinear", align_corners=False)[0].permute(
        1, 2, 3, 0
    )


def adam_refine(
    fix: torch.Tensor,
    movs: list[torch.Tensor],
    weight: torch.Tensor,
    init: torch.Tensor,
    iters: int = 60,
    lam: float = 1.0,
    lr: float = 1.0,
    ctrl: int = 2,
    smooth: int = 2,
) -> torch.Tensor:
    """Adam instance optimisation of a displacement on a control grid -> dense (X,Y,Z,3) feature voxels.

    The parameters are displacements (feature voxels) on a grid ``ctrl`` times
    coarser than the feature grid (block-centre convention), trilinearly
    box-smoothed ``smooth`` times (3^3, as ConvexAdam does) and trilinearly
    interpolated at the masked voxels only; the loss is the mean feature SSD
    of all moving images (their channels are sampled together) plus ``lam``
    times the diffusion energy (squared forward differences per control cell,
    in feature voxels).

    Args:
        fix: (C,X,Y,Z) fixed features; movs: list of (C,X,Y,Z) moving features.
        weight: (X,Y,Z) mask of voxels entering the loss.
        init: (X,Y,Z,3) initial field (feature voxels).
    """
    shape = tuple(fix.shape[1:])
    cshape = tuple(max(2, s // ctrl) for s in shape)

    def to_ctrl(u: torch.Tensor) -> torch.Tensor:
        return F.interpolate(u.permute(3, 0, 1, 2)[None], size=cshape, mode="trilinear", align_corners=False)[0]

    def to_dense(p: torch.Tensor) -> torch.Tensor:
        return F.interpolate(p[None], size=shape, mode="trilinear", align_corners=False)[0].permute(1, 2, 3, 0)

    param = to_ctrl(init).clone().requires_grad_(True)  # (3, cx, cy, cz)
    opt = torch.optim.Adam([param], lr=lr)
    pts = torch.nonzero(weight > 0.5)
    ptsf = pts.float()
    mov = torch.cat(movs, 0)
    fix_p = torch.cat([fix] * len(movs), 0)[:, pts[:, 0], pts[:, 1], pts[:, 2]]
    # feature-voxel -> control-voxel coordinates (align_corners=False convention)
    scale = torch.tensor([cshape[k] / shape[k] for k in range(3)])
    pc = (ptsf + 0.5) * scale - 0.5
    for _ in range(iters):
        opt.zero_grad()
        ps = _smooth_cf(param, smooth)
        u_p = sample_points(ps, pc, padding="border").T  # (N, 3)
        q = ptsf + u_p
        loss = ((fix_p - sample_points(mov, q, padding="border")) ** 2).mean()
        dx = param[:, 1:] - param[:, :-1]
        dy = param[:, :, 1:] - param[:, :, :-1]
        dz = param[:, :, :, 1:] - param[:, :, :, :-1]
        reg = (dx**2).mean() + (dy**2).mean() + (dz**2).mean()
        (loss + lam * reg).backward()
        opt.step()
    with torch.no_grad():
        return to_dense(_smooth_cf(param.detach(), smooth))


def jacobian_det(u: torch.Tensor) -> torch.Tensor:
    """det of d(x + u)/dx for a (X,Y,Z,3) voxel field, central differences (one-sided at borders)."""
    g = [torch.gradient(u[..., a], dim=(0, 1, 2)) for a in range(3)]
    J = [[g[a][b] + (1.0 if a == b else 0.0) for b in range(3)] for a in range(3)]
    return (
        J[0][0] * (J[1][1] * J[2][2] - J[1][2] * J[2][1])
        - J[0][1] * (J[1][0] * J[2][2] - J[1][2] * J[2][0])
        + J[0][2] * (J[1][0] * J[2][1] - J[1][1] * J[2][0])
    )


def unfold(u: torch.Tensor, min_det: float = 0.3, max_iter: int = 20) -> tuple[torch.Tensor, int]:
    """Smooth (3^3 box, where needed first, then globally) until det J > ``min_det`` everywhere.

    Returns the field and the number of smoothing passes. Used as a last
    safeguard against folding: the trilinear upsampling of a level field
    with positive Jacobians is fold-free up to interpolation corners.
    """
    n = 0
    while n < max_iter and float(jacobian_det(u).min()) <= min_det:
        bad = (jacobian_det(u) <= min_det).float()[None, None]
        near = F.max_pool3d(bad, 5, stride=1, padding=2)[0, 0, ..., None]
        u = u * (1 - near) + smooth_field(u, 3, 1) * near if n < max_iter // 2 else smooth_field(u, 3, 1)
        n += 1
    return u, n


def _smooth_cf(p: torch.Tensor, times: int) -> torch.Tensor:
    """Box-smooth (3, X, Y, Z) ``times`` times with a 3^3 kernel (replicate borders)."""
    x = p[None]
    for _ in range(times):
        x = F.avg_pool3d(F.pad(x, [1] * 6, mode="replicate"), 3, stride=1)
    return x[0]


def _warp_with_grid(vol: torch.Tensor, u: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    from usnav.register.warp import _normalise

    pts = grid + u
    return F.grid_sample(vol[None], _normalise(pts, tuple(vol.shape[1:]))[None], align_corners=True, padding_mode="border")[0]


_ = warp_volume  # re-exported helper kept importable from here
