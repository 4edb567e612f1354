"""Compiled (numba) inner loop of the renderer: scatterer generation + beam binning, fused.

Same arithmetic as :func:`usnav.sim.scatterers.slab_columns` /
:func:`~usnav.sim.scatterers.iter_slab_scatterers` followed by
:func:`usnav.sim.bmode._bin_scatterers` (the numpy reference path), but one
pass over the lattice without temporaries.  The work is split into a
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


@njit(cache=True, inline="always", error_model="numpy")
def _fmix(h):
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK
    h ^= h >> 16
    return h


@njit(parallel=True, cache=True, fastmath=True, error_model="numpy")
def render_slab(
    iu_range,  # (2,) int64 first/last lattice index along world axis u
    iv_range,  # (2,) int64 first/last lattice index along world axis v
    axes,  # (3,) int64: u, v, a (a = column axis, closest to the plane normal)
    primes,  # (3,) int64 hash primes of world axes 0, 1, 2
    seed,  # int64 (uint32 value)
    R,  # (3, 3) float64 rotation image <- world
    t,  # (3,) float64 translation image <- world
    d,  # lattice spacing, mm
    fan,  # (8,) float64: cx, cy, R0, rho_max, half_fov, margin, hmax, depth_max
    thick,  # (4,) float64: half-thickness model h(dep) = c0 * sqrt(1 + ((dep - c1) / c2)^2), c3 unused
    jit_mat,  # (3, 3) float64 image displacement per jitter unit
    jit_off,  # (3,) float64
    amp_lut,
    geom,
    inv2s2,
    zlim2,
    echo,
    echo_dims,
    plane_geom,
    ns,
    nl,
    acc,  # (N_BLOCKS, ns * nl * 2) float32, zeroed
    phase_cos,
    phase_sin,
    exp_lut,
    atan_lut,
):
    """Column enumeration (as :func:`usnav.sim.scatterers.slab_columns`) fused with scatterer binning.

    Returns (bins (ns * nl * 2,) float64, number of lattice cells visited).
    """
    u = axes[0]
    v = axes[1]
    a_ax = axes[2]
    nu = iu_range[1] - iu_range[0] + 1
    nblocks = acc.shape[0]
    counts = np.zeros(nblocks, dtype=np.int64)
    cx, cy, R0, rho_max, half_fov, margin, hmax, depth_max = fan[0], fan[1], fan[2], fan[3], fan[4], fan[5], fan[6], fan[7]
    na = R[2, a_ax]
    abs_na = abs(na)
    step_a0 = R[0, a_ax] * d
    step_a1 = R[1, a_ax] * d
    step_a2 = R[2, a_ax] * d
    for b in prange(nblocks):
        iu_start = iu_range[0] + (nu * b) // nblocks
        iu_stop = iu_range[0] + (nu * (b + 1)) // nblocks
        ncells = 0
        for iu in range(iu_start, iu_stop):
            Uf = iu * d
            for iv in range(iv_range[0], iv_range[1] + 1):
                Vf = iv * d
                t0 = -(R[2, u] * Uf + R[2, v] * Vf + t[2]) / na
                x0 = R[0, u] * Uf + R[0, v] * Vf + R[0, a_ax] * t0 + t[0]
                y0 = R[1, u] * Uf + R[1, v] * Vf + R[1, a_ax] * t0 + t[1]
                rx = x0 - cx
                ry = y0 - cy
                r = math.sqrt(rx * rx + ry * ry)
                if r < R0 - margin or r > rho_max + margin:
                    continue
                if abs(math.atan2(rx, ry)) > half_fov + margin / max(r, 1.0):
                    continue
                dep = min(max(r - R0, 0.0), depth_max)
                q = (dep - thick[1]) / thick[2]
                hc = min(thick[0] * math.sqrt(1.0 + q * q) + d, hmax + d)
                hr = hc / abs_na
                k_lo = int(math.floor((t0 - hr) / d + 0.5))
                k_hi = int(math.floor((t0 + hr) / d + 0.5))
                cnt = k_hi - k_lo + 1
                if cnt <= 0:
                    continue
                ncells += cnt
                h0 = (((iu & _MASK) * primes[u]) & _MASK) ^ (((iv & _MASK) * primes[v]) & _MASK) ^ seed
                p0 = Uf
                p1 = Vf
                p2 = k_lo * d
                # image position of the centre of cell (iu, iv, k_lo): R @ pos + t with pos in world axis order
                w0 = 0.0
                w1 = 0.0
                w2 = 0.0
                if u == 0:
                    w0 = p0
                elif u == 1:
                    w1 = p0
                else:
                    w2 = p0
                if v == 0:
                    w0 = p1
                elif v == 1:
                    w1 = p1
                else:
                    w2 = p1
                if a_ax == 0:
                    w0 = p2
                elif a_ax == 1:
                    w1 = p2
                else:
                    w2 = p2
                bx = R[0, 0] * w0 + R[0, 1] * w1 + R[0, 2] * w2 + t[0]
                by = R[1, 0] * w0 + R[1, 1] * w1 + R[1, 2] * w2 + t[1]
                bz = R[2, 0] * w0 + R[2, 1] * w1 + R[2, 2] * w2 + t[2]
                _column(
                    acc[b], bx, by, bz, h0, k_lo, cnt, primes[a_ax], step_a0, step_a1, step_a2, jit_mat, jit_off,
                    amp_lut, geom, inv2s2, zlim2, echo, echo_dims, plane_geom, ns, nl, phase_cos, phase_sin,
                    exp_lut, atan_lut,
                )
        counts[b] = ncells
    out = np.zeros(acc.shape[1], dtype=np.float64)
    for b in range(nblocks):
        out += acc[b]
    return out, counts.sum()


@njit(cache=True, fastmath=True, error_model="numpy", inline="always")
def _column(
    a, bx, by, bz, h0, k0, cnt, prime_a, s0, s1, s2, jit_mat, jit_off, amp_lut, geom, inv2s2, zlim2, echo,
    echo_dims, plane_geom, ns, nl, phase_cos, phase_sin, exp_lut, atan_lut,
):
    cx, cy, R0, inv_dr, half_fov, inv_dth, k2 = geom[0], geom[1], geom[2], geom[3], geom[4], geom[5], geom[6]
    P, nrc, nlc, fdr, fl = echo_dims[0], echo_dims[1], echo_dims[2], echo_dims[3], echo_dims[4]
    off0, inv_step = plane_geom[0], plane_geom[1]
    inv_fdr = 1.0 / fdr
    inv_fl = 1.0 / fl
    n_phase = phase_cos.shape[0]
    ph_scale = n_phase / (2.0 * math.pi)
    ph_mask = n_phase - 1
    n_exp = exp_lut.shape[0] - 1
    exp_scale = n_exp / U_MAX
    n_atan = atan_lut.shape[0] - 1
    atan_scale = n_atan / (2.0 * TAN_MAX)
    for kk in range(cnt):
        h = (((k0 + kk) & _MASK) * prime_a) & _MASK
        h ^= h0
        h = _fmix(h)
        jx = float(h & 255)
        jy = float((h >> 8) & 255)
        jz = float((h >> 16) & 255)
        z = bz + kk * s2 + jx * jit_mat[2, 0] + jy * jit_mat[2, 1] + jz * jit_mat[2, 2] + jit_off[2]
        z2 = z * z
        x = bx + kk * s0 + jx * jit_mat[0, 0] + jy * jit_mat[0, 1] + jz * jit_mat[0, 2] + jit_off[0]
        y = by + kk * s1 + jx * jit_mat[1, 0] + jy * jit_mat[1, 1] + jz * jit_mat[1, 2] + jit_off[1]
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
        theta = atan_lut[iq] + (q - iq) * (atan_lut[iq + 1] - atan_lut[iq])
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
        ic = int(fi * inv_fdr)  # == i // fdr without an integer division
        if ic > nrc - 1:
            ic = nrc - 1
        jc = int(fj * inv_fl)
        if jc > nlc - 1:
            jc = nlc - 1
        w *= echo[(p * nrc + ic) * nlc + jc]
        ip = int(rho * k2 * ph_scale + 0.5) & ph_mask
        wr = w * phase_cos[ip]
        wi = -w * phase_sin[ip]
        # linear splatting onto the 2 x 2 nearest beam samples (sample centres at index + 0.5)
        gi = fi - 0.5
        gj = fj - 0.5
        i0 = int(math.floor(gi))
        j0 = int(math.floor(gj))
        ti = gi - i0
        tj = gj - j0
        for di in range(2):
            ii = i0 + di
            if ii < 0 or ii >= ns:
                continue
            wi_ = ti if di == 1 else 1.0 - ti
            for dj in range(2):
                jj = j0 + dj
                if jj < 0 or jj >= nl:
                    continue
                f = wi_ * (tj if dj == 1 else 1.0 - tj)
                idx = 2 * (ii * nl + jj)
                a[idx] += f * wr
                a[idx + 1] += f * wi
