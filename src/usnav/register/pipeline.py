"""iUS-MRI registration pipeline: features, rigid/affine initialisation, deformable refinement.

Levels are block averages of the fixed grid: factor 4 (2 mm on the
challenge grid) for the deformable stage and factor 8 (4 mm) for the
coarse search. ``T_movvox_from_fixvox`` (affine, fine voxels) and the
deformable field ``v`` (level voxels, pull) combine exactly into the
output field::

    u(x) = (T x - x) + L @ v_fine(x),      L = T[:3, :3]

so the moving image is sampled at ``T (x + v_fine(x))`` = ``x + u(x)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from usnav.register.affine import fit_rigid_affine, scale_transform, warp_affine
from usnav.register.beam import beam_directions, fit_cone
from usnav.register.deformable import adam_refine, discrete_convex, unfold
from usnav.register.features import downsample, gaussian_blur, local_normalise, mind_ssc
from usnav.register.lc2 import lc2_refine
from usnav.register.warp import extend_field, identity_grid, resize_field, warp_volume

__all__ = ["RegistrationConfig", "RegistrationResult", "register_pair", "auto_cavity_mask", "warp_image", "compose_affine_field"]


@dataclass
class RegistrationConfig:
    """Settings (defaults tuned for 256^3 at 0.5 mm: levels at 2 mm and 4 mm)."""

    fine_factor: int = 4  # deformable level (block size in fixed voxels)
    coarse_factor: int = 8  # rigid search / coarse discrete level
    affine: bool = True
    max_rot_deg: float = 15.0
    max_shift_mm: float = 12.0
    coarse_radius: int = 3  # coarse discrete search: +- radius coarse voxels
    fine_radius: int = 2
    adam_iters: int = 120
    adam_ctrl: int = 0  # Adam control grid spacing in deformable-level voxels (0: from adam_ctrl_mm)
    adam_ctrl_mm: float = 4.0  # used when adam_ctrl == 0: rounded to whole level voxels (2 at 0.5 mm)
    adam_lambda: float = 0.05
    adam_lr: float = 0.3
    adam_smooth: int = 3  # 3^3 box passes over the Adam control grid
    coarse_smooth: int = 2  # 3^3 box passes per coupling step of the coarse (4 mm) discrete search
    discrete_fill: bool = True  # extrapolate discrete displacements into unsupported cells (else 0)
    threads: int = 2
    deformable: bool = True
    rigid: bool = True
    affine_iters: int = 20
    us_sigma: float = 1.0  # Gaussian blur of the iUS before MIND (voxels at half level resolution)
    erode: int = 1  # FOV erosion (level voxels)
    mind_floor: float = 0.0  # MIND variance floor (fraction of the mean), see features.mind_ssc
    min_jacobian: float = 0.3  # level-grid det J floor enforced by local smoothing (no folding)
    mind_factor: int = 0  # MIND computed on this block average of the fixed grid (0 = half the level)
    mind_dilation: int = 2
    feat_sigma: float = 0.0  # Gaussian blur of the level features (level voxels)
    dark_frac: float = 0.0  # leave out level voxels darker than this fraction of the FOV median (0 = off)
    lncc_weight: float = 0.0  # weight of locally normalised intensity channels (0 = MIND only)
    lncc_sigma: float = 3.0  # their window (voxels at half the level resolution)
    lc2_iters: int = 20  # LC2 refinement at half the grid resolution after the MIND stages (0 = off), see register.lc2
    lc2_lambda: float = 0.1
    lc2_lr: float = 0.6
    lc2_smooth: int = 4
    lc2_ctrl_mm: float = 4.0
    lc2_window: int = 7  # patch size (half-resolution voxels; 3.5 mm at 0.5 mm)
    lc2_us_sigma: float = 0.7  # Gaussian blur of the iUS and (matched) the MRIs in the LC2 stage, half-resolution voxels
    lc2_beam: bool = True  # beam-projected gradient channels when the FOV is a cone (register.beam.fit_cone)
    keep_stages: bool = False  # keep intermediate level fields in info["stages"] (debugging)


@dataclass
class RegistrationResult:
    """Output: ``disp_vox`` (X,Y,Z,3) float32 pull field on the fixed grid, voxel units."""

    disp_vox: np.ndarray
    T_movvox_from_fixvox: np.ndarray
    runtime_s: float
    info: dict = field(default_factory=dict)


def _normalise_mri(img: torch.Tensor) -> torch.Tensor:
    v = img[img > 0]
    if v.numel() == 0:
        return img
    lo = torch.quantile(v[:: max(1, v.numel() // 1_000_000)], 0.01)
    hi = torch.quantile(v[:: max(1, v.numel() // 1_000_000)], 0.995)
    return ((img - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1.5)


def _erode(mask: torch.Tensor, r: int) -> torch.Tensor:
    if r <= 0:
        return mask
    m = (~mask).float()[None, None]
    return F.max_pool3d(m, 2 * r + 1, stride=1, padding=r)[0, 0] < 0.5


def _dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    if r <= 0:
        return mask
    return F.max_pool3d(mask.float()[None, None], 2 * r + 1, stride=1, padding=r)[0, 0] > 0.5


def auto_cavity_mask(us_level: torch.Tensor, fov_level: torch.Tensor, voxel_mm: float) -> torch.Tensor:
    """Resection cavity guess on a level grid: large anechoic blobs with a bright rim (bool).

    A dark connected component (below 35% of the FOV median after smoothing,
    at least 0.25 cm^3) counts as cavity when the mean of its 2-voxel outer
    shell exceeds 1.3 times the FOV median. The result is dilated by one voxel.
    """
    from scipy.ndimage import label

    if fov_level.sum() < 10:
        return torch.zeros_like(fov_level)
    s = gaussian_blur(us_level, 1.0)
    med = float(s[fov_level].median())
    dark = ((s < 0.35 * med) & fov_level).numpy()
    lab, n = label(dark)
    out = np.zeros_like(dark)
    min_vox = 250.0 / voxel_mm**3
    for k in range(1, n + 1):
        comp = lab == k
        if comp.sum() < min_vox:
            continue
        ct = torch.from_numpy(comp)
        shell = _dilate(ct, 2) & ~ct & fov_level
        if shell.sum() > 0 and float(s[shell].mean()) > 1.3 * med:
            out |= comp
    return _dilate(torch.from_numpy(out), 1)


def _features(
    us: torch.Tensor,
    fov: torch.Tensor,
    movs: list[torch.Tensor],
    ff: int,
    us_sigma: float,
    floor: float = 0.0,
    lncc_weight: float = 0.0,
    lncc_sigma: float = 3.0,
    mind_factor: int = 0,
    mind_dilation: int = 2,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """MIND-SSC at half the level resolution (dilation 2, radius 1), block-pooled to the level.

    Returns fixed features (12, x, y, z), moving features, and the level FOV (bool).
    """
    half = mind_factor if mind_factor > 0 else ff // 2
    pool = ff // half
    us_h = downsample(us, half)
    fov_h = downsample(fov.float(), half) > 0.99
    mean_in = us_h[fov_h].mean() if fov_h.any() else us_h.mean()
    # fill outside the FOV with the FOV mean so the cone edge does not dominate the features
    us_h = torch.where(fov_h, us_h, mean_in)
    fix = downsample(mind_ssc(gaussian_blur(us_h, us_sigma), radius=1, dilation=mind_dilation, floor=floor), pool)
    mhs = [downsample(m, half) for m in movs]
    mf = [downsample(mind_ssc(m, radius=1, dilation=mind_dilation, floor=floor), pool) for m in mhs]
    if lncc_weight > 0:
        # locally normalised intensities; each MRI's sign follows its correlation with the iUS in the FOV
        ln_us = local_normalise(gaussian_blur(us_h, us_sigma), lncc_sigma)
        fix = torch.cat([fix, lncc_weight * downsample(ln_us, pool)[None]])
        out = []
        for m, f in zip(mhs, mf):
            ln_m = local_normalise(m, lncc_sigma)
            sgn = 1.0 if float((ln_m * ln_us)[fov_h].mean()) >= 0 else -1.0
            out.append(torch.cat([f, sgn * lncc_weight * downsample(ln_m, pool)[None]]))
        mf = out
    fov_l = downsample(fov.float(), ff) > 0.99
    return fix, mf, fov_l


def _crop_box(fov: torch.Tensor, align: int, margin: int) -> tuple[list[int], list[int]]:
    """FOV bounding box (fine voxels) grown by ``margin`` level cells and aligned to ``align``."""
    idx = torch.nonzero(fov)
    shape = fov.shape
    if len(idx) == 0:
        return [0, 0, 0], [s // align * align for s in shape]
    lo = [max(0, (int(idx[:, k].min()) // align - margin) * align) for k in range(3)]
    hi = [min(shape[k] // align * align, (int(idx[:, k].max()) // align + 1 + margin) * align) for k in range(3)]
    return lo, hi


def register_pair(
    fixed_us: np.ndarray,
    movings: list[np.ndarray],
    spacing_mm: np.ndarray | tuple[float, float, float] = (0.5, 0.5, 0.5),
    fov_mask: np.ndarray | None = None,
    cavity_mask: np.ndarray | None = None,
    config: RegistrationConfig | None = None,
) -> RegistrationResult:
    """Register one or more moving MRIs (same grid) to a fixed iUS volume.

    Args:
        fixed_us: (X, Y, Z) iUS intensities; the field of view is ``fixed_us > 0`` unless ``fov_mask`` is given.
        movings: list of (X, Y, Z) MRIs on the same grid (ceT1, T2, ...), used jointly.
        spacing_mm: (3,) voxel spacing of the shared grid.
        cavity_mask: optional (X, Y, Z) bool resection cavity; estimated from the iUS when None.

    The work is done on the FOV bounding box (plus a margin); the deformable
    field is extended outside it by replicate padding.

    Returns:
        :class:`RegistrationResult` with the (X, Y, Z, 3) float32 pull field in voxels.
    """
    cfg = config or RegistrationConfig()
    torch.set_num_threads(max(1, cfg.threads))
    t0 = time.perf_counter()
    info: dict = {}
    shape = tuple(int(s) for s in fixed_us.shape)
    ff, cf = cfg.fine_factor, cfg.coarse_factor
    sp = np.asarray(spacing_mm, dtype=np.float64)
    us_full = torch.from_numpy(np.ascontiguousarray(fixed_us, dtype=np.float32))
    fov_full = torch.from_numpy(np.asarray(fov_mask, dtype=bool)) if fov_mask is not None else us_full > 0
    lo, hi = _crop_box(fov_full, cf, 2)
    crop = tuple(slice(lo[k], hi[k]) for k in range(3))
    us = us_full[crop].contiguous()
    fov = fov_full[crop].contiguous()
    movs = [
        _normalise_mri(torch.from_numpy(np.ascontiguousarray(np.asarray(m)[crop], dtype=np.float32))) for m in movings
    ]
    us = us / max(float(us[fov].mean()) if fov.any() else 1.0, 1e-6)
    info["crop"] = [lo, hi]

    fix_f, movs_f, fov_f = _features(
        us, fov, movs, ff, cfg.us_sigma, cfg.mind_floor, cfg.lncc_weight, cfg.lncc_sigma, cfg.mind_factor,
        cfg.mind_dilation,
    )
    if cavity_mask is not None:
        cav_f = downsample(torch.from_numpy(np.asarray(cavity_mask, dtype=bool)[crop]).float(), ff) > 0
    else:
        cav_f = auto_cavity_mask(downsample(us, ff), fov_f, float(sp.mean() * ff))
        info["auto_cavity_voxels"] = int(cav_f.sum())
    w_f = _erode(fov_f, cfg.erode) & ~cav_f
    if cfg.dark_frac > 0:
        # acoustic shadows / anechoic regions carry no structure: leave them out of the losses
        us_l = gaussian_blur(downsample(us, ff), 1.0)
        dark = us_l < cfg.dark_frac * float(us_l[fov_f].median())
        info["dark_fraction"] = float((dark & w_f).sum()) / max(1.0, float(w_f.sum()))
        w_f = w_f & ~dark
    w_f = w_f.float()
    fix_c = downsample(fix_f, 2)
    movs_c = [downsample(m, 2) for m in movs_f]
    if cfg.feat_sigma > 0:
        # band-limit the features: with raw (noisy) features the SSD of trilinearly sampled
        # moving features drops at half-voxel shifts (interpolation blur), a ripple that biases
        # every stage towards half-voxel offsets and is as large as the alignment signal
        fix_f, fix_c = gaussian_blur(fix_f, cfg.feat_sigma), gaussian_blur(fix_c, cfg.feat_sigma)
        movs_f = [gaussian_blur(m, cfg.feat_sigma) for m in movs_f]
        movs_c = [gaussian_blur(m, cfg.feat_sigma) for m in movs_c]
    w_c = (downsample(w_f, 2) > 0.5).float()
    info["t_features_s"] = time.perf_counter() - t0

    # rigid + affine: channels of all moving images against repeated fixed features
    def cat(f, ms):
        return torch.cat([f] * len(ms)), torch.cat(ms)

    levels = [(*cat(fix_c, movs_c), w_c, float(cf)), (*cat(fix_f, movs_f), w_f, float(ff))]
    if cfg.rigid:
        T, ainfo = fit_rigid_affine(levels, sp, cfg.max_rot_deg, cfg.max_shift_mm, cfg.affine, cfg.affine_iters)
    else:
        T, ainfo = np.eye(4), {}
    info["affine"] = ainfo
    info["t_affine_s"] = time.perf_counter() - t0

    lshape = tuple(fix_f.shape[1:])
    v_f = torch.zeros(lshape + (3,))
    stages: dict[str, torch.Tensor] = {"affine": v_f.clone()}
    if cfg.deformable:
        Tf = torch.from_numpy(scale_transform(T, 1.0, ff)).float()
        movs_fw = [warp_affine(m, Tf) for m in movs_f]
        # discrete: a wide search on the coarse level, then a fine +-radius search on top
        Tc = torch.from_numpy(scale_transform(T, 1.0, cf)).float()
        movs_cw = [warp_affine(m, Tc) for m in movs_c]
        v_c = discrete_convex(
            fix_c, movs_cw, w_c, radius=cfg.coarse_radius, step=1, block=1, pool=3, fill=cfg.discrete_fill,
            smooth=cfg.coarse_smooth,
        )
        v_f = resize_field(v_c, lshape)
        stages["coarse"] = v_f.clone()
        info["t_coarse_discrete_s"] = time.perf_counter() - t0
        movs_fw2 = [warp_volume(m, v_f, padding="border") for m in movs_fw]
        v2 = discrete_convex(fix_f, movs_fw2, w_f, radius=cfg.fine_radius, step=1, block=2, fill=cfg.discrete_fill)
        v_f = v2 + warp_volume(v_f.permute(3, 0, 1, 2), v2, padding="border").permute(1, 2, 3, 0)
        stages["fine"] = v_f.clone()
        info["t_fine_discrete_s"] = time.perf_counter() - t0
        ctrl = cfg.adam_ctrl or max(1, int(round(cfg.adam_ctrl_mm / float(sp.mean() * ff))))
        info["adam_ctrl"] = ctrl
        v_f = adam_refine(
            fix_f, movs_fw, w_f, v_f, iters=cfg.adam_iters, lam=cfg.adam_lambda, lr=cfg.adam_lr, ctrl=ctrl,
            smooth=cfg.adam_smooth,
        )
        info["t_adam_s"] = time.perf_counter() - t0
        v_f, info["unfold_passes"] = unfold(v_f, cfg.min_jacobian)

    # back to the full grid: pad the level field (replicate), translate the affine
    full_l = tuple(s // ff for s in shape)
    lo_l = [lo[k] // ff for k in range(3)]

    def to_full(v: torch.Tensor) -> torch.Tensor:
        return resize_field(extend_field(v, lo_l, full_l), shape)

    O = np.eye(4)
    O[:3, 3] = lo
    T_full = O @ T @ np.linalg.inv(O)
    def total(v: torch.Tensor) -> np.ndarray:
        return compose_affine_field(T_full, to_full(v).numpy())

    disp = total(v_f)
    if cfg.keep_stages:
        info["stages"] = {k: total(v) for k, v in stages.items()}
        info["stages"]["mind"] = disp
    if cfg.deformable and cfg.lc2_iters > 0:
        movs_half = [_normalise_mri(downsample(torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32)), 2)) for m in movings]
        box = _crop_box(fov_full, cf, 0)  # the FOV bounding box (the residual is replicate-padded beyond it)
        beam_dir = None
        if cfg.lc2_beam:
            cone = fit_cone(fov_full.numpy())
            info["cone"] = cone.as_dict()
            if cone.accepted:
                half_shape = tuple((box[1][k] - box[0][k]) // 2 for k in range(3))
                beam_dir = beam_directions(cone.apex_vox, box[0], half_shape, 2)
        disp, linfo = lc2_refine(
            disp, fixed_us, fov_full.numpy(), movs_half, box, iters=cfg.lc2_iters, lam=cfg.lc2_lambda, lr=cfg.lc2_lr,
            smooth=cfg.lc2_smooth, ctrl=max(1, int(round(cfg.lc2_ctrl_mm / float(sp.mean() * 2)))),
            window=cfg.lc2_window, beam_dir=beam_dir, us_sigma=cfg.lc2_us_sigma,
        )
        info.update(linfo)
        info["t_lc2_s"] = time.perf_counter() - t0
    rt = time.perf_counter() - t0
    info["runtime_s"] = rt
    return RegistrationResult(disp, T_full, rt, info)


def compose_affine_field(T_movvox_from_fixvox: np.ndarray, v_vox: np.ndarray) -> np.ndarray:
    """u(x) = (T x - x) + L v(x) for v (X,Y,Z,3) fixed voxels -> (X,Y,Z,3) float32 (L = T[:3,:3])."""
    T = np.asarray(T_movvox_from_fixvox, dtype=np.float64)
    L = T[:3, :3].astype(np.float32)
    out = np.asarray(v_vox, dtype=np.float32) @ L.T
    A = (T[:3, :3] - np.eye(3)).astype(np.float32)
    X, Y, Z = out.shape[:3]
    ax = [np.arange(n, dtype=np.float32) for n in (X, Y, Z)]
    for k in range(3):
        out[..., k] += A[k, 0] * ax[0][:, None, None] + A[k, 1] * ax[1][None, :, None]
        out[..., k] += A[k, 2] * ax[2][None, None, :] + np.float32(T[k, 3])
    return out


def warp_image(moving: np.ndarray, disp_vox: np.ndarray) -> np.ndarray:
    """Moving (X,Y,Z) sampled at x + u(x) (trilinear, 0 outside) -> (X,Y,Z) float32."""
    m = torch.from_numpy(np.ascontiguousarray(moving, dtype=np.float32))[None]
    d = torch.from_numpy(np.ascontiguousarray(disp_vox, dtype=np.float32))
    return warp_volume(m, d)[0].numpy()
