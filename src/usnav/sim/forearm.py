"""Procedural forearm scenes, one per subject seed.

World frame (mm): x across the arm (towards the radius/thumb side for a right
arm, mirrored for the left), y along the arm from the wrist (y = 0) to the
elbow (y = ``length_mm``), z up; the volar skin surface is on top (outward
normal about +z) and its highest line is at z = 0.

Cross-sections are ellipses that widen towards the elbow.  Layers from the
surface: skin, subcutaneous fat with septa and superficial veins, deep
fascia, muscle groups separated by intermuscular fascia (Voronoi partition
drifting along the arm), radius and ulna (cortex + marrow; they shadow),
interosseous membrane, radial/ulnar arteries with veins, and distal flexor
tendons and the median nerve.  Every size and position varies with the
subject seed, so subjects differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import gaussian_filter, zoom

from usnav.sim.scatterers import ScattererField
from usnav.sim.scene import Scene, volumes_from_labels

__all__ = ["make_forearm", "ForearmSurface", "FOREARM_LABELS"]

FOREARM_LABELS = (
    "gel",
    "skin",
    "fat",
    "fat_septum",
    "fascia",
    "muscle",
    "tendon",
    "nerve",
    "vessel",
    "bone",
    "marrow",
)
SALIENT = ("fascia", "bone", "vessel", "tendon", "nerve", "skin")


@dataclass
class ForearmSurface:
    """Skin surface: elliptic cross-sections ``(x / a(y))^2 + ((z - zc(y)) / b(y))^2 = 1``, top at z = 0.

    Surface coordinates: ``s`` along the arm (= world y, mm) and ``w`` across
    (= world x, mm, on the upper half of the ellipse).
    """

    length_mm: float
    a0: float
    a1: float
    b0: float
    b1: float

    def half_axes(self, y: NDArray) -> tuple[NDArray, NDArray]:
        t = np.clip(np.asarray(y, dtype=np.float64) / self.length_mm, 0.0, 1.0)
        return self.a0 + (self.a1 - self.a0) * t, self.b0 + (self.b1 - self.b0) * t

    def point_and_frame(self, s: NDArray, w: NDArray):
        """Points (..., 3), unit axes along the arm (u) and across (v), outward normal, at (s, w)."""
        s = np.asarray(s, dtype=np.float64)
        w = np.asarray(w, dtype=np.float64)
        a, b = self.half_axes(s)
        x = np.clip(w, -0.9 * a, 0.9 * a)
        root = np.sqrt(1.0 - (x / a) ** 2)
        z = -b + b * root
        p = np.stack([x, s, z], axis=-1)
        # outward normal of the implicit function F = (x/a)^2 + ((z+b)/b)^2 - 1 (ignore the slow y variation)
        n = np.stack([x / a**2, np.zeros_like(x), (z + b) / b**2], axis=-1)
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
        along = np.broadcast_to(np.array([0.0, 1.0, 0.0]), p.shape)
        across = np.cross(along, n)
        across /= np.linalg.norm(across, axis=-1, keepdims=True)
        return p, along, across, n


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: tuple[float, ...]) -> NDArray[np.float32]:
    n = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    n /= n.std() + 1e-6
    return n


def make_forearm(
    subject_seed: int,
    side: str = "RH",
    length_mm: float = 240.0,
    voxel_mm: float = 0.5,
    scatterer_spacing_mm: float = 0.2,
) -> Scene:
    """Build the forearm scene of one subject (``side`` "LH" mirrors it).

    ``subject_seed`` fixes the anatomy; the scatterer field seed is derived
    from it and the side, so the left and right arms differ too.
    """
    if side not in ("LH", "RH"):
        raise ValueError(f"side must be LH or RH, got {side!r}")
    rng = np.random.default_rng([subject_seed, 7])
    mirror = -1.0 if side == "LH" else 1.0
    a0, a1 = rng.uniform(26, 31), rng.uniform(32, 38)  # half widths at wrist / elbow
    b0, b1 = rng.uniform(17, 20), rng.uniform(22, 27)  # half thicknesses
    surface = ForearmSurface(length_mm, a0, a1, b0, b1)

    # grid: x in [-amax-3, amax+3], y in [-5, L+5], z in [-2bmax-3, 3]
    amax, bmax = max(a0, a1), max(b0, b1)
    xs = np.arange(-amax - 3, amax + 3 + 1e-6, voxel_mm)
    ys = np.arange(-5.0, length_mm + 5 + 1e-6, voxel_mm)
    zs = np.arange(-2 * bmax - 3, 3 + 1e-6, voxel_mm)
    nx, ny, nz = len(xs), len(ys), len(zs)
    T = np.eye(4)
    T[0, 0] = T[1, 1] = T[2, 2] = voxel_mm
    T[:3, 3] = [xs[0], ys[0], zs[0]]

    t = np.clip(ys / length_mm, 0, 1)[None, :, None]  # (1, ny, 1)
    X = xs[:, None, None]
    Z = zs[None, None, :]
    a = (a0 + (a1 - a0) * t)
    b = (b0 + (b1 - b0) * t)
    zc = -b
    # signed distance to the skin (positive inside), first-order approximation
    F = (X / a) ** 2 + ((Z - zc) / b) ** 2 - 1.0
    grad = 2.0 * np.sqrt((X / a**2) ** 2 + ((Z - zc) / b**2) ** 2) + 1e-9
    depth = (-F / grad).astype(np.float32)  # (nx, ny, nz)
    del F, grad

    L = {n: i for i, n in enumerate(FOREARM_LABELS)}
    lab = np.zeros((nx, ny, nz), dtype=np.uint8)
    inside = depth > 0
    skin_th = rng.uniform(1.4, 2.0)
    # fat thickness varies smoothly over the surface (x, y)
    fat_map = rng.uniform(3.0, 6.0) + 1.2 * _smooth_noise(rng, (nx, ny), (12 / voxel_mm, 40 / voxel_mm))
    fat_map = np.clip(fat_map, 1.5, 10.0)[:, :, None]
    fascia_th = 0.8
    lab[inside] = L["muscle"]
    lab[inside & (depth < skin_th + fat_map + fascia_th)] = L["fascia"]
    lab[inside & (depth < skin_th + fat_map)] = L["fat"]
    lab[inside & (depth < skin_th)] = L["skin"]

    # fat septa: thin oblique sheets (a sinusoidal pattern thresholded)
    phase = _smooth_noise(rng, (nx // 4 + 1, ny // 4 + 1, nz // 4 + 1), (3, 3, 3))
    phase = zoom(phase, (nx / phase.shape[0], ny / phase.shape[1], nz / phase.shape[2]), order=1)[:nx, :ny, :nz]
    septa = np.abs(np.sin(0.9 * (X * 0.7 + Z * 1.3) * (1.0 / voxel_mm) * voxel_mm + 3.0 * phase)) < 0.12
    lab[(lab == L["fat"]) & septa] = L["fat_septum"]
    del septa, phase

    # muscle groups: Voronoi cells of centres drifting along the arm; borders are fascia
    n_groups = int(rng.integers(7, 11))
    cen0 = np.stack([rng.uniform(-0.8, 0.8, n_groups), rng.uniform(-1.7, -0.3, n_groups)], axis=1)
    cen1 = cen0 + rng.normal(0, 0.15, cen0.shape)
    d1 = np.full((nx, ny, nz), np.inf, dtype=np.float32)
    d2 = np.full((nx, ny, nz), np.inf, dtype=np.float32)
    for g in range(n_groups):
        cxg = (cen0[g, 0] + (cen1[g, 0] - cen0[g, 0]) * t) * a
        czg = (cen0[g, 1] + (cen1[g, 1] - cen0[g, 1]) * t) * b
        dg = np.sqrt((X - cxg) ** 2 + (Z - czg) ** 2).astype(np.float32)
        closer = dg < d1
        d2 = np.where(closer, d1, np.minimum(d2, dg))
        d1 = np.where(closer, dg, d1)
    border = (d2 - d1) < 0.7
    lab[(lab == L["muscle"]) & border] = L["fascia"]
    del d1, d2, border

    # bones: radius (x > 0 side for RH) and ulna, circles whose size/depth change along the arm
    def disc(cx, cz, r):
        return (X - cx) ** 2 + (Z - cz) ** 2 < r**2

    bones = []
    r_rad = (rng.uniform(6.5, 7.5) * (1 - t) + rng.uniform(5.0, 6.0) * t)
    c_rad = (mirror * (0.42 + 0.04 * rng.standard_normal()) * a, -(0.95 + 0.15 * t) * b - 1.0)
    r_uln = (rng.uniform(4.5, 5.5) * (1 - t) + rng.uniform(5.5, 7.0) * t)
    c_uln = (-mirror * (0.45 + 0.04 * rng.standard_normal()) * a, -(1.15 - 0.05 * t) * b - 1.0)
    for (cx, cz), r in ((c_rad, r_rad), (c_uln, r_uln)):
        outer = disc(cx, cz, r)
        inner = disc(cx, cz, r - 1.8)
        lab[outer & inside] = L["bone"]
        lab[inner & inside] = L["marrow"]
        bones.append((cx, cz, r))
    # interosseous membrane: a thin sheet between the two bones
    (xr, zr, _), (xu, zu, _) = bones
    s = np.clip((X - xu) / (xr - xu), 0, 1)
    zline = zu + s * (zr - zu)
    between = (np.minimum(xr, xu) < X) & (X < np.maximum(xr, xu))
    mem = between & (np.abs(Z - zline) < 0.5) & (lab == L["muscle"])
    lab[mem] = L["fascia"]

    # vessels: arteries with paired veins (deep), superficial veins in the fat
    def tube(cx, cz, r, cls):
        m = disc(cx, cz, r) & inside & (lab != L["bone"]) & (lab != L["marrow"])
        lab[m] = L[cls]

    depth_fascia = skin_th + fat_map[..., 0].mean() + fascia_th
    for sgn, frac in ((mirror, 0.55), (-mirror, 0.45)):
        vx = sgn * frac * a + 2.0 * np.sin(2 * np.pi * t * rng.uniform(0.5, 1.5) + rng.uniform(0, 6))
        vz = -(depth_fascia + rng.uniform(3, 7)) + 0 * t
        ra = rng.uniform(1.1, 1.5)
        tube(vx, vz, ra, "vessel")
        tube(vx + 2.6, vz - 0.5, ra * 0.7, "vessel")
        tube(vx - 2.6, vz - 0.3, ra * 0.6, "vessel")
    for _ in range(int(rng.integers(2, 4))):
        vx = rng.uniform(-0.7, 0.7) * a + 3.0 * np.sin(2 * np.pi * t * rng.uniform(0.3, 1.0) + rng.uniform(0, 6))
        sdepth = skin_th + 0.5 * fat_map[..., 0].mean()
        zsurf = -b + b * np.sqrt(np.clip(1 - (vx / a) ** 2, 0, 1))
        tube(vx, zsurf - sdepth, rng.uniform(0.9, 1.6), "vessel")

    # distal flexor tendons and the median nerve (fade in towards the wrist)
    distal = (ys / length_mm) < 0.45
    n_tend = int(rng.integers(5, 9))
    for k in range(n_tend):
        tx = (rng.uniform(-0.45, 0.45)) * a
        tz = -(depth_fascia + rng.uniform(2.0, 9.0))
        rx, rz = rng.uniform(1.6, 2.6), rng.uniform(1.0, 1.7)
        m = (((X - tx) / rx) ** 2 + ((Z - tz) / rz) ** 2 < 1) & distal[None, :, None] & (lab == L["muscle"])
        lab[m] = L["tendon"]
    nx_ = rng.uniform(-0.1, 0.1) * a
    nz_ = -(depth_fascia + rng.uniform(3.0, 6.0))
    m = (((X - nx_) / 2.8) ** 2 + ((Z - nz_) / 1.4) ** 2 < 1) & (lab == L["muscle"])
    lab[m] = L["nerve"]
    del m, X, Z

    # echogenicity texture: muscle fibres along the arm (elongated along y), tendon fibrils
    coarse = (max(nx // 2, 2), max(ny // 8, 2), max(nz // 2, 2))
    fib = _smooth_noise(rng, coarse, (0.8, 1.5, 0.8))
    fib = zoom(fib, (nx / coarse[0], ny / coarse[1], nz / coarse[2]), order=1)[:nx, :ny, :nz]
    texture = np.ones((nx, ny, nz), dtype=np.float32)
    mus = lab == L["muscle"]
    texture[mus] = np.clip(0.85 + 0.3 * fib[mus], 0.3, 2.5)
    # perimysium: sparse bright septa along the fibres ("starry sky" across, striations along the arm)
    sept = _smooth_noise(rng, coarse, (0.6, 2.5, 0.6))
    sept = zoom(sept, (nx / coarse[0], ny / coarse[1], nz / coarse[2]), order=1)[:nx, :ny, :nz]
    bright = mus & (sept > 1.6)
    texture[bright] = 2.6
    del sept, bright
    ten = lab == L["tendon"]
    texture[ten] = np.clip(1.0 + 0.3 * fib[ten], 0.5, 2.0)
    del fib
    props = volumes_from_labels(lab, FOREARM_LABELS, texture)
    del texture
    seed = int(np.random.default_rng([subject_seed, 0 if side == "RH" else 1, 99]).integers(0, 2**31))
    return Scene(
        props,
        T,
        ScattererField(seed=seed, spacing_mm=scatterer_spacing_mm),
        labels=lab,
        label_names=FOREARM_LABELS,
        surface=surface,
        name=f"forearm-{subject_seed}-{side}",
        salient_labels=SALIENT,
    )
