"""Hole filling after insertion (voxels that no pixel reached).

The fillers follow PLUS's ``vtkPlusFillHolesInVolume``: every unknown voxel
(weight 0) is given to the fillers in order, the first one that succeeds sets
it, otherwise it stays 0; fillers read the unfilled volume only, so the
result does not depend on the visiting order.

- ``stick``: along 13 directions, the nearest known voxels on both sides
  within ``stick_length`` voxels; linear interpolation along the shortest
  stick(s) (PLUS ``STICK``).
- ``gaussian``: Gaussian-weighted mean of the known voxels in a
  ``size``^3 cube (PLUS ``GAUSSIAN``); ``gaussian_accumulation`` also
  weights by the accumulated weight (PLUS ``GAUSSIAN_ACCUMULATION``).
- ``distance_weight_inverse``: 1/distance-weighted mean (PLUS
  ``DISTANCE_WEIGHT_INVERSE``).
- ``nearest_neighbor``: mean of the known voxels in the smallest cube
  (radius 1 .. (size-1)/2) that contains any (PLUS ``NEAREST_NEIGHBOR``).

A kernel filler succeeds when more than ``min_ratio`` of its cube is known.
Kernel fillers are computed with separable or direct 3D correlations
(scipy.ndimage), the stick filler with a compiled loop.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

__all__ = ["HoleFiller", "apply_hole_filling", "from_plus_config"]

KINDS = ("stick", "gaussian", "gaussian_accumulation", "distance_weight_inverse", "nearest_neighbor")


@dataclass(frozen=True)
class HoleFiller:
    """One hole-filling step (see module docstring). ``size`` is the cube
    edge in voxels (odd), ``stdev`` in voxels."""

    kind: str = "stick"
    size: int = 3
    stdev: float = 1.0
    min_ratio: float = 0.0
    stick_length: int = 9
    n_sticks: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"hole filler kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind != "stick" and (self.size < 1 or self.size % 2 == 0):
            raise ValueError(f"hole filler size must be odd and >= 1, got {self.size}")


def from_plus_config(elements) -> list[HoleFiller]:
    """Convert :class:`usnav.io.plus.HoleFillingElementConfig` items."""
    return [
        HoleFiller(
            kind=e.kind.lower(),
            size=int(e.size),
            stdev=float(e.stdev),
            min_ratio=float(e.min_ratio),
            stick_length=int(e.stick_length_limit),
            n_sticks=int(e.number_of_sticks),
        )
        for e in elements
    ]


def _correlate(a: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.correlate(a, kernel, mode="constant", cval=0.0)


def _separable(a: np.ndarray, k1: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    out = a
    for axis in range(3):
        out = ndimage.correlate1d(out, k1, axis=axis, mode="constant", cval=0.0)
    return out


def _kernel_fill(vol: np.ndarray, weight: np.ndarray, known: np.ndarray, f: HoleFiller):
    size = f.size
    r = (size - 1) // 2
    kf = known.astype(np.float64)
    v = vol.astype(np.float64)
    count = _separable(kf, np.ones(size))
    if f.kind == "nearest_neighbor":
        value = np.zeros_like(v)
        cnt_used = np.zeros_like(v)
        settled = np.zeros(v.shape, bool)
        for rad in range(1, r + 1):
            ones = np.ones(2 * rad + 1)
            c = _separable(kf, ones)
            s = _separable(v * kf, ones)
            new = (~settled) & (c > 0.5)
            value[new] = s[new] / c[new]
            cnt_used[new] = c[new]
            settled |= new
        ok = settled & (cnt_used / size**3 > f.min_ratio)
        return value, ok
    if f.kind in ("gaussian", "gaussian_accumulation"):
        g = np.exp(-((np.arange(size) - r) ** 2) / (2.0 * f.stdev**2))
        wsrc = kf if f.kind == "gaussian" else weight.astype(np.float64) * kf
        num = _separable(v * wsrc, g)
        den = _separable(wsrc, g)
    else:  # distance_weight_inverse
        zz, yy, xx = np.meshgrid(*(np.arange(size) - r,) * 3, indexing="ij")
        d = np.sqrt(xx**2 + yy**2 + zz**2)
        k = np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), 0.0)
        num = _correlate(v * kf, k)
        den = _correlate(kf, k)
    ok = (den > 1e-12) & (count / size**3 > f.min_ratio)
    value = np.divide(num, den, out=np.zeros_like(num), where=den > 1e-12)
    return value, ok


def apply_hole_filling(
    vol_zyx: np.ndarray,
    weight_zyx: np.ndarray,
    fillers: list[HoleFiller],
    integer: bool = False,
    truncate: bool = False,
    threads: int = 2,
) -> np.ndarray:
    """Fill the voxels whose weight is 0. ``vol_zyx``/``weight_zyx``: (nz,
    ny, nx). ``truncate``: cast each filled value towards zero (PLUS does for
    integer volumes). Returns a new float32 array (known voxels unchanged,
    unfilled holes 0)."""
    from usnav.compound import _kernels as K

    vol = np.asarray(vol_zyx)
    known = np.asarray(weight_zyx) > 0
    out = vol.astype(np.float32, copy=True)
    out[~known] = 0.0
    todo = ~known
    for f in fillers:
        if not todo.any():
            break
        if f.kind == "stick":
            vals = np.zeros(vol.shape, np.float64)
            got = np.zeros(vol.shape, np.bool_)
            src = vol.astype(np.float64)
            cuts = np.linspace(0, vol.shape[0], max(1, threads) + 1).astype(int)

            def run(k: int) -> None:
                K.fill_sticks(src, known, vals, got, K._STICKS, int(f.stick_length), int(f.n_sticks), bool(truncate), int(cuts[k]), int(cuts[k + 1]))

            with ThreadPoolExecutor(len(cuts) - 1) as ex:
                list(ex.map(run, range(len(cuts) - 1)))
        else:
            vals, got = _kernel_fill(vol, np.asarray(weight_zyx), known, f)
            if truncate:
                vals = np.trunc(vals)
        sel = todo & got
        out[sel] = vals[sel]
        todo &= ~got
    return out
