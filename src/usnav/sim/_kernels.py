"""Compiled (numba) inner loops of the renderer.

:func:`render_slab`: scatterer generation + beam binning, fused.  Same
scatterer field as :func:`usnav.sim.scatterers.slab_columns` /
:func:`~usnav.sim.scatterers.iter_slab_scatterers` followed by
:func:`usnav.sim.bmode._bin_scatterers` (the numpy reference path), without
temporaries:

- for each lattice row ``iu`` only the columns whose plane crossing lies in
  the fan (dilated by the in-plane drift of a column across the slab) are
  visited: the crossing points of a row lie on a line, intersected with the
  fan's convex hull (outer disc and the two edge half-planes) in closed form;
- each column generates only the cells whose centre can hold a scatterer
  inside the depth-dependent elevational support (a provable bound, see
  ``usnav.sim.bmode.column_half_extent``);
- the cells are queued in batches of ``BATCH`` and binned in three loops
  (:func:`_bin_batch`): a float64 pass (hash, jittered position, radius,
  echo phase), a float32 pass (angle, elevational weight, splat fractions,
  table indices) - both branch-free, table-free and vectorised, with
  polynomials instead of atan/exp/sin/cos - then the table look-ups and the
  scatter-adds in lattice order into a padded beam grid (no bounds tests);
  invalid scatterers get weight 0.

The lattice rows are split into a fixed number of blocks (``N_BLOCKS``,
independent of the thread count) with one accumulator each, summed in a fixed
order, so results are bit-identical whatever the number of threads and
whether a frame is rendered with several threads (``parallel=True``) or
frames are rendered concurrently, one thread each (``parallel=False``; the
compiled functions release the GIL).

Post-processing (serial, release the GIL): :func:`sample_beam_tissue`,
:func:`psf_convolve`, :func:`envelope`, :func:`log_compress`,
:func:`scan_convert_u8`.

Note: numba indexes with signed integers through a negative-index fix-up
that blocks vectorisation; hot loops index views with ``range`` counters or
unsigned integers.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

N_BLOCKS = 4
_MASK = 0xFFFFFFFF

# No libm calls in the inner loop: theta = atan(t), exp(-u) and the echo phase's cos/sin
# by polynomials fitted once (|error| < 1e-7 .. 3e-7, see poly_fit), branch-free and vectorised.


def poly_fit(f, lo: float, hi: float, tol: float = 1e-7, max_terms: int = 24) -> np.ndarray:
    """Monomial coefficients (low order first) of the shortest polynomial within ``tol`` of ``f`` on [lo, hi]."""
    x = 0.5 * (hi + lo) + 0.5 * (hi - lo) * np.cos(np.linspace(0.0, np.pi, 4000))
    xx = np.linspace(lo, hi, 100001)
    c = np.zeros(1)
    for n in range(1, max_terms):  # degree n: n + 1 terms
        c = np.polynomial.polynomial.polyfit(x, f(x), n)
        if np.max(np.abs(np.polynomial.polynomial.polyval(xx, c) - f(xx))) < tol:
            break
    return c


def _padded(c: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n)
    out[: min(n, c.shape[0])] = c[:n]
    return out


def atan_poly(t_max: float) -> np.ndarray:
    """12 coefficients ``c`` with ``atan(t) = t * sum_m c[m] t^(2m)`` for ``|t| <= t_max``."""
    s_max = t_max * t_max

    def f(s):
        r = np.sqrt(np.maximum(s, 1e-300))
        return np.where(s > 1e-12, np.arctan(r) / r, 1.0 - s / 3.0)

    return _padded(poly_fit(f, 0.0, s_max, max_terms=12), 12)


def exp_poly(u_max: float) -> np.ndarray:
    """10 coefficients of ``exp(-u)`` for ``0 <= u <= u_max``."""
    return _padded(poly_fit(lambda u: np.exp(-u), 0.0, u_max, max_terms=10), 10)


def _sincos_polys() -> tuple[np.ndarray, np.ndarray]:
    """8 coefficients each: ``sin x = x * S(x^2)``, ``cos x = C(x^2)`` for ``|x| <= pi`` (|error| < 3e-7)."""
    y2 = np.pi**2

    def sinc(y):
        r = np.sqrt(np.maximum(y, 1e-300))
        return np.where(y > 1e-12, np.sin(r) / r, 1.0 - y / 6.0)

    S = poly_fit(sinc, 0.0, y2, tol=1e-7, max_terms=8)
    C = poly_fit(lambda y: np.cos(np.sqrt(y)), 0.0, y2, tol=1e-7, max_terms=8)
    return _padded(S, 8), _padded(C, 8)


SIN_C, COS_C = _sincos_polys()


@njit(cache=True, inline="always", error_model="numpy")
def _fmix(h):
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK
    h ^= h >> 16
    return h


@njit(cache=True, inline="always", error_model="numpy")
def _clip_interval(lo, hi, alpha, beta, m):
    """Intersect [lo, hi] with {V : alpha + beta * V <= m}."""
    if beta > 0.0:
        hi = min(hi, (m - alpha) / beta)
    elif beta < 0.0:
        lo = max(lo, (m - alpha) / beta)
    elif alpha > m:
        hi = lo - 1.0
    return lo, hi


BATCH = 4096  # scatterers generated, then binned, per batch (scratch arrays of a block)


@njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def _bin_batch(n, hk, px, py, pz, a, cst, jit_mat, amp_lut, echo, echo_dims, exp_c, atan_c, scr, iscr):
    """Bin ``n`` scatterers (cell hash keys ``hk``, zero-jitter image positions ``px, py, pz`` relative to the
    apex) into the padded accumulator ``a``.

    Two loops: a branch-free, table-free (vectorisable) one computing every
    scatterer's beam-grid position, fractions, elevational weight and table
    indices (invalid scatterers get weight 0 on the discarded border), then
    the table look-ups and scatter-adds in the original order.
    """
    R0, inv_dr, inv_dth, th_off, ph_scale, t_max, fns, fnl = cst[0], cst[1], cst[2], cst[3], cst[4], cst[5], cst[6], cst[7]
    off0, inv_step, inv_fdr, inv_fl = cst[8], cst[9], cst[10], cst[11]
    dr, s0sq, focus, inv_zr, u_lim = cst[12], cst[13], cst[14], cst[15], cst[16]
    P, nrc, nlc, nl = echo_dims[0], echo_dims[1], echo_dims[2], echo_dims[5]
    fnrc1 = float(nrc) - 0.5
    fnlc1 = float(nlc) - 0.5
    nlp = nl + 2
    row = 2 * nlp
    fP = float(P)
    j00, j01, j02 = jit_mat[0, 0], jit_mat[0, 1], jit_mat[0, 2]
    j10, j11, j12 = jit_mat[1, 0], jit_mat[1, 1], jit_mat[1, 2]
    j20, j21, j22 = jit_mat[2, 0], jit_mat[2, 1], jit_mat[2, 2]
    # float32 constants (pass A2 is float32 only: 8 lanes per vector)
    f32 = np.float32
    e0, e1, e2, e3, e4, e5, e6, e7, e8, e9 = (f32(exp_c[0]), f32(exp_c[1]), f32(exp_c[2]), f32(exp_c[3]),
                                              f32(exp_c[4]), f32(exp_c[5]), f32(exp_c[6]), f32(exp_c[7]),
                                              f32(exp_c[8]), f32(exp_c[9]))
    q0, q1, q2, q3, q4, q5, q6, q7, q8, q9, q10, q11 = (f32(atan_c[0]), f32(atan_c[1]), f32(atan_c[2]),
                                                       f32(atan_c[3]), f32(atan_c[4]), f32(atan_c[5]),
                                                       f32(atan_c[6]), f32(atan_c[7]), f32(atan_c[8]),
                                                       f32(atan_c[9]), f32(atan_c[10]), f32(atan_c[11]))
    S0, S1, S2, S3, S4, S5, S6, S7 = (f32(SIN_C[0]), f32(SIN_C[1]), f32(SIN_C[2]), f32(SIN_C[3]), f32(SIN_C[4]),
                                      f32(SIN_C[5]), f32(SIN_C[6]), f32(SIN_C[7]))
    C0, C1, C2, C3, C4, C5, C6, C7 = (f32(COS_C[0]), f32(COS_C[1]), f32(COS_C[2]), f32(COS_C[3]), f32(COS_C[4]),
                                      f32(COS_C[5]), f32(COS_C[6]), f32(COS_C[7]))
    zero = f32(0.0)
    half = f32(0.5)
    one = f32(1.0)
    tiny = f32(1e-6)
    fns_ = f32(fns)
    fnl_ = f32(fnl)
    fns_c = f32(fns - 1e-3)
    fnl_c = f32(fnl - 1e-3)
    fnrc1_ = f32(fnrc1)
    fnlc1_ = f32(fnlc1)
    fP_ = f32(fP - 0.5)
    t_max_ = f32(t_max)
    inv_dth_ = f32(inv_dth)
    th_off_ = f32(th_off)
    dr_ = f32(dr)
    focus_ = f32(focus)
    inv_zr_ = f32(inv_zr)
    s0sq_ = f32(s0sq)
    u_lim_ = f32(u_lim)
    off0_ = f32(off0)
    inv_step_ = f32(inv_step)
    inv_fdr_ = f32(inv_fdr)
    inv_fl_ = f32(inv_fl)
    o_ti = scr[0]
    o_tj = scr[1]
    o_w = scr[2]
    o_c = scr[3]
    o_s = scr[4]
    a_fi = scr[5]
    a_dx = scr[6]
    a_dy = scr[7]
    a_z = scr[8]
    a_x = scr[9]
    o_idx = iscr[0]
    o_key = iscr[1]
    ph_turns = ph_scale / 65536.0
    two_pi = 2.0 * math.pi
    # pass A1 (float64, positions and the echo phase need the precision)
    for s in range(n):
        h = _fmix(hk[s])
        jx = float(h & 255)
        jy = float((h >> 8) & 255)
        jz = float((h >> 16) & 255)
        z = pz[s] + jx * j20 + jy * j21 + jz * j22
        dx = px[s] + jx * j00 + jy * j01 + jz * j02
        dy = py[s] + jx * j10 + jy * j11 + jz * j12
        rho = math.sqrt(dx * dx + dy * dy)
        turns = rho * ph_turns
        a_fi[s] = (rho - R0) * inv_dr
        a_dx[s] = dx
        a_dy[s] = dy
        a_z[s] = z
        a_x[s] = (turns - float(int(turns + 0.5))) * two_pi  # echo phase 2 k0 rho reduced to [-pi, pi]
        o_key[s] = h >> 24
    # pass A2 (float32, branch-free): beam-grid position, fractions, weights, table indices
    for s in range(n):
        fi = a_fi[s]
        dx = a_dx[s]
        dy = a_dy[s]
        z = a_z[s]
        fic = min(max(fi, zero), fns_c)  # clamped: table and grid indices stay in range
        tq = dx / max(dy, tiny)
        tqc = min(max(tq, -t_max_), t_max_)
        ss = tqc * tqc
        pt = ((((q11 * ss + q10) * ss + q9) * ss + q8) * ss + q7) * ss + q6
        pt = (((((pt * ss + q5) * ss + q4) * ss + q3) * ss + q2) * ss + q1) * ss + q0
        fj = tqc * pt * inv_dth_ + th_off_
        fjc = min(max(fj, zero), fnl_c)
        # elevational weight exp(-z^2 / (2 sigma^2)), sigma at the centre of the scatterer's depth sample
        qd = ((f32(np.int32(fic)) + half) * dr_ - focus_) * inv_zr_
        ue = z * z / (s0sq_ * (one + qd * qd))
        uc = min(ue, u_lim_)
        pe = ((((e9 * uc + e8) * uc + e7) * uc + e6) * uc + e5) * uc + e4
        pe = (((pe * uc + e3) * uc + e2) * uc + e1) * uc + e0
        ok = (fi >= zero) & (fi < fns_) & (dy > zero) & (abs(tq) <= t_max_) & (fj >= zero) & (fj < fnl_) & (ue <= u_lim_)
        pf = min(max((z - off0_) * inv_step_ + half, zero), fP_)  # nearest elevation plane, clamped
        icf = min(fic * inv_fdr_, fnrc1_)  # coarse tissue-map sample (== i // fdr, no integer division)
        jcf = min(fjc * inv_fl_, fnlc1_)
        # padded grid: sample (i, j) at (i + 1, j + 1); splat corner (floor(fi - 0.5) + 1, ...)
        gi = fic + half
        gj = fjc + half
        i0 = np.int32(gi)
        j0 = np.int32(gj)
        o_ti[s] = gi - f32(i0)
        o_tj[s] = gj - f32(j0)
        o_w[s] = pe if ok else zero
        x = a_x[s]
        y = x * x
        sn = x * (((((((S7 * y + S6) * y + S5) * y + S4) * y + S3) * y + S2) * y + S1) * y + S0)
        o_c[s] = ((((((C7 * y + C6) * y + C5) * y + C4) * y + C3) * y + C2) * y + C1) * y + C0
        o_s[s] = -sn
        o_idx[s] = np.int32(2) * (i0 * np.int32(nlp) + j0)
        o_key[s] = (((np.int32(pf) * np.int32(nrc) + np.int32(icf)) * np.int32(nlc) + np.int32(jcf)) << np.int32(8)) | o_key[s]
    # table look-ups, then linear splatting onto the 2 x 2 nearest beam samples (sample centres at index + 0.5)
    # (unsigned indices: no negative-index handling)
    urow = np.uint64(row)
    for s in range(n):
        key = np.uint64(o_key[s])
        w = o_w[s] * amp_lut[key & np.uint64(255)] * echo[key >> np.uint64(8)]
        wr = w * o_c[s]
        wi = w * o_s[s]
        ti = o_ti[s]
        tj = o_tj[s]
        f1 = ti * tj
        f0 = tj - f1  # (1 - ti) * tj
        g0 = 1.0 - ti - f0  # (1 - ti) * (1 - tj)
        g1 = ti - f1  # ti * (1 - tj)
        av = a[np.uint64(o_idx[s]) :]
        av[0] += g0 * wr
        av[1] += g0 * wi
        av[2] += f0 * wr
        av[3] += f0 * wi
        av[urow] += g1 * wr
        av[urow + np.uint64(1)] += g1 * wi
        av[urow + np.uint64(2)] += f1 * wr
        av[urow + np.uint64(3)] += f1 * wi


@njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def _slab_block(
    iu_start, iu_stop, iv_range, axes, primes, seed, R, t, d, fan, thick, jit_mat, jit_off, amp_lut, geom,
    echo, echo_dims, plane_geom, ns, nl, a, exp_c, atan_c, t_max,
):
    """Lattice rows ``iu_start .. iu_stop - 1`` into the padded accumulator ``a`` ((ns+2)*(nl+2)*2 float32).

    Returns the number of lattice cells visited.
    """
    u = axes[0]
    v = axes[1]
    a_ax = axes[2]
    cx, cy, R0, rho_max, half_fov, margin = fan[0], fan[1], fan[2], fan[3], fan[4], fan[5]
    depth_max = fan[7]
    c0, c1, c2, hz_scale, hz_add, hz_max = thick[0], thick[1], thick[2], thick[3], thick[4], thick[5]
    na = R[2, a_ax]
    inv_na_d = 1.0 / (abs(na) * d)
    inv_na = 1.0 / na
    ch = math.cos(half_fov)
    sh = math.sin(half_fov)
    r_out = rho_max + margin
    r_in = R0 - margin
    r_in2 = r_in * r_in if r_in > 0.0 else -1.0
    pa = primes[a_ax]
    pu = primes[u]
    pv = primes[v]
    inv_dr, inv_dth, k2 = geom[3], geom[5], geom[6]
    P, nrc, nlc, fdr, fl = echo_dims[0], echo_dims[1], echo_dims[2], echo_dims[3], echo_dims[4]
    dims = np.array([P, nrc, nlc, fdr, fl, nl], dtype=np.int64)
    cst = np.array(
        [R0, inv_dr, inv_dth, half_fov * inv_dth, k2 * 65536.0 / (2.0 * math.pi), t_max, float(ns), float(nl),
         plane_geom[0], plane_geom[1], 1.0 / fdr, 1.0 / fl, 1.0 / inv_dr, 2.0 * (c0 / geom[7]) ** 2, c1, 1.0 / c2,
         0.5 * geom[7] ** 2]
    )
    scr = np.empty((10, BATCH), dtype=np.float32)
    iscr = np.empty((2, BATCH), dtype=np.int32)
    hk = np.empty(BATCH, dtype=np.int64)
    px = np.empty(BATCH, dtype=np.float64)
    py = np.empty(BATCH, dtype=np.float64)
    pz = np.empty(BATCH, dtype=np.float64)
    s0 = R[0, a_ax] * d
    s1 = R[1, a_ax] * d
    s2 = R[2, a_ax] * d
    # crossing point of column (U, V) with the plane: t0 = T0 + Tv * V (along axis a), in-plane (x0, y0)
    Tv = -R[2, v] * inv_na
    qx = R[0, v] + R[0, a_ax] * Tv
    qy = R[1, v] + R[1, a_ax] * Tv
    A = qx * qx + qy * qy
    n_cells = 0
    nb = 0
    for iu in range(iu_start, iu_stop):
        Uf = iu * d
        T0 = -(R[2, u] * Uf + t[2]) * inv_na
        ox = R[0, u] * Uf + R[0, a_ax] * T0 + t[0] - cx
        oy = R[1, u] * Uf + R[1, a_ax] * T0 + t[1] - cy
        # V interval of crossings inside the dilated fan hull: outer disc, then the two edge half-planes
        B = ox * qx + oy * qy
        C = ox * ox + oy * oy - r_out * r_out
        disc = B * B - A * C
        if disc < 0.0:
            continue
        sq = math.sqrt(disc)
        lo = (-B - sq) / A
        hi = (-B + sq) / A
        lo, hi = _clip_interval(lo, hi, ox * ch - oy * sh, qx * ch - qy * sh, margin)
        lo, hi = _clip_interval(lo, hi, -ox * ch - oy * sh, -qx * ch - qy * sh, margin)
        iv_lo = max(iv_range[0], int(math.ceil(lo / d)))
        iv_hi = min(iv_range[1], int(math.floor(hi / d)))
        hu = ((iu & _MASK) * pu) & _MASK
        for iv in range(iv_lo, iv_hi + 1):
            Vf = iv * d
            rx = ox + qx * Vf
            ry = oy + qy * Vf
            r2 = rx * rx + ry * ry
            if r2 < r_in2:
                continue
            t0 = T0 + Tv * Vf
            dep = min(max(math.sqrt(r2) - R0, 0.0), depth_max)
            q = (dep - c1) / c2
            hz = min(c0 * math.sqrt(1.0 + q * q) * hz_scale + hz_add, hz_max)
            # cells whose centre lies within hz of the plane: |(k d - t0) na| <= hz
            k_lo = int(math.ceil(t0 / d - hz * inv_na_d))
            k_hi = int(math.floor(t0 / d + hz * inv_na_d))
            cnt = k_hi - k_lo + 1
            if cnt <= 0:
                continue
            n_cells += cnt
            if nb + cnt > BATCH:
                _bin_batch(nb, hk, px, py, pz, a, cst, jit_mat, amp_lut, echo, dims, exp_c, atan_c, scr, iscr)
                nb = 0
            h0 = hu ^ (((iv & _MASK) * pv) & _MASK) ^ seed
            # image position (relative to the apex) of the scatterer of cell (iu, iv, k_lo) for zero jitter bytes
            kd = k_lo * d
            bx = R[0, u] * Uf + R[0, v] * Vf + R[0, a_ax] * kd + t[0] + jit_off[0] - cx
            by = R[1, u] * Uf + R[1, v] * Vf + R[1, a_ax] * kd + t[1] + jit_off[1] - cy
            bz = R[2, u] * Uf + R[2, v] * Vf + R[2, a_ax] * kd + t[2] + jit_off[2]
            hkv = hk[nb : nb + cnt]
            pxv = px[nb : nb + cnt]
            pyv = py[nb : nb + cnt]
            pzv = pz[nb : nb + cnt]
            for kk in range(cnt):
                hkv[kk] = ((((k_lo + kk) & _MASK) * pa) & _MASK) ^ h0
                pxv[kk] = bx + kk * s0
                pyv[kk] = by + kk * s1
                pzv[kk] = bz + kk * s2
            nb += cnt
    if nb > 0:
        _bin_batch(nb, hk, px, py, pz, a, cst, jit_mat, amp_lut, echo, dims, exp_c, atan_c, scr, iscr)
    return n_cells


@njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def _unpad_add(out, a, ns, nl):
    """out (ns*nl*2) += interior of the padded accumulator a ((ns+2)*(nl+2)*2)."""
    nlp = nl + 2
    for i in range(ns):
        src = 2 * ((i + 1) * nlp + 1)
        dst = 2 * i * nl
        for k in range(2 * nl):
            out[dst + k] += a[src + k]


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _render_slab_parallel(
    iu_range, iv_range, axes, primes, seed, R, t, d, fan, thick, jit_mat, jit_off, amp_lut, geom,
    echo, echo_dims, plane_geom, ns, nl, exp_c, atan_c, t_max, nblocks,
):
    nu = iu_range[1] - iu_range[0] + 1
    acc = np.zeros((nblocks, (ns + 2) * (nl + 2) * 2), dtype=np.float32)
    counts = np.zeros(nblocks, dtype=np.int64)
    for b in prange(nblocks):
        counts[b] = _slab_block(
            iu_range[0] + (nu * b) // nblocks, iu_range[0] + (nu * (b + 1)) // nblocks, iv_range, axes, primes,
            seed, R, t, d, fan, thick, jit_mat, jit_off, amp_lut, geom, echo, echo_dims,
            plane_geom, ns, nl, acc[b], exp_c, atan_c, t_max,
        )
    out = np.zeros(ns * nl * 2, dtype=np.float32)
    for b in range(nblocks):
        _unpad_add(out, acc[b], ns, nl)
    return out, counts.sum()


@njit(cache=True, nogil=True, error_model="numpy")
def _render_slab_serial(
    iu_range, iv_range, axes, primes, seed, R, t, d, fan, thick, jit_mat, jit_off, amp_lut, geom,
    echo, echo_dims, plane_geom, ns, nl, exp_c, atan_c, t_max, nblocks,
):
    nu = iu_range[1] - iu_range[0] + 1
    acc = np.empty((ns + 2) * (nl + 2) * 2, dtype=np.float32)
    out = np.zeros(ns * nl * 2, dtype=np.float32)
    n = 0
    for b in range(nblocks):
        acc[:] = 0.0
        n += _slab_block(
            iu_range[0] + (nu * b) // nblocks, iu_range[0] + (nu * (b + 1)) // nblocks, iv_range, axes, primes,
            seed, R, t, d, fan, thick, jit_mat, jit_off, amp_lut, geom, echo, echo_dims,
            plane_geom, ns, nl, acc, exp_c, atan_c, t_max,
        )
        _unpad_add(out, acc, ns, nl)
    return out, n


def render_slab(*args, parallel: bool = True):
    """Fused lattice walk + binning (arguments: see ``usnav.sim.bmode._render_slab_compiled``).

    Returns (bins (ns * nl * 2,) float32 interleaved complex, number of lattice cells visited).
    ``parallel``: split the blocks over numba's threads (one frame at a time) or
    run them on the calling thread (frames rendered concurrently); same bytes.
    """
    f = _render_slab_parallel if parallel else _render_slab_serial
    return f(*args, N_BLOCKS)


# ----------------------------------------------------------------------------- post-processing (serial, nogil)


@njit(cache=True, inline="always", error_model="numpy")
def _axis_weights(c, n):
    """Clamped ("border") linear interpolation along one axis: (lower index, upper index, fraction)."""
    c = min(max(c, 0.0), n - 1.0)
    i0 = min(int(c), max(n - 2, 0))
    i1 = min(i0 + 1, n - 1)
    return i0, i1, c - i0


@njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def sample_beam_tissue(props, M, px, py, offs, mid):
    """Trilinear ("border" padding, as ``Scene.sample``) tissue maps on a coarse beam grid.

    props (3, n0, n1, n2) float32; M (3, 4) voxel <- image-mm; px, py (nr, nl) image-mm
    in-plane positions; offs (P,) elevations.  Returns echo (P, nr, nl) in every
    plane and impedance, attenuation (nr, nl) in plane ``mid``.
    """
    P = offs.shape[0]
    nr, nl = px.shape
    n0, n1, n2 = props.shape[1], props.shape[2], props.shape[3]
    echo = np.empty((P, nr, nl), dtype=np.float32)
    imp = np.empty((nr, nl), dtype=np.float32)
    att = np.empty((nr, nl), dtype=np.float32)
    for p in range(P):
        z = offs[p]
        nch = 3 if p == mid else 1
        for i in range(nr):
            for j in range(nl):
                x = px[i, j]
                y = py[i, j]
                a0, b0, f0 = _axis_weights(M[0, 0] * x + M[0, 1] * y + M[0, 2] * z + M[0, 3], n0)
                a1, b1, f1 = _axis_weights(M[1, 0] * x + M[1, 1] * y + M[1, 2] * z + M[1, 3], n1)
                a2, b2, f2 = _axis_weights(M[2, 0] * x + M[2, 1] * y + M[2, 2] * z + M[2, 3], n2)
                for ch in range(nch):
                    v00 = props[ch, a0, a1, a2] * (1.0 - f2) + props[ch, a0, a1, b2] * f2
                    v01 = props[ch, a0, b1, a2] * (1.0 - f2) + props[ch, a0, b1, b2] * f2
                    v10 = props[ch, b0, a1, a2] * (1.0 - f2) + props[ch, b0, a1, b2] * f2
                    v11 = props[ch, b0, b1, a2] * (1.0 - f2) + props[ch, b0, b1, b2] * f2
                    v = (v00 * (1.0 - f1) + v01 * f1) * (1.0 - f0) + (v10 * (1.0 - f1) + v11 * f1) * f0
                    if ch == 0:
                        echo[p, i, j] = v
                    elif ch == 1:
                        imp[i, j] = v
                    else:
                        att[i, j] = v
    return echo, imp, att


@njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def _axpy(w, x, x0, y, y0, n):
    """y[y0 : y0 + n] += w * x[x0 : x0 + n] (1D float32)."""
    xs = x[x0 : x0 + n]  # views: indices from range() need no negative-index handling (vectorised)
    ys = y[y0 : y0 + n]
    for q in range(n):
        ys[q] += w * xs[q]


@njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def psf_convolve(bins, kl, hl, ka, ha):
    """Separable Gaussian envelope PSF on the complex beam grid (interleaved float32 (ns, 2 nl)).

    Lateral: row ``i`` convolved with ``kl[i, :2 hl[i] + 1]`` (depth-dependent width),
    then axial with ``ka[:2 ha + 1]``; zero outside the grid (a linear convolution).
    """
    ns = bins.shape[0]
    m = bins.shape[1]  # 2 * nl
    src = bins.ravel()
    tmp = np.zeros(ns * m, dtype=np.float32)
    for i in range(ns):
        h = hl[i]
        base = i * m
        for k in range(2 * h + 1):
            sft = 2 * (k - h)  # out[j] += w * in[j + k - h]
            lo = max(0, -sft)
            hi = min(m, m - sft)
            _axpy(kl[i, k], src, base + lo + sft, tmp, base + lo, hi - lo)
    out = np.zeros(ns * m, dtype=np.float32)
    for i in range(ns):
        for k in range(2 * ha + 1):
            r = i + k - ha
            if r >= 0 and r < ns:
                _axpy(ka[k], tmp, r * m, out, i * m, m)
    return out.reshape(ns, m)


@njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def envelope(s, scale, gain_c, spec_c, fdr, fl, tgc, noise_e, noise_var):
    """Normalise the speckle in place (``s[i] *= scale[i]``) and return the envelope (ns, nl) float32.

    ``env = sqrt(|s|^2 g^2 + (spec g)^2 + noise_var * E) * tgc`` with the coarse-grid
    gain ``g`` and specular echo ``spec`` (nearest upsampling by (fdr, fl), edge
    values beyond), ``E`` standard exponential (sum of two squared Gaussians / 2).
    """
    ns = s.shape[0]
    nl = s.shape[1] // 2
    nrc, nlc = gain_c.shape
    env = np.empty((ns, nl), dtype=np.float32)
    for i in range(ns):
        ic = min(i // fdr, nrc - 1)
        sc = scale[i]
        t = tgc[i]
        for j in range(nl):
            jc = min(j // fl, nlc - 1)
            re = s[i, 2 * j] * sc
            im = s[i, 2 * j + 1] * sc
            s[i, 2 * j] = re
            s[i, 2 * j + 1] = im
            g = gain_c[ic, jc]
            sp = spec_c[ic, jc] * g
            env[i, j] = math.sqrt((re * re + im * im) * g * g + sp * sp + noise_var * noise_e[i, j]) * t
    return env


LOG2_C = _padded(poly_fit(np.log2, 1.0, 2.0, tol=1e-6, max_terms=10), 10)  # log2(m), 1 <= m < 2


@njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def log_compress(env, floor_db, gain):
    """Grey levels ``clip((20 log10(env) - floor_db) * gain, 0, 255)`` (float32, same shape as env >= 0).

    ``log2(env)`` from the float's exponent bits and a polynomial of the
    mantissa (|error| < 1e-6, i.e. < 1e-5 dB): branch-free and vectorised.
    """
    e = np.ascontiguousarray(env).ravel()
    bits = e.view(np.int32)
    n = e.shape[0]
    mant = np.empty(n, dtype=np.int32)
    expo = np.empty(n, dtype=np.float32)
    for k in range(n):
        b = bits[k]
        expo[k] = np.float32((b >> 23) - 127)
        mant[k] = (b & 0x7FFFFF) | 0x3F800000
    m = mant.view(np.float32)
    f32 = np.float32
    c0, c1, c2, c3, c4, c5, c6, c7, c8, c9 = (f32(LOG2_C[0]), f32(LOG2_C[1]), f32(LOG2_C[2]), f32(LOG2_C[3]),
                                              f32(LOG2_C[4]), f32(LOG2_C[5]), f32(LOG2_C[6]), f32(LOG2_C[7]),
                                              f32(LOG2_C[8]), f32(LOG2_C[9]))
    db_per_log2 = f32(20.0 * math.log10(2.0) * gain)
    off = f32(floor_db * gain)
    lo = f32(0.0)
    hi = f32(255.0)
    out = np.empty(n, dtype=np.float32)
    for k in range(n):
        x = m[k]
        p = ((((((((c9 * x + c8) * x + c7) * x + c6) * x + c5) * x + c4) * x + c3) * x + c2) * x + c1) * x + c0
        out[k] = min(max((expo[k] + p) * db_per_log2 - off, lo), hi)
    return out.reshape(env.shape)


@njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def scan_convert_u8(grey, inside_flat, flat_index, weight, n_pixels):
    """Bilinear scan conversion of a polar grey image to a flat uint8 frame (0 outside the fan)."""
    g = grey.ravel()
    out = np.zeros(n_pixels, dtype=np.uint8)
    for n in range(inside_flat.shape[0]):
        v = (g[flat_index[n, 0]] * weight[n, 0] + g[flat_index[n, 1]] * weight[n, 1]
             + g[flat_index[n, 2]] * weight[n, 2] + g[flat_index[n, 3]] * weight[n, 3])
        out[inside_flat[n]] = np.uint8(np.rint(v))
    return out
