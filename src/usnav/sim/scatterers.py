"""One fixed 3D field of point scatterers per scene, in world millimetres.

The field is a jittered lattice: world cell ``(i, j, k)`` (cube of side
``spacing_mm``, centred at ``(i, j, k) * spacing_mm``) holds exactly one point
scatterer, whose position inside the cell and whose amplitude are a hash of
``(i, j, k, seed)``.  The field is therefore a deterministic function of world
position: it is never stored, never redrawn per frame, identical for every
frame of every scan of a scene, and infinite in extent.

Amplitudes are zero-mean with unit variance (a 256-level Gaussian quantile
table), so the sum of many scatterers is circular complex Gaussian once the
echo phase ``2 k0 rho`` (exact scatterer depth) is applied: fully developed,
Rayleigh-distributed speckle (envelope SNR 1.91).

:func:`slab_scatterers` enumerates the scatterers within a slab around an
image plane, returned in that image frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtri

__all__ = ["ScattererField", "SlabColumns", "SlabScatterers", "iter_slab_scatterers", "slab_columns", "slab_scatterers"]

_M1 = np.uint32(0x85EBCA6B)
_M2 = np.uint32(0xC2B2AE35)
_P1 = np.uint32(0x9E3779B1)
_P2 = np.uint32(0x7FEB352D)
_P3 = np.uint32(0x846CA68B)

# Gaussian quantiles at the centres of 256 equal-probability bins, rescaled to unit variance.
_AMPLITUDE_LUT = ndtri((np.arange(256) + 0.5) / 256.0)
_AMPLITUDE_LUT = (_AMPLITUDE_LUT / np.sqrt(np.mean(_AMPLITUDE_LUT**2))).astype(np.float32)


def _fmix32(h: NDArray[np.uint32]) -> NDArray[np.uint32]:
    """MurmurHash3 finaliser (in place on a uint32 array)."""
    h ^= h >> np.uint32(16)
    h *= _M1
    h ^= h >> np.uint32(13)
    h *= _M2
    h ^= h >> np.uint32(16)
    return h


@dataclass(frozen=True)
class ScattererField:
    """Procedural world-fixed jittered-lattice scatterer field.

    Attributes
    ----------
    seed: selects the realisation (one per scene).
    spacing_mm: lattice spacing (mean scatterer spacing), mm; <= 0.2 mm is
        sub-resolution for a 6 MHz probe (about 100 scatterers per resolution cell).
    """

    seed: int = 0
    spacing_mm: float = 0.2

    @property
    def density_per_mm3(self) -> float:
        return 1.0 / self.spacing_mm**3

    def cell_hash(self, i: NDArray, j: NDArray, k: NDArray) -> NDArray[np.uint32]:
        """32-bit hash of integer cell indices (arrays of equal shape)."""
        h = k.astype(np.uint32) * _P3
        h ^= (i.astype(np.uint32) * _P1) ^ (j.astype(np.uint32) * _P2) ^ np.uint32(self.seed & 0xFFFFFFFF)
        return _fmix32(h)

    def scatterers_in_cells(self, ijk: NDArray[np.int64]) -> tuple[NDArray[np.float64], NDArray[np.float32]]:
        """World positions (N, 3) mm and amplitudes (N,) of the scatterers of cells ``ijk`` (N, 3)."""
        ijk = np.asarray(ijk)
        h = self.cell_hash(ijk[:, 0], ijk[:, 1], ijk[:, 2])
        jit = np.stack([(h >> np.uint32(s)) & np.uint32(255) for s in (0, 8, 16)], axis=1).astype(np.float64)
        pos = (ijk + (jit + 0.5) / 256.0 - 0.5) * self.spacing_mm
        amp = _AMPLITUDE_LUT[(h >> np.uint32(24)).astype(np.intp)]
        return pos, amp


@dataclass
class SlabScatterers:
    """Scatterers near an image plane, in that image frame (float32 mm)."""

    x: NDArray[np.float32]
    y: NDArray[np.float32]
    z: NDArray[np.float32]  # elevation (signed distance from the plane)
    amplitude: NDArray[np.float32]

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass
class SlabColumns:
    """The lattice columns crossing a slab: everything needed to generate its scatterers.

    Column ``c`` holds cells ``k_lo[c] .. k_lo[c] + counts[c] - 1`` along world
    axis ``axis``; ``base[c]`` is the image-mm position of the centre of its
    first cell; ``hcol[c]`` the column part of the cell hash.
    """

    counts: NDArray[np.int64]
    k_lo: NDArray[np.int64]
    hcol: NDArray[np.uint32]
    base: NDArray[np.float64]
    axis: int
    prime_axis: np.uint32
    R: NDArray[np.float64]  # rotation image <- world
    spacing_mm: float

    @property
    def n_cells(self) -> int:
        return int(self.counts.sum())

    def step_image(self) -> NDArray[np.float64]:
        """Image-mm displacement from one cell to the next along the column."""
        return self.R[:, self.axis] * self.spacing_mm

    def jitter_matrix(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(3, 3) image displacement per jitter unit (byte value) and (3,) offset: pos = M @ bytes + off."""
        d = self.spacing_mm
        M = self.R * (d / 256.0)
        off = self.R @ np.full(3, d * (0.5 / 256.0 - 0.5))
        return M, off


def iter_slab_scatterers(*args, chunk_size: int = 262144, **kwargs) -> Iterator[SlabScatterers]:
    """Scatterers of :func:`slab_columns` (same arguments), in chunks of about ``chunk_size``."""
    cols = slab_columns(*args, **kwargs)
    if cols is None:
        return
    ends = np.cumsum(cols.counts)
    c0 = 0
    ncol = cols.counts.shape[0]
    base32 = cols.base.astype(np.float32)
    while c0 < ncol:
        first = int(ends[c0 - 1]) if c0 > 0 else 0
        c1 = int(np.searchsorted(ends, first + chunk_size, side="right"))
        c1 = max(c1, c0 + 1)
        yield _column_chunk(
            cols.counts[c0:c1], cols.k_lo[c0:c1], cols.hcol[c0:c1], base32[c0:c1], cols.prime_axis, cols.R,
            cols.axis, cols.spacing_mm,
        )
        c0 = c1


def column_grid(
    T_image_from_world: NDArray[np.float64], region_xy: NDArray[np.float64], spacing_mm: float, hmax: float
) -> tuple[int, int, int, NDArray[np.int64], NDArray[np.int64], float]:
    """Lattice walk set-up: column axis ``a`` (world axis closest to the plane normal),
    the other axes ``u, v``, integer index bounds ``lo, hi`` (3,) of the region's
    bounding box dilated by the slab, and the in-plane ``margin`` (mm) by which a
    column inside the slab can stray from its crossing point."""
    T = np.asarray(T_image_from_world, dtype=np.float64)
    R = T[:3, :3]
    t = T[:3, 3]
    n = R[2, :]
    a = int(np.argmax(np.abs(n)))
    u, v = [ax for ax in range(3) if ax != a]
    d = spacing_mm
    na = float(n[a])
    tan_tilt = np.sqrt(max(0.0, 1.0 - na * na)) / abs(na)
    margin = (hmax + d) * tan_tilt + d  # in-plane drift of a column's scatterers across the slab
    reg = np.asarray(region_xy, dtype=np.float64)
    corners = []
    for zz in (-hmax - d, hmax + d):
        pts = np.concatenate([reg, np.full((reg.shape[0], 1), zz)], axis=1)
        corners.append((pts - t) @ R)  # world = R^T (p - t)
    corners = np.concatenate(corners, axis=0)
    lo = np.floor(corners.min(axis=0) / d).astype(np.int64) - 1
    hi = np.ceil(corners.max(axis=0) / d).astype(np.int64) + 1
    return a, u, v, lo, hi, float(margin)


def slab_columns(
    field: ScattererField,
    T_image_from_world: NDArray[np.float64],
    region_xy: NDArray[np.float64],
    half_thickness_mm,
    max_half_thickness_mm: float,
    keep_column=None,
    column_bound: tuple[float, float, float] | None = None,
) -> SlabColumns | None:
    """The lattice columns holding every scatterer of ``field`` within the slab ``|z| <= half_thickness`` around the image plane.

    Parameters
    ----------
    T_image_from_world: (4, 4) rigid, world mm -> image mm (the plane is z = 0).
    region_xy: (M, 2) image-mm points whose bounding box covers the in-plane region.
    half_thickness_mm: callable ``(x, y) -> half thickness`` (arrays, image mm); the
        slab may vary in thickness across the plane (depth-dependent beam).
    max_half_thickness_mm: upper bound of ``half_thickness_mm``.
    keep_column: optional callable ``(x, y, margin) -> bool mask`` pruning lattice
        columns whose crossing with the plane is outside the region of interest.
    column_bound: optional ``(scale, add, cap)``: a column generates exactly the cells
        whose centre lies within ``min(h * scale + add, cap)`` of the plane, ``h`` its
        half thickness at the crossing (the compiled renderer's bound, see
        ``usnav.sim.bmode.column_half_extent``); default: ``h + spacing`` (rounded to cells).

    The lattice is walked along the world axis closest to the plane normal:
    each lattice column crosses the plane once, and only the cells of the
    column within the slab are generated (vectorised).  Returned scatterers
    satisfy ``|z| <= half_thickness(x, y)`` only approximately (the caller
    applies the exact test with the exact depth).  None if the slab is empty.
    """
    T = np.asarray(T_image_from_world, dtype=np.float64)
    R = T[:3, :3]
    t = T[:3, 3]
    n = R[2, :]  # plane normal in world coordinates
    d = field.spacing_mm
    hmax = float(max_half_thickness_mm)
    a, u, v, lo, hi, margin = column_grid(T, region_xy, d, hmax)
    na = float(n[a])
    iu = np.arange(lo[u], hi[u] + 1)
    iv = np.arange(lo[v], hi[v] + 1)
    U, V = np.meshgrid(iu, iv, indexing="ij")
    U = U.ravel()
    V = V.ravel()
    Uf = U * d
    Vf = V * d
    # world point of the column at t: P = e_u*U + e_v*V + e_a*t ; image z = n.P + t_z = 0
    t0 = -(n[u] * Uf + n[v] * Vf + t[2]) / na
    x0 = R[0, u] * Uf + R[0, v] * Vf + R[0, a] * t0 + t[0]
    y0 = R[1, u] * Uf + R[1, v] * Vf + R[1, a] * t0 + t[1]
    if keep_column is not None:
        keep = keep_column(x0, y0, margin)
        U, V, t0, x0, y0 = U[keep], V[keep], t0[keep], x0[keep], y0[keep]
    if column_bound is None:
        hcol = np.minimum(np.asarray(half_thickness_mm(x0, y0), dtype=np.float64) + d, hmax + d)
        hr = hcol / abs(na)
        k_lo = np.floor((t0 - hr) / d + 0.5).astype(np.int64)
        k_hi = np.floor((t0 + hr) / d + 0.5).astype(np.int64)
    else:
        scale, add, cap = column_bound
        hz = np.minimum(np.asarray(half_thickness_mm(x0, y0), dtype=np.float64) * scale + add, cap)
        k_lo = np.ceil(t0 / d - hz / (abs(na) * d)).astype(np.int64)
        k_hi = np.floor(t0 / d + hz / (abs(na) * d)).astype(np.int64)
    counts = np.maximum(k_hi - k_lo + 1, 0)
    keep = counts > 0
    U, V, k_lo, counts = U[keep], V[keep], k_lo[keep], counts[keep]
    if int(counts.sum()) == 0:
        return None
    # per column: partial hash and image position of the centre of cell (U, V, k_lo)
    primes = (_P1, _P2, _P3)
    hcol = (U.astype(np.uint32) * primes[u]) ^ (V.astype(np.uint32) * primes[v]) ^ np.uint32(field.seed & 0xFFFFFFFF)
    pos0 = np.zeros((U.shape[0], 3))
    pos0[:, u] = U * d
    pos0[:, v] = V * d
    pos0[:, a] = k_lo * d
    base = pos0 @ R.T + t  # (ncol, 3) image mm
    return SlabColumns(counts, k_lo, hcol, base, a, primes[a], R, d)


def _column_chunk(counts, k_lo, hcol, base, prime_a, R, a, d) -> SlabScatterers:
    total = int(counts.sum())
    col = np.repeat(np.arange(counts.shape[0], dtype=np.int32), counts)
    starts = (np.cumsum(counts) - counts).astype(np.int32)
    kk = np.arange(total, dtype=np.int32)
    kk -= starts[col]
    h = k_lo.astype(np.uint32)[col]
    h += kk.astype(np.uint32)
    h *= prime_a
    h ^= hcol[col]
    h = _fmix32(h)
    amp = _AMPLITUDE_LUT[h >> np.uint32(24)]
    kkf = kk.astype(np.float32)
    jit = []
    for sft in (0, 8, 16):
        jv = ((h >> np.uint32(sft)) & np.uint32(255)).astype(np.float32)
        jv *= np.float32(d / 256.0)
        jv += np.float32(d * (0.5 / 256.0 - 0.5))
        jit.append(jv)
    out = []
    for r in range(3):
        c = base[:, r][col]
        c += kkf * np.float32(R[r, a] * d)
        for ax in range(3):
            c += jit[ax] * np.float32(R[r, ax])
        out.append(c)
    return SlabScatterers(x=out[0], y=out[1], z=out[2], amplitude=amp)


def slab_scatterers(*args, **kwargs) -> SlabScatterers:
    """All scatterers of :func:`iter_slab_scatterers` concatenated (for tests and analysis)."""
    parts = list(iter_slab_scatterers(*args, **kwargs))
    if not parts:
        empty = np.zeros(0, dtype=np.float32)
        return SlabScatterers(empty, empty, empty, empty)
    return SlabScatterers(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("x", "y", "z", "amplitude")))
