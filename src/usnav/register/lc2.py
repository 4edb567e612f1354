"""LC2 refinement: linear correlation of linear combination (Wein et al. 2008, Fuerst et al. 2014).

In each patch the iUS is modelled as a linear combination of the MRI
intensities and their gradient magnitudes (ceT1, |grad ceT1|, T2, |grad T2|,
plus a constant). When the beam direction ``d`` is known (a sector field of
view, see register.beam) the gradient channels are ``|d . grad M|`` instead:
a boundary echoes when the beam meets it head-on, not when it runs along it
(the reflection term of Wein et al. 2008). The similarity is the share of the iUS variance that the
best such combination explains, pooled over patches with the iUS variance
as weight: ``sum_p c_p^T C_p^-1 c_p / sum_p var_p``, in [0, 1].

Unlike MIND, the measure models the bright specular echoes at tissue
boundaries (the gradient channels) and the per-patch echogenicity of each
tissue, so a field started at the true deformation stays close to it
(development cases 201/203/205: 0.50 mm after 60 iterations, MIND 2.1-2.6 mm).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from usnav.register.deformable import _smooth_cf
from usnav.register.features import downsample, gaussian_blur
from usnav.register.warp import extend_field, resize_field, warp_volume

__all__ = ["lc2_similarity", "lc2_refine"]


def lc2_similarity(fixed: torch.Tensor, channels: torch.Tensor, weight: torch.Tensor, window: int, stride: int) -> torch.Tensor:
    """Patch-pooled LC2 of ``fixed`` (X,Y,Z) explained by ``channels`` (K,X,Y,Z) inside ``weight`` (X,Y,Z).

    Patches are ``window``^3 voxels every ``stride`` voxels; a patch counts
    when more than half of it lies inside the weight mask.
    """
    w = weight[None]

    def mean(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool3d((x * w)[None], window, stride=stride)[0]

    W = mean(torch.ones_like(fixed)[None])[0].clamp(min=1e-6)
    ok = (W > 0.5).float()
    mf = mean(fixed[None])[0] / W
    var_f = mean((fixed * fixed)[None])[0] / W - mf**2
    mm = mean(channels) / W
    K = channels.shape[0]
    C = [[None] * K for _ in range(K)]
    for a in range(K):
        for b in range(a, K):
            C[a][b] = C[b][a] = mean((channels[a] * channels[b])[None])[0] / W - mm[a] * mm[b]
    cov = torch.stack([mean((channels[a] * fixed)[None])[0] / W - mm[a] * mf for a in range(K)], -1)
    Cm = torch.stack([torch.stack(row, -1) for row in C], -2) + 1e-4 * torch.eye(K)
    beta = torch.linalg.solve(Cm, cov[..., None])[..., 0]
    explained = (beta * cov).sum(-1)
    return (explained * ok).sum() / (var_f * ok).sum().clamp(min=1e-9)


def _edge_strength(m: torch.Tensor, beam_dir: torch.Tensor | None = None) -> torch.Tensor:
    """|grad m|, or |d . grad m| for unit beam directions ``beam_dir`` (3, X, Y, Z); smoothed at 0."""
    g = torch.gradient(m, dim=(0, 1, 2))
    if beam_dir is None:
        return torch.sqrt(g[0] ** 2 + g[1] ** 2 + g[2] ** 2 + 1e-6)
    return torch.sqrt((g[0] * beam_dir[0] + g[1] * beam_dir[1] + g[2] * beam_dir[2]) ** 2 + 1e-6)


def lc2_refine(
    disp_vox: np.ndarray,
    us: np.ndarray,
    fov: np.ndarray,
    movings_half: list[torch.Tensor],
    box: tuple[list[int], list[int]],
    iters: int = 60,
    lam: float = 1.0,
    lr: float = 0.2,
    ctrl: int = 4,
    smooth: int = 4,
    window: int = 7,
    stride: int = 3,
    us_sigma: float = 1.0,
    beam_dir: torch.Tensor | None = None,
) -> tuple[np.ndarray, dict]:
    """Refine a full-grid pull field (fine voxels) by maximising LC2 at half the grid resolution.

    Args:
        disp_vox: (X,Y,Z,3) initial pull field on the fixed grid (fine voxels); not modified.
        us, fov: (X,Y,Z) fixed iUS and its field-of-view mask.
        movings_half: normalised MRIs on the same grid, 2x2x2 block-averaged (X/2, Y/2, Z/2).
        box: (lo, hi) fine-voxel bounds (multiples of 2) of the region to work on.
        ctrl: control-grid spacing in half-resolution voxels; ``smooth`` 3^3 box passes over it.
        lam: diffusion weight on the residual control displacements.
        beam_dir: optional (3, X/2, Y/2, Z/2) unit beam directions over the box at half resolution
            (``register.beam.beam_directions(apex, lo, shape, 2)``); the gradient channels become |d . grad M|.

    Returns the refined field (X,Y,Z,3) float32 and ``{"lc2_start", "lc2_end"}``.
    """
    lo, hi = box
    crop = tuple(slice(lo[k], hi[k]) for k in range(3))
    fov1 = downsample(torch.from_numpy(np.ascontiguousarray(fov[crop])).float(), 2) > 0.99
    us1 = downsample(torch.from_numpy(np.ascontiguousarray(us[crop], dtype=np.float32)), 2)
    if not bool(fov1.any()):
        return np.asarray(disp_vox, dtype=np.float32), {"lc2_start": 0.0, "lc2_end": 0.0}
    inside_mean = us1[fov1].mean()
    us1 = torch.where(fov1, us1 / inside_mean, torch.ones(()))
    if us_sigma > 0:
        us1 = gaussian_blur(us1, us_sigma)
    w1 = fov1.float()
    mov1 = torch.stack(list(movings_half))
    if us_sigma > 0:
        # the same blur on the MRIs (once, before warping): an unblurred MRI cannot explain a blurred
        # iUS, and the fit would otherwise reward warps that imitate the blur
        mov1 = gaussian_blur(mov1, us_sigma)
    shape1 = tuple(us1.shape)
    u_crop = torch.from_numpy(np.ascontiguousarray(disp_vox[crop], dtype=np.float32)).permute(3, 0, 1, 2)
    offset = torch.tensor([lo[k] / 2 for k in range(3)], dtype=torch.float32)[:, None, None, None]
    # box voxel -> moving half-resolution voxel displacement (the box starts at lo / 2 of the moving grid)
    base = offset + downsample(u_crop, 2) / 2
    cshape = tuple(max(2, n // ctrl) for n in shape1)
    param = torch.zeros((3,) + cshape, requires_grad=True)
    opt = torch.optim.Adam([param], lr=lr)

    def dense(p: torch.Tensor) -> torch.Tensor:
        return F.interpolate(_smooth_cf(p, smooth)[None], size=shape1, mode="trilinear", align_corners=False)[0]

    def similarity(r: torch.Tensor) -> torch.Tensor:
        warped = warp_volume(mov1, (base + r).permute(1, 2, 3, 0), padding="border")
        chans = torch.cat([warped, torch.stack([_edge_strength(x, beam_dir) for x in warped])])
        return lc2_similarity(us1, chans, w1, window, stride)

    info = {}
    for it in range(iters):
        opt.zero_grad()
        s = similarity(dense(param))
        reg = sum((torch.diff(param, dim=d) ** 2).mean() for d in (1, 2, 3))
        (-s + lam * reg).backward()
        opt.step()
        if it == 0:
            info["lc2_start"] = float(s.detach())
    with torch.no_grad():
        r = dense(param)
        info["lc2_end"] = float(similarity(r))
        # extend the residual outside the box by replicate padding (no step at the box faces)
        full = tuple(n // 2 for n in disp_vox.shape[:3])
        r_full = extend_field(r.permute(1, 2, 3, 0), [lo[k] // 2 for k in range(3)], full)
        r_fine = resize_field(r_full, tuple(disp_vox.shape[:3]))
    out = np.asarray(disp_vox, dtype=np.float32) + r_fine.numpy()
    return out, info
