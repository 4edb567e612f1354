"""Compiled (numba) inner loop of the renderer: scatterer generation + beam binning, fused.

Same arithmetic as :func:`usnav.sim.scatterers.iter_slab_scatterers` followed
by :func:`usnav.sim.bmode._bin_scatterers` (the numpy reference path), but one
pass over the scatterers without temporaries.  The work is split into a
fixed number of blocks (``N_BLOCKS``, independent of the thread count) with
one accumulator each, summed in a fixed order, so results are bit-identical
whatever the number of threads.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

N_BLOCKS = 8
_MASK = 0xFFFFFFFF

# Lookup tables replacing libm calls in the inner loop (errors far below the physics):
# phase -> cos/sin (nearest of 2^14 steps: |phase error| <= 2e-4 rad);
# u = z^2 / (2 sigma^2) in [0, U_MAX] -> exp(-u) (linear);
# tan(theta) in [-TAN_MAX, TAN_MAX] -> theta (linear).
N_PHASE = 1 << 14
PHASE_COS = np.cos(2 * np.pi * np.arange(N_PHASE) / N_PHASE).astype(np.float32)
PHASE_SIN = np.sin(2 * np.pi * np.arange(N_PHASE) / N_PHASE).astype(np.float32)
U_MAX = 8.0
N_EXP = 8192
EXP_LUT = np.exp(-np.linspace(0.0, U_MAX, N_EXP + 1)).astype(np.float64)
TAN_MAX = 2.0
N_ATAN = 16384
ATAN_LUT = np.arctan(np.linspace(-TAN_MAX, TAN_MAX, N_ATAN + 1)).astype(np.float64)


@njit(cache=True, inline="always")
def _fmix(h):
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK
    h ^= h >> 16
    return h


@njit(parallel=True, cache=True, fastmath=False)
def bin_columns(
    counts,  # (ncol,) int64 cells per column
    k_lo,  # (ncol,) int64 first cell index along the column axis
    hcol,  # (ncol,) int64 partial hash of the column (uint32 value)
    base,  # (ncol, 3) float64 image position of the centre of cell (U, V, k_lo)
    block_start,  # (N_BLOCKS + 1,) int64 column index boundaries of the blocks
    prime_a,  # int64 hash prime of the column axis
    step_a,  # (3,) float64 image displacement per cell along the column
    jit_mat,  # (3, 3) float64 image displacement per jitter unit (R * d / 256)
    jit_off,  # (3,) float64 jitter offset in image mm
    amp_lut,  # (256,) float32
    geom,  # (8,) float64: cx, cy, R0, inv_dr, half_fov, inv_dtheta, k2, unused
    inv2s2,  # (ns,) float32
    zlim2,  # (ns,) float32
    echo,  # (P * nrc * nlc,) float32 coarse echo maps
    echo_dims,  # (6,) int64: P, nrc, nlc, fdr, fl, unused
    plane_geom,  # (2,) float64: first plane offset, 1 / plane step
    ns,
    nl,
    acc,  # (N_BLOCKS, ns * nl * 2) float32, zeroed
    phase_cos,
    phase_sin,
    exp_lut,
    atan_lut,
):
    cx, cy, R0, inv_dr, half_fov, inv_dth, k2 = geom[0], geom[1], geom[2], geom[3], geom[4], geom[5], geom[6]
    P, nrc, nlc, fdr, fl = echo_dims[0], echo_dims[1], echo_dims[2], echo_dims[3], echo_dims[4]
    off0, inv_step = plane_geom[0], plane_geom[1]
    nblocks = acc.shape[0]
    n_phase = phase_cos.shape[0]
    ph_scale = n_phase / (2.0 * math.pi)
    ph_mask = n_phase - 1
    n_exp = exp_lut.shape[0] - 1
    exp_scale = n_exp / U_MAX
    n_atan = atan_lut.shape[0] - 1
    atan_scale = n_atan / (2.0 * TAN_MAX)
    for b in prange(nblocks):
        a = acc[b]
        for c in range(block_start[b], block_start[b + 1]):
            bx = base[c, 0]
            by = base[c, 1]
            bz = base[c, 2]
            h0 = hcol[c]
            k0 = k_lo[c]
            for kk in range(counts[c]):
                h = (((k0 + kk) & _MASK) * prime_a) & _MASK
                h ^= h0
                h = _fmix(h)
                jx = float(h & 255)
                jy = float((h >> 8) & 255)
                jz = float((h >> 16) & 255)
                z = bz + kk * step_a[2] + jx * jit_mat[2, 0] + jy * jit_mat[2, 1] + jz * jit_mat[2, 2] + jit_off[2]
                z2 = z * z
                x = bx + kk * step_a[0] + jx * jit_mat[0, 0] + jy * jit_mat[0, 1] + jz * jit_mat[0, 2] + jit_off[0]
                y = by + kk * step_a[1] + jx * jit_mat[1, 0] + jy * jit_mat[1, 1] + jz * jit_mat[1, 2] + jit_off[1]
                dx = x - cx
                dy = y - cy
                rho = math.sqrt(dx * dx + dy * dy)
                fi = (rho - R0) * inv_dr
                if fi < 0.0:
                    continue
                i = int(fi)
                if i >= ns:
                    continue
                if z2 > zlim2[i]:
                    continue
                if dy <= 0.0:
                    continue
                q = (dx / dy + TAN_MAX) * atan_scale
                if q < 0.0 or q >= n_atan:
                    continue
                iq = int(q)
                fq = q - iq
                theta = atan_lut[iq] + fq * (atan_lut[iq + 1] - atan_lut[iq])
                fj = (theta + half_fov) * inv_dth
                if fj < 0.0:
                    continue
                j = int(fj)
                if j >= nl:
                    continue
                ue = z2 * inv2s2[i] * exp_scale
                ie = int(ue)
                if ie >= n_exp:
                    continue
                w = amp_lut[h >> 24] * (exp_lut[ie] + (ue - ie) * (exp_lut[ie + 1] - exp_lut[ie]))
                if P > 1:
                    p = int(math.floor((z - off0) * inv_step + 0.5))
                    if p < 0:
                        p = 0
                    elif p > P - 1:
                        p = P - 1
                else:
                    p = 0
                ic = i // fdr
                if ic > nrc - 1:
                    ic = nrc - 1
                jc = j // fl
                if jc > nlc - 1:
                    jc = nlc - 1
                w *= echo[(p * nrc + ic) * nlc + jc]
                ip = int(rho * k2 * ph_scale + 0.5) & ph_mask
                idx = 2 * (i * nl + j)
                a[idx] += w * phase_cos[ip]
                a[idx + 1] -= w * phase_sin[ip]
    out = np.zeros(acc.shape[1], dtype=np.float64)
    for b in range(nblocks):
        out += acc[b]
    return out
