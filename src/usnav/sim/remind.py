"""Synthetic ReMIND2Reg-like cases: pre-operative ceT1/T2, brain shift, post-resection 3D iUS.

Anatomy comes from the MNI152 2009 templates shipped in the nilearn wheel
(T1, grey/white matter probability maps, brain mask; loaded offline). Per
case (all randomness from ``numpy.random.default_rng([seed, case])``):

1. Subject: random affine of MNI space (scale 0.92-1.08 per axis, +-6 deg,
   +-4 mm) plus a smooth random warp (about 2 mm) -> patient ("world") mm.
2. Tumour: irregular sphere (radius 7-14 mm) 15-35 mm deep in the cerebrum,
   necrotic core, enhancing rim (bright on ceT1), oedema (bright on T2).
3. Craniotomy above the tumour, a 3D convex probe on the dura looking into
   the brain (cone half angle 30-38 deg, depth 3-83 mm).
4. Grid: 256^3 voxels at 0.5 mm, oblique (random rotation about the cone
   axis, tilted up to 20 deg), centred in the cone: all volumes share it.
5. Brain shift ``u`` (pull, fixed voxels): :mod:`usnav.sim.brain_shift`.
6. iUS of the post-resection brain: tissue at ``x + u(x)`` rendered in beam
   space (r, theta_x, theta_y): complex Gaussian scatterers (one fixed field
   per case) weighted by tissue echogenicity, specular echoes from
   impedance steps along the beam, a separable Gaussian PSF (axial 0.3 mm,
   lateral/elevation in angle, so it widens with depth), attenuation with
   partial TGC and shadowing behind strong reflectors, envelope detection,
   log compression (50 dB), then scan conversion onto the grid (0 outside
   the cone). The resection cavity is anechoic with a bright rim.
   This is a compact 3D renderer of its own (the simulator's 2D frame
   renderer did not exist when this was written).
7. Landmarks: >= 15 pairs at corner-like anatomy (structure tensor maxima of
   the post-operative tissue image) inside the cone, outside the cavity;
   ``x_m = x_f + u(x_f)`` with cubic-spline interpolation of ``u``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from usnav.io import learn2reg as l2r
from usnav.metrics.remind import interpolate_displacement
from usnav.register.warp import identity_grid, sample_points
from usnav.sim.brain_shift import coarse_centres_vox, make_brain_shift, upsample_shift

__all__ = [
    "SimConfig", "CaseTruth", "simulate_case", "write_case", "simulate_dataset", "load_mni", "read_truth_field",
    "truth_shift_name",
]


@dataclass
class SimConfig:
    """Grid and renderer sizes (defaults = challenge grid)."""

    shape: tuple[int, int, int] = (256, 256, 256)
    spacing_mm: float = 0.5
    shift_factor: int = 4  # coarse brain-shift grid factor
    n_r: int = 320
    n_ang: int = 128
    r_min_mm: float = 3.0
    r_max_mm: float = 83.0
    dynamic_range_db: float = 50.0
    n_landmarks: int = 20
    min_landmarks: int = 15
    clean_us: bool = False  # also render the iUS without speckle (reference for despeckling / oracle checks)


@dataclass
class CaseTruth:
    """Everything of one synthetic case (arrays on the fixed grid, stored axes)."""

    case: int
    affine: np.ndarray  # (4,4) T_world_from_vox
    us: np.ndarray  # (X,Y,Z) uint8, post-resection iUS (fixed)
    cet1: np.ndarray  # (X,Y,Z) float32, pre-operative
    t2: np.ndarray  # (X,Y,Z) float32, pre-operative
    shift_coarse: np.ndarray  # (x,y,z,3) float32 fine voxels, pull, at coarse centres
    disp_vox: np.ndarray  # (X,Y,Z,3) float32 ground-truth pull field (upsampled shift_coarse)
    landmarks_fixed: np.ndarray  # (N,3) voxels
    landmarks_moving: np.ndarray  # (N,3) voxels
    fov_mask: np.ndarray  # (X,Y,Z) bool, inside the US cone
    cavity_mask: np.ndarray  # (X,Y,Z) bool, resection cavity (fixed grid)
    info: dict
    us_clean: np.ndarray | None = None  # (X,Y,Z) uint8, the same iUS without speckle (SimConfig.clean_us)


# ----------------------------------------------------------------------------- anatomy


@lru_cache(maxsize=1)
def load_mni() -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """MNI152 (T1, GM, WM, brain mask) as a (4, X, Y, Z) float32 tensor, its affine, and the mask's EDT (mm)."""
    from nilearn import datasets
    from scipy.ndimage import distance_transform_edt

    t1 = datasets.load_mni152_template(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1)
    wm = datasets.load_mni152_wm_template(resolution=1)
    mask = datasets.load_mni152_brain_mask(resolution=1)
    arrs = [np.asarray(im.get_fdata(), dtype=np.float32) for im in (t1, gm, wm, mask)]
    arrs[0] = arrs[0] / max(float(np.percentile(arrs[0][arrs[3] > 0.5], 99)), 1e-6)
    vol = torch.from_numpy(np.stack(arrs))
    edt = distance_transform_edt(arrs[3] > 0.5).astype(np.float32)
    return vol, np.asarray(t1.affine, dtype=np.float64), edt


def _rot(axis: np.ndarray, angle: float) -> np.ndarray:
    a = axis / np.linalg.norm(axis)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def _tilt(v: np.ndarray, max_deg: float, rng: np.random.Generator) -> np.ndarray:
    v = v / np.linalg.norm(v)
    perp = np.cross(v, rng.standard_normal(3))
    perp /= np.linalg.norm(perp)
    return _rot(perp, np.deg2rad(rng.uniform(0, max_deg))) @ v


def _orthonormal_frame(a: np.ndarray, spin: float) -> np.ndarray:
    """3x3 with columns (e1, e2, a), e1/e2 spun by ``spin`` rad about a."""
    a = a / np.linalg.norm(a)
    h = np.array([1.0, 0, 0]) if abs(a[0]) < 0.9 else np.array([0, 1.0, 0])
    e1 = np.cross(a, h)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(a, e1)
    c, s = np.cos(spin), np.sin(spin)
    return np.stack([c * e1 + s * e2, -s * e1 + c * e2, a], axis=1)


class Anatomy:
    """Patient anatomy in world mm: warped MNI tissue maps plus a tumour."""

    def __init__(self, rng: np.random.Generator):
        vol, T_mnivox_inv, edt = load_mni()
        self.vol = vol
        self.T_mni_from_mnivox = T_mnivox_inv
        self.T_mnivox_from_mni = np.linalg.inv(T_mnivox_inv)
        self.edt = edt
        # subject affine: MNI <- patient
        S = np.diag(rng.uniform(0.92, 1.08, 3))
        R = _rot(rng.standard_normal(3), np.deg2rad(rng.uniform(0, 6)))
        self.T_mni_from_world = np.eye(4)
        self.T_mni_from_world[:3, :3] = R @ S
        self.T_mni_from_world[:3, 3] = rng.uniform(-4, 4, 3)
        self.T_world_from_mni = np.linalg.inv(self.T_mni_from_world)
        # smooth warp (MNI mm), on a coarse 8 mm grid over the template
        from scipy.ndimage import gaussian_filter

        cs = [int(np.ceil(s / 8)) + 1 for s in vol.shape[1:]]
        w = np.stack([gaussian_filter(rng.standard_normal(cs), 1.2) for _ in range(3)])
        w *= 2.0 / max(np.abs(w).max(), 1e-6)
        self.warp = torch.from_numpy(w.astype(np.float32))  # (3, cx, cy, cz) mm at mnivox/8
        # tumour (chosen in MNI space, placed in world)
        mask = vol[3].numpy() > 0.5
        ijk = np.argwhere(mask & (edt >= 18) & (edt <= 35))
        mni = ijk @ self.T_mni_from_mnivox[:3, :3].T + self.T_mni_from_mnivox[:3, 3]
        ok = (mni[:, 2] > -5) & (np.abs(mni[:, 0]) > 15)
        ijk, mni = ijk[ok], mni[ok]
        k = rng.integers(len(ijk))
        depth_mm = float(edt[tuple(ijk[k])])
        self.tumour_radius_mm = float(rng.uniform(7.0, min(14.0, depth_mm - 6.0)))
        c_mni = mni[k]
        self.tumour_centre = (self.T_world_from_mni[:3, :3] @ c_mni + self.T_world_from_mni[:3, 3]).astype(np.float64)
        # shape noise: a few random plane waves
        self.waves_k = rng.standard_normal((5, 3)) * 1.3
        self.waves_phi = rng.uniform(0, 2 * np.pi, 5)
        self.waves_a = rng.uniform(0.03, 0.08, 5)
        # craniotomy: march outwards from the tumour through the brain surface
        centre_mni = np.array([0.0, -18.0, 18.0])
        out = c_mni - centre_mni
        out = _tilt(out, 15.0, rng)
        pos = c_mni.copy()
        for _ in range(200):
            pos = pos + out * 1.0
            v = np.rint(self.T_mnivox_from_mni[:3, :3] @ pos + self.T_mnivox_from_mni[:3, 3]).astype(int)
            if np.any(v < 0) or np.any(v >= mask.shape) or not mask[tuple(v)]:
                break
        surf_world = self.T_world_from_mni[:3, :3] @ pos + self.T_world_from_mni[:3, 3]
        d = surf_world - self.tumour_centre
        self.outward = d / np.linalg.norm(d)
        self.surface = surf_world

    # -- sampling ---------------------------------------------------------------
    def tumour_sd(self, p: torch.Tensor) -> torch.Tensor:
        """Signed distance-like value (mm) to the tumour boundary, negative inside. p: (N,3) world mm."""
        c = torch.as_tensor(self.tumour_centre, dtype=p.dtype)
        rel = p - c
        d = rel.norm(dim=-1)
        r = self.tumour_radius_mm
        k = torch.as_tensor(self.waves_k, dtype=p.dtype) / r
        ph = rel @ k.T + torch.as_tensor(self.waves_phi, dtype=p.dtype)
        reff = r * (1.0 + (torch.sin(ph) * torch.as_tensor(self.waves_a, dtype=p.dtype)).sum(-1))
        return d - reff

    def sample(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        """Tissue at world points p (N,3) float32: t1, gm, wm, csf, brain (N,) and sd (tumour, mm)."""
        A = torch.as_tensor(self.T_mni_from_world, dtype=p.dtype)
        q = p @ A[:3, :3].T + A[:3, 3]
        V = torch.as_tensor(self.T_mnivox_from_mni, dtype=p.dtype)
        v = q @ V[:3, :3].T + V[:3, 3]
        wv = sample_points(self.warp, v / 8.0, padding="border").T  # (N,3) mm
        v = v + wv @ V[:3, :3].T
        s = sample_points(self.vol, v)
        t1, gm, wm, brain = s[0], s[1], s[2], s[3].clamp(0, 1)
        tiss = (gm + wm).clamp(min=1e-6)
        over = (tiss > brain).to(p.dtype)
        gm = gm * (over * brain / tiss + (1 - over))
        wm = wm * (over * brain / tiss + (1 - over))
        csf = (brain - gm - wm).clamp(min=0)
        return {"t1": t1, "gm": gm, "wm": wm, "csf": csf, "brain": brain, "sd": self.tumour_sd(p)}


def _chunked(fn, pts: torch.Tensor, chunk: int = 2_000_000) -> dict[str, torch.Tensor]:
    outs: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(pts), chunk):
        for k, v in fn(pts[i : i + chunk]).items():
            outs.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in outs.items()}


def _mri_contrasts(t: dict[str, torch.Tensor], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(ceT1, T2) intensities (arbitrary units ~0-1000) from tissue maps incl. tumour."""
    sd = t["sd"]
    inside = torch.sigmoid(-sd / 0.5)
    rim = torch.exp(-(((sd + 1.2) / 1.0) ** 2))  # enhancing rim just inside the boundary
    core = torch.sigmoid(-(sd + 3.0) / 0.7)
    oedema = torch.exp(-(sd.clamp(min=0) / 6.0)) * (1 - inside) * (t["brain"] > 0.3)
    base1 = 0.65 * t["t1"] + 0.35 * (0.12 * t["csf"] + 0.55 * t["gm"] + 0.85 * t["wm"])
    cet1 = base1 * (1 - 0.2 * oedema)
    cet1 = cet1 * (1 - inside) + inside * (0.35 * (1 - core) + 0.22 * core)
    cet1 = cet1 + 0.9 * rim * t["brain"].clamp(0.3, 1)
    t2 = 1.0 * t["csf"] + 0.55 * t["gm"] + 0.38 * t["wm"]
    t2 = t2 * (1 - oedema) + oedema * 0.78 * t["brain"]
    t2 = t2 * (1 - inside) + inside * (0.6 + 0.3 * core)
    n = len(sd)
    cet1 = (cet1 + 0.015 * torch.randn(n, generator=gen)).clamp(min=0) * 1000
    t2 = (t2 + 0.015 * torch.randn(n, generator=gen)).clamp(min=0) * 1000
    return cet1, t2


# ----------------------------------------------------------------------------- ultrasound


@dataclass
class Probe:
    apex: np.ndarray  # world mm
    frame: np.ndarray  # 3x3 columns e1, e2, axis
    half_angle: float  # rad
    r_min: float
    r_max: float

    def beam_points(self, n_r: int, n_ang: int) -> torch.Tensor:
        """(n_r, n_ang, n_ang, 3) world mm of beam samples (r, theta_x, theta_y)."""
        r = torch.linspace(self.r_min, self.r_max, n_r, dtype=torch.float64)
        th = torch.linspace(-self.half_angle, self.half_angle, n_ang, dtype=torch.float64)
        tx, ty = torch.meshgrid(torch.tan(th), torch.tan(th), indexing="ij")
        d = torch.stack([tx, ty, torch.ones_like(tx)], -1)
        d = d / d.norm(dim=-1, keepdim=True)
        dw = d @ torch.as_tensor(self.frame).T  # (a, a, 3)
        p = torch.as_tensor(self.apex) + r[:, None, None, None] * dw[None]
        return p.float()

    def beam_coords(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """World points (N,3) -> (r, theta_x, theta_y, inside cone)."""
        rel = (p.double() - torch.as_tensor(self.apex)) @ torch.as_tensor(self.frame)
        r = rel.norm(dim=-1)
        z = rel[:, 2].clamp(min=1e-6)
        tx = torch.atan(rel[:, 0] / z)
        ty = torch.atan(rel[:, 1] / z)
        inside = (
            (rel[:, 2] > 0)
            & (r >= self.r_min)
            & (r <= self.r_max)
            & (tx**2 + ty**2 <= self.half_angle**2)
        )
        return r.float(), tx.float(), ty.float(), inside


def _gauss_kernel(sigma: float) -> torch.Tensor:
    h = max(1, int(np.ceil(3 * sigma)))
    x = torch.arange(-h, h + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _conv_axis(x: torch.Tensor, k: torch.Tensor, axis: int) -> torch.Tensor:
    """Convolve a real (A,B,C) tensor along ``axis`` with 1D kernel (zero padded)."""
    xm = x.movedim(axis, -1)
    shp = xm.shape
    y = torch.nn.functional.conv1d(xm.reshape(-1, 1, shp[-1]), k.view(1, 1, -1), padding=len(k) // 2)
    return y.reshape(shp).movedim(-1, axis)


def render_us(
    anatomy: Anatomy,
    probe: Probe,
    affine: np.ndarray,
    disp_fine: torch.Tensor,
    cfg: SimConfig,
    gen: torch.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Post-resection B-mode volume on the fixed grid -> (us uint8 (X,Y,Z), fov mask bool, clean us or None).

    With ``cfg.clean_us`` the same volume is also rendered without speckle: the
    scatterer field is replaced by its RMS envelope after the PSF
    (``sqrt(2 * sum(psf^2)) * echo``), the specular part, attenuation,
    shadowing and log compression (same reference level) are kept, and the
    electronic noise is its mean. No extra random numbers are drawn, so the
    speckled volume is the same with or without it.
    """
    shape = cfg.shape
    Ainv = torch.as_tensor(np.linalg.inv(affine), dtype=torch.float32)
    A = torch.as_tensor(affine, dtype=torch.float32)
    pb = probe.beam_points(cfg.n_r, cfg.n_ang).reshape(-1, 3)
    xb = pb @ Ainv[:3, :3].T + Ainv[:3, 3]  # fixed voxels
    u = sample_points(disp_fine, xb, padding="border").T
    y = xb + u
    pw = y @ A[:3, :3].T + A[:3, 3]  # pre-operative world position of the tissue
    t = _chunked(anatomy.sample, pw)
    sd = t["sd"]
    cavity = torch.sigmoid(-sd / 0.4)
    rim = torch.exp(-(((sd - 0.6) / 0.7) ** 2))
    tissue = 1 - cavity
    echo = (0.05 * t["csf"] + 0.55 * t["gm"] + 0.85 * t["wm"]) * tissue + 0.02 * cavity
    echo = echo + 0.06 * (1 - t["brain"]) * tissue  # dura/saline above the brain: weak
    imp = (0.15 * t["csf"] + 0.6 * t["gm"] + 0.8 * t["wm"]) * tissue + 1.6 * rim
    echo = echo + 1.4 * rim
    n_r, n_a = cfg.n_r, cfg.n_ang
    echo = echo.reshape(n_r, n_a, n_a)
    imp = imp.reshape(n_r, n_a, n_a)
    dr = (probe.r_max - probe.r_min) / (n_r - 1)
    # specular echoes: impedance steps along the beam
    k_s = _gauss_kernel(0.6 / dr)
    imp_s = _conv_axis(imp, k_s, 0)
    spec = torch.zeros_like(imp_s)
    spec[1:-1] = (imp_s[2:] - imp_s[:-2]).abs() / (2 * dr)
    spec = spec.clamp(max=2.0)
    # scatterers (fixed complex Gaussian field) and coherent specular part
    re = torch.randn(echo.shape, generator=gen) * echo + 0.8 * spec
    im = torch.randn(echo.shape, generator=gen) * echo
    # PSF: axial 0.3 mm, lateral/elevation 0.9 mm at 50 mm (constant in angle)
    k_ax = _gauss_kernel(0.3 / dr)
    dth = 2 * probe.half_angle / (n_a - 1)
    k_lat = _gauss_kernel(np.arctan(0.9 / 50.0) / dth)

    def psf(x: torch.Tensor) -> torch.Tensor:
        for ax, k in ((0, k_ax), (1, k_lat), (2, k_lat)):
            x = _conv_axis(x, k, ax)
        return x

    re, im = psf(re), psf(im)
    env = torch.sqrt(re**2 + im**2)
    # attenuation after TGC and shadowing behind strong reflectors
    r = torch.linspace(probe.r_min, probe.r_max, n_r)
    trans = torch.exp(-0.35 * torch.cumsum(spec * dr, dim=0))
    gain = torch.exp(-0.006 * r)[:, None, None] * trans
    env = env * gain
    env = env + 0.004 * torch.rand(env.shape, generator=gen)  # electronic noise floor
    ref = torch.quantile(env.reshape(-1)[:: max(1, env.numel() // 2_000_000)], 0.995)

    def log_compress(e: torch.Tensor) -> torch.Tensor:
        db = 20 * torch.log10(e / ref + 1e-9)
        return ((db + cfg.dynamic_range_db) / cfg.dynamic_range_db).clamp(0, 1) * 255.0

    bmode = log_compress(env)
    bmode_clean = None
    if cfg.clean_us:
        energy = float((k_ax**2).sum() * (k_lat**2).sum() ** 2)
        rc = psf(echo * np.sqrt(2.0 * energy) + 0.8 * spec)
        bmode_clean = log_compress(rc.abs() * gain + 0.002)
    # scan conversion onto the fixed grid
    bmodes = torch.stack([bmode, bmode_clean]) if bmode_clean is not None else bmode[None]
    out = torch.zeros((len(bmodes), int(np.prod(shape))), dtype=torch.float32)
    fov = torch.zeros(int(np.prod(shape)), dtype=torch.bool)
    grid = identity_grid(shape).reshape(-1, 3)
    chunk = 4_000_000
    ha = probe.half_angle
    for i in range(0, len(grid), chunk):
        pw_c = grid[i : i + chunk] @ A[:3, :3].T + A[:3, 3]
        rr, tx, ty, ins = probe.beam_coords(pw_c)
        idx = torch.stack(
            [(rr - probe.r_min) / dr, (tx + ha) / dth, (ty + ha) / dth], -1
        )
        vals = sample_points(bmodes, idx)
        out[:, i : i + chunk] = torch.where(ins, vals, torch.zeros_like(vals))
        fov[i : i + chunk] = ins

    def to_u8(x: torch.Tensor) -> np.ndarray:
        return x.reshape(shape).round().clamp(0, 255).to(torch.uint8).numpy()

    return to_u8(out[0]), fov.reshape(shape).numpy(), (to_u8(out[1]) if len(out) > 1 else None)


# ----------------------------------------------------------------------------- landmarks


def _pick_landmarks(
    anatomy: Anatomy,
    probe: Probe,
    affine: np.ndarray,
    shift_coarse: np.ndarray,
    cfg: SimConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """(N,3) fixed-grid voxel landmarks at corner-like post-operative anatomy inside the cone."""
    from scipy.ndimage import gaussian_filter, maximum_filter

    f = cfg.shift_factor
    xc = coarse_centres_vox(cfg.shape, f)
    cs = xc.shape[:3]
    y = torch.from_numpy((xc + shift_coarse).reshape(-1, 3).astype(np.float32))
    A = torch.as_tensor(affine, dtype=torch.float32)
    t = _chunked(anatomy.sample, y @ A[:3, :3].T + A[:3, 3])
    img = (t["wm"] + 0.5 * t["gm"]).reshape(cs).numpy() * (t["sd"].reshape(cs).numpy() > 0)
    img = gaussian_filter(img, 0.7)
    g = np.gradient(img)
    J = np.empty(cs + (3, 3), dtype=np.float64)
    for a in range(3):
        for b in range(a, 3):
            J[..., a, b] = J[..., b, a] = gaussian_filter(g[a] * g[b], 1.2)
    lam_min = np.linalg.eigvalsh(J)[..., 0]
    pw = torch.from_numpy(xc.reshape(-1, 3).astype(np.float32)) @ A[:3, :3].T + A[:3, 3]
    r, tx, ty, _ = probe.beam_coords(pw)
    margin = np.deg2rad(5.0)
    ok = (
        (r.numpy() > 12.0)
        & (r.numpy() < probe.r_max - 10.0)
        & ((tx**2 + ty**2).numpy() < (probe.half_angle - margin) ** 2)
    ).reshape(cs)
    ok &= (t["brain"].reshape(cs).numpy() > 0.5) & (t["sd"].reshape(cs).numpy() > 1.0)
    spacing_c = cfg.spacing_mm * f
    peaks = (lam_min == maximum_filter(lam_min, size=3)) & ok & (lam_min > 0)
    cand = np.argwhere(peaks)
    order = np.argsort(-lam_min[peaks])
    cand = cand[order]
    chosen: list[np.ndarray] = []
    for min_dist_mm in (10.0, 7.0, 5.0, 3.0):
        chosen = []
        for c in cand:
            if all(np.linalg.norm((c - q) * spacing_c) >= min_dist_mm for q in chosen):
                chosen.append(c)
            if len(chosen) >= cfg.n_landmarks:
                break
        if len(chosen) >= cfg.min_landmarks:
            break
    if len(chosen) < cfg.min_landmarks:  # fall back to random tissue points in the cone
        extra = np.argwhere(ok)
        rng.shuffle(extra)
        chosen.extend(extra[: cfg.min_landmarks - len(chosen)])
    pts = np.array([xc[tuple(c)] for c in chosen], dtype=np.float64)
    return pts + rng.uniform(-0.25, 0.25, pts.shape) * f


# ----------------------------------------------------------------------------- case


def simulate_case(case: int, seed: int = 0, cfg: SimConfig | None = None) -> CaseTruth:
    """Simulate one case deterministically from (seed, case)."""
    cfg = cfg or SimConfig()
    rng = np.random.default_rng([int(seed), int(case)])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    anat = Anatomy(rng)
    shape = cfg.shape
    # probe on the dura above the tumour, looking into the brain
    axis = -anat.outward
    apex = anat.surface - 3.0 * axis
    half_angle = np.deg2rad(rng.uniform(30.0, 38.0))
    probe = Probe(apex, _orthonormal_frame(axis, rng.uniform(0, 2 * np.pi)), half_angle, cfg.r_min_mm, cfg.r_max_mm)
    # oblique grid centred in the cone
    ext = np.asarray(shape, dtype=np.float64) * cfg.spacing_mm
    grid_axis = _tilt(axis, 20.0, rng)
    R = _orthonormal_frame(grid_axis, rng.uniform(0, 2 * np.pi))
    c_depth = min(0.5 * (cfg.r_min_mm + cfg.r_max_mm) + 2.0, 0.5 * float(ext.min()) - 8.0)
    centre = apex + axis * c_depth
    affine = np.eye(4)
    affine[:3, :3] = R * cfg.spacing_mm
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    # brain shift on the coarse grid, weighted inside brain and cone
    f = cfg.shift_factor
    xc = coarse_centres_vox(shape, f)
    cs = xc.shape[:3]
    pw_c = torch.from_numpy((xc.reshape(-1, 3) @ affine[:3, :3].T + affine[:3, 3]).astype(np.float32))
    tc = _chunked(anat.sample, pw_c)
    _, _, _, in_cone = probe.beam_coords(pw_c)
    weight = ((tc["brain"] > 0.5) & in_cone & (tc["sd"] > 0)).reshape(cs).numpy()
    gravity = _tilt(axis, 20.0, rng)
    shift_coarse, params, stats = make_brain_shift(
        rng, shape, affine, gravity, anat.surface, anat.tumour_centre, anat.tumour_radius_mm, weight, factor=f
    )
    disp = upsample_shift(shift_coarse, shape)
    disp_t = torch.from_numpy(disp).permute(3, 0, 1, 2).contiguous()
    # pre-operative MRI on the grid
    grid = identity_grid(shape).reshape(-1, 3)
    A = torch.as_tensor(affine, dtype=torch.float32)

    def mri_fn(x: torch.Tensor) -> dict[str, torch.Tensor]:
        t = anat.sample(x @ A[:3, :3].T + A[:3, 3])
        c1, c2 = _mri_contrasts(t, gen)
        return {"cet1": c1, "t2": c2}

    mri = _chunked(mri_fn, grid)
    cet1 = mri["cet1"].reshape(shape).numpy().astype(np.float32)
    t2 = mri["t2"].reshape(shape).numpy().astype(np.float32)
    # bias field (smooth multiplicative) on the MRI
    lin = [np.linspace(-1, 1, s, dtype=np.float32) for s in shape]
    cb = rng.uniform(-0.08, 0.08, 3).astype(np.float32)
    bias = 1 + cb[0] * lin[0][:, None, None] + cb[1] * lin[1][None, :, None] + cb[2] * lin[2][None, None, :]
    cet1 *= bias
    t2 *= bias
    del grid, mri
    us, fov, us_clean = render_us(anat, probe, affine, disp_t, cfg, gen)
    # landmarks
    lf = _pick_landmarks(anat, probe, affine, shift_coarse, cfg, rng)
    lm = lf + interpolate_displacement(disp, lf)
    hi = np.asarray(shape) - 0.5
    keep = np.all((lm >= -0.5) & (lm <= hi), axis=1) & np.all((lf >= -0.5) & (lf <= hi), axis=1)
    lf, lm = lf[keep], lm[keep]
    # cavity on the fixed grid (coarse, upsampled by nearest)
    cav_c = (tc["sd"] < 0).reshape(cs).numpy()  # pre-op tumour at coarse centres (approximation only)
    y = torch.from_numpy((xc + shift_coarse).reshape(-1, 3).astype(np.float32))
    cav_post = (anat.tumour_sd(y @ A[:3, :3].T + A[:3, 3]) < 0).reshape(cs).numpy()
    cavity = np.repeat(np.repeat(np.repeat(cav_post, f, 0), f, 1), f, 2)
    info = {
        "case": int(case),
        "seed": int(seed),
        "brain_shift": asdict(params),
        "shift_stats": stats,
        "tumour_radius_mm": anat.tumour_radius_mm,
        "tumour_centre_world": anat.tumour_centre.tolist(),
        "probe_apex_world": apex.tolist(),
        "cone_half_angle_deg": float(np.rad2deg(half_angle)),
        "n_landmarks": int(len(lf)),
        "fov_fraction": float(fov.mean()),
        "preop_tumour_voxels_coarse": int(cav_c.sum()),
    }
    return CaseTruth(case, affine, us, cet1, t2, shift_coarse, disp, lf, lm, fov, cavity, info, us_clean)


def clean_us_name(case: int) -> str:
    """File name (in ``groundtruth/``) of a case's speckle-free iUS."""
    return f"ReMIND2Reg_{case:04d}_0000_clean.nii.gz"


def truth_shift_name(case: int) -> str:
    """File name (in ``groundtruth/``) of a case's coarse ground-truth shift field."""
    return f"ReMIND2Reg_{case:04d}_shift_coarse.nii.gz"


def read_truth_field(path: str | Path, shape: tuple[int, int, int]) -> np.ndarray:
    """Ground-truth pull field (X, Y, Z, 3) float32, fine voxels, on the fixed grid of ``shape``.

    ``path`` is a ``groundtruth/ReMIND2Reg_<case>_shift_coarse.nii.gz`` written by
    :func:`write_case` (values already in fine voxels, at the coarse cell centres); the
    field is upsampled exactly as the simulator did when it deformed the anatomy.
    """
    coarse = l2r.read_displacement(path).array  # its shape and NaN checks; the coarse grid is smaller than ``shape``
    return upsample_shift(coarse, tuple(int(n) for n in shape))


def write_case(root: str | Path, truth: CaseTruth, split: str = "val") -> list[Path]:
    """Write one case in the Learn2Reg layout plus ``groundtruth/`` (coarse shift, JSON)."""
    root = Path(root)
    img_dir, lm_dir = (root / d for d in l2r.SPLIT_FOLDERS[split])
    c = truth.case
    out = [
        l2r.write_volume(img_dir / l2r.image_name(c, 0), truth.us, truth.affine),
        l2r.write_volume(img_dir / l2r.image_name(c, 1), truth.cet1, truth.affine),
        l2r.write_volume(img_dir / l2r.image_name(c, 2), truth.t2, truth.affine),
    ]
    stem = l2r.image_name(c, 0)[: -len(".nii.gz")]
    out.append(l2r.write_landmarks(lm_dir / f"{stem}.csv", truth.landmarks_fixed))
    for mod in (1, 2):
        s = l2r.image_name(c, mod)[: -len(".nii.gz")]
        out.append(l2r.write_landmarks(lm_dir / f"{s}.csv", truth.landmarks_moving))
    f = truth.shift_coarse.shape[0] and (truth.us.shape[0] // truth.shift_coarse.shape[0])
    T_vox_from_coarse = np.diag([f, f, f, 1.0]).astype(np.float64)
    T_vox_from_coarse[:3, 3] = (f - 1) / 2.0
    gt = root / "groundtruth"
    out.append(
        l2r.write_volume(gt / truth_shift_name(c), truth.shift_coarse, truth.affine @ T_vox_from_coarse)
    )
    if truth.us_clean is not None:
        out.append(l2r.write_volume(gt / clean_us_name(c), truth.us_clean, truth.affine))
    jp = gt / f"ReMIND2Reg_{c:04d}.json"
    from usnav.io.atomic import atomic_path

    with atomic_path(jp) as tmp:
        tmp.write_text(json.dumps(truth.info, indent=2))
    out.append(jp)
    return out


def rewrite_dataset_json(root: str | Path, shape: tuple[int, int, int]) -> Path:
    """Regenerate the dataset JSON from the image files present (train and val pairs)."""
    root = Path(root)
    pairs: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}
    for split in ("train", "val"):
        folder = root / l2r.SPLIT_FOLDERS[split][0]
        if not folder.is_dir():
            continue
        for f in sorted(folder.glob("*_0000.nii.gz")):
            case, _ = l2r.parse_image_name(f)
            for mod in (1, 2):
                m = folder / l2r.image_name(case, mod)
                if m.exists():
                    pairs[split].append((f"./{folder.name}/{f.name}", f"./{folder.name}/{m.name}"))
    return l2r.write_dataset_json(
        root, pairs["train"], pairs["val"], shape=shape, description="usnav synthetic ReMIND2Reg-like cases"
    )


def simulate_dataset(
    root: str | Path,
    cases: int,
    first_case: int = 0,
    seed: int = 0,
    split: str = "val",
    cfg: SimConfig | None = None,
    progress=None,
) -> list[dict]:
    """Simulate ``cases`` cases numbered from ``first_case`` into ``root``; returns their info dicts."""
    cfg = cfg or SimConfig()
    infos = []
    for c in range(first_case, first_case + cases):
        truth = simulate_case(c, seed, cfg)
        write_case(root, truth, split)
        infos.append(truth.info)
        if progress is not None:
            progress(truth.info)
    rewrite_dataset_json(root, cfg.shape)
    return infos
