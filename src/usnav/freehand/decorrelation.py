"""Classical trackerless tracking: image registration in plane, speckle decorrelation out of plane.

No training. For every adjacent pair (frame n-1, frame n), on frames
area-downsampled to about 0.45 mm pixels (the *analysis* grid):

1. **In-plane motion** (tx, ty, rz): phase correlation of a 4 x 4 grid of
   patches gives each patch's in-plane displacement (sub-pixel by a parabola
   through the peak); a least-squares small-angle rigid fit of the patch
   displacements gives (tx, ty, rz).
2. **Out-of-plane distance**: on a grid of depth bands x lateral columns, the
   Pearson correlation of each patch with the previous frame (best of the
   integer shifts within +-1 pixel of the in-plane prediction) is turned into
   an unsigned elevational distance by the *calibration curve* of its depth
   band: correlation vs elevational shift measured on the simulator's speckle
   (its Gaussian elevational beam profile, :mod:`usnav.sim.probe`) with
   exactly this preprocessing. :func:`calibrate` renders that curve; the table
   shipped in ``decorrelation_calibration.json`` was made by
   ``python -m usnav.freehand.decorrelation``.
3. **Out-of-plane motion**: the unsigned distances are fitted by a plane
   ``|dz(x, y)| = a + b x + c y`` (the displacement field of a small rigid
   motion, assumed not to change sign inside the frame), giving
   ``tz = s a``, ``ry = -s b``, ``rx = s c`` with a sign ``s``.
4. **Sign rule** (decorrelation gives distances only): the sweep starts in +z
   (elevation) and keeps the previous frame's sign, except that it flips after
   a *turning point*: a local minimum of the smoothed out-of-plane speed that
   falls below half its local median (the probe stops and comes back, as when
   fanning side to side). For monotone sweeps use ``sign_rule="monotone"``.

Local transforms (frame n -> frame n-1) are chained into global ones.
Depends on numpy and torch only (relative imports), so it can be vendored.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

try:
    from usnav.geometry.tracking import chain_local
except ImportError:  # vendored into a submission folder without usnav
    def chain_local(T_prev_from_current):
        """Globals (N-1, 4, 4) from locals: G[n] = L[1] @ ... @ L[n]."""
        L = np.asarray(T_prev_from_current, dtype=np.float64)
        out = np.empty_like(L)
        acc = np.eye(4)
        for i in range(len(L)):
            acc = acc @ L[i]
            out[i] = acc
        return out

__all__ = ["estimate_transforms", "pair_features", "feature_vectors", "transforms_from_features", "N_FEATURES", "calibrate", "load_calibration", "CALIBRATION_FILE", "ANALYSIS_SPACING_MM"]

CALIBRATION_FILE = Path(__file__).with_name("decorrelation_calibration.json")
ANALYSIS_SPACING_MM = 0.45
N_BANDS = 6  # depth bands of the estimation grid (over the imaged tissue)
CALIB_BANDS = 12  # depth bands of the calibration table (over the whole field of view), chosen by depth
N_COLUMNS = 4
_MAX_SHIFT_MM = 3.0


# --------------------------------------------------------------------------- preprocessing


def analysis_factor(T_mm_from_pixel) -> int:
    """Integer downsampling factor bringing the pixel spacing near 0.45 mm."""
    sx, sy = float(T_mm_from_pixel[0][0]), float(T_mm_from_pixel[1][1])
    return max(1, int(round(ANALYSIS_SPACING_MM / max(sx, sy))))


def _downsample(frames: np.ndarray, factor: int) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(frames)).float()
    if factor > 1:
        n, h, w = x.shape
        h2, w2 = h // factor * factor, w // factor * factor
        x = F.avg_pool2d(x[:, None, :h2, :w2], factor)[:, 0]
    return x.numpy()


def _fan_mask(frames: np.ndarray) -> np.ndarray:
    """Pixels non-black in most of the given frames (the imaging fan)."""
    return (frames > 0).mean(0) > 0.5


def _patch_grid(mask: np.ndarray, n_rows: int, n_cols: int) -> list[tuple[int, slice, slice]]:
    """(band, row slice, col slice) of a rows x cols grid over the fan's bounding rows, keeping patches mostly in the fan."""
    rows = np.flatnonzero(mask.any(1))
    if len(rows) < n_rows * 4:
        rows = np.arange(mask.shape[0])
    r_edges = np.linspace(rows[0], rows[-1] + 1, n_rows + 1).astype(int)
    out = []
    for b in range(n_rows):
        rs = slice(r_edges[b], r_edges[b + 1])
        cols = np.flatnonzero(mask[rs].mean(0) > 0.9)
        if len(cols) < n_cols * 4:
            continue
        c_edges = np.linspace(cols[0], cols[-1] + 1, n_cols + 1).astype(int)
        for c in range(n_cols):
            out.append((b, rs, slice(c_edges[c], c_edges[c + 1])))
    return out


# --------------------------------------------------------------------------- calibration


def load_calibration(path: str | Path | None = None) -> dict:
    """``{"shifts_mm": [...], "bands": [[corr per shift] per depth band], ...}``."""
    return json.loads(Path(path or CALIBRATION_FILE).read_text())


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def calibrate(shifts_mm=None, seeds=(1, 2, 3), frame_hw=(480, 640)) -> dict:
    """Measure correlation vs elevational shift per depth band on simulated speckle.

    Renders a homogeneous scatterer medium (usnav.sim, attenuation matched to the
    TGC) at several elevational offsets of the image plane and applies exactly
    the estimator's preprocessing. Needs :mod:`usnav.sim`.
    """
    from usnav.sim.bmode import render_frame
    from usnav.sim.probe import default_probe
    from usnav.sim.scene import homogeneous_scene

    shifts = np.asarray(shifts_mm if shifts_mm is not None else
                        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0])
    probe = default_probe(*frame_hw)
    S = np.diag([probe.spacing_mm[0], probe.spacing_mm[1], 1.0, 1.0])
    factor = analysis_factor(S)
    R = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])  # image x -> world x, y (depth) -> -z, z -> world y
    sums = None
    for seed in seeds:
        scene = homogeneous_scene(seed=seed, attenuation=0.7)
        frames = []
        for d in shifts:
            T = np.eye(4)
            T[:3, :3] = R
            T[:3, 3] = [-70.0, -10.0 + d, 5.0]
            frames.append(render_frame(scene, T, probe))
        small = _downsample(np.stack(frames), factor)
        grid = _patch_grid(_fan_mask(small), CALIB_BANDS, N_COLUMNS)
        table = np.zeros((CALIB_BANDS, len(shifts)))
        counts = np.zeros(CALIB_BANDS)
        depth = np.zeros((CALIB_BANDS, 2))
        for b, rs, _ in grid:  # image-mm depth range of each band (rows of the analysis grid)
            depth[b] = [(rs.start * factor + (factor + 1) / 2) * S[1, 1], ((rs.stop - 1) * factor + (factor + 1) / 2) * S[1, 1]]
        for b, rs, cs in grid:
            counts[b] += 1
            for k in range(len(shifts)):
                table[b, k] += _corr(small[0, rs, cs], small[k, rs, cs])
        table /= np.maximum(counts, 1)[:, None]
        sums = table if sums is None else sums + table
    table = sums / len(seeds)
    keep = depth[:, 1] > 0  # bands without a patch (above the fan's full width) are dropped
    table, depth = table[keep], depth[keep]
    return {"shifts_mm": shifts.tolist(), "bands": table.tolist(), "band_depth_mm": depth.tolist(),
            "n_bands": int(keep.sum()), "n_columns": N_COLUMNS,
            "analysis_spacing_mm": ANALYSIS_SPACING_MM, "frame_hw": list(frame_hw), "seeds": list(seeds),
            "source": "usnav.sim homogeneous speckle, python -m usnav.freehand.decorrelation"}


def distance_from_correlation(rho: np.ndarray, band: np.ndarray, calib: dict) -> np.ndarray:
    """Unsigned elevational distance (mm) of correlations ``rho`` measured in depth bands ``band``."""
    shifts = np.asarray(calib["shifts_mm"])
    table = np.minimum.accumulate(np.asarray(calib["bands"]), axis=1)  # force monotone decreasing
    out = np.empty(rho.shape)
    for b in np.unique(band):
        sel = band == b
        curve = table[min(int(b), len(table) - 1)]
        out[sel] = np.interp(-rho[sel], -curve, shifts)  # increasing in -rho
    return np.clip(out, 0.0, _MAX_SHIFT_MM)


# --------------------------------------------------------------------------- estimation


def _phase_shift(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sub-pixel shifts (n, 2) (rows, cols) d with b(x) ~ a(x - d), for patch stacks (n, h, w)."""
    n, h, w = a.shape
    win = torch.outer(torch.hann_window(h, periodic=False), torch.hann_window(w, periodic=False))
    A = torch.fft.rfft2((a - a.mean((1, 2), keepdim=True)) * win)
    B = torch.fft.rfft2((b - b.mean((1, 2), keepdim=True)) * win)
    X = B * A.conj()
    r = torch.fft.irfft2(X / (X.abs() + 1e-6), s=(h, w))
    flat = r.reshape(n, -1).argmax(1)
    i, j = flat // w, flat % w
    out = torch.empty(n, 2)
    for axis, (idx, size) in enumerate(((i, h), (j, w))):
        im, ip = (idx - 1) % size, (idx + 1) % size
        if axis == 0:
            c0, cm, cp = r[torch.arange(n), idx, j], r[torch.arange(n), im, j], r[torch.arange(n), ip, j]
        else:
            c0, cm, cp = r[torch.arange(n), i, idx], r[torch.arange(n), i, im], r[torch.arange(n), i, ip]
        den = cm - 2 * c0 + cp
        frac = torch.where(den.abs() > 1e-9, 0.5 * (cm - cp) / den, torch.zeros_like(den)).clamp(-0.5, 0.5)
        pos = idx.float() + frac
        out[:, axis] = torch.where(pos > size / 2, pos - size, pos)
    return out


def _matrix(params: np.ndarray) -> np.ndarray:
    """(n, 4, 4) from (n, 6) (rx, ry, rz radians, tx, ty, tz mm), R = Rz Ry Rx."""
    from .models import matrix_from_params_deg

    p = params.copy()
    p[:, :3] = np.degrees(p[:, :3])
    return matrix_from_params_deg(torch.from_numpy(p)).numpy()


def apply_sign_rule(speed: np.ndarray, rule: str = "turning-point") -> np.ndarray:
    """Signs (n,) of the out-of-plane motion from unsigned speeds (n,) (see the module docstring)."""
    n = len(speed)
    signs = np.ones(n)
    if rule == "monotone" or n < 5:
        return signs
    if rule != "turning-point":
        raise ValueError(f"unknown sign rule {rule!r}")
    k = 5
    smooth = np.convolve(np.pad(speed, (k // 2, k // 2), mode="edge"), np.ones(k) / k, mode="valid")
    s = 1.0
    last_flip = -10
    for i in range(n):
        if 0 < i < n - 1 and smooth[i] < smooth[i - 1] and smooth[i] <= smooth[i + 1] and i - last_flip > 5:
            local = np.median(smooth[max(0, i - 25) : i + 26])
            if smooth[i] < 0.5 * local:
                s = -s
                last_flip = i
        signs[i] = s
    return signs


def _warp(prev: np.ndarray, params: np.ndarray, sx: float, sy: float, off_x: float, off_y: float,
          box: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Resample previous frames (m, h, w) into the current frames' grid: out(p) = prev(T p),
    T the in-plane rigid motion (m, 3) (tx, ty mm, rz rad) of image-mm (analysis pixel j at x = off_x + j sx).
    Only the pixels of ``box`` (r0, r1, c0, c1) are computed (zeros elsewhere). Returns the frames and a
    mask of the pixels whose source lies inside the previous frame."""
    m, h, w = prev.shape
    r0, r1, c0, c1 = box or (0, h, 0, w)
    bh, bw = r1 - r0, c1 - c0
    # normalised coordinates (align_corners=True) of the box -> image-mm -> T -> image-mm -> normalised source
    out_to_mm = np.array([[sx * (bw - 1) / 2, 0, off_x + sx * (c0 + (bw - 1) / 2)],
                          [0, sy * (bh - 1) / 2, off_y + sy * (r0 + (bh - 1) / 2)], [0, 0, 1.0]])
    src_to_mm = np.array([[sx * (w - 1) / 2, 0, off_x + sx * (w - 1) / 2], [0, sy * (h - 1) / 2, off_y + sy * (h - 1) / 2],
                          [0, 0, 1.0]])
    T = np.zeros((m, 3, 3))
    c, s_ = np.cos(params[:, 2]), np.sin(params[:, 2])
    T[:, 0, 0], T[:, 0, 1], T[:, 0, 2] = c, -s_, params[:, 0]
    T[:, 1, 0], T[:, 1, 1], T[:, 1, 2] = s_, c, params[:, 1]
    T[:, 2, 2] = 1.0
    theta = torch.from_numpy((np.linalg.inv(src_to_mm) @ T @ out_to_mm)[:, :2]).float()
    grid = F.affine_grid(theta, [m, 1, bh, bw], align_corners=True)
    sub = F.grid_sample(torch.from_numpy(np.ascontiguousarray(prev, dtype=np.float32))[:, None], grid,
                        mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]
    out = np.zeros((m, h, w), dtype=np.float32)
    inside = np.zeros((m, h, w), dtype=bool)
    out[:, r0:r1, c0:c1] = sub.numpy()
    inside[:, r0:r1, c0:c1] = (grid.abs() <= 1.0).all(-1).numpy()
    return out, inside


def _compose_inplane(p1: np.ndarray, p2: np.ndarray) -> np.ndarray:
    """(tx, ty, rz) of T1 @ T2 for in-plane rigid motions (m, 3)."""
    c, s_ = np.cos(p1[:, 2]), np.sin(p1[:, 2])
    return np.stack([p1[:, 0] + c * p2[:, 0] - s_ * p2[:, 1], p1[:, 1] + s_ * p2[:, 0] + c * p2[:, 1],
                     p1[:, 2] + p2[:, 2]], 1)


def _patch_corr(a: np.ndarray, b: np.ndarray, ok: np.ndarray, grid) -> np.ndarray:
    """Pearson correlation (m, K) of aligned frames a, b (m, h, w) in each patch; nan where a patch is
    not fully covered by the aligned frame (``ok``)."""
    rho = np.full((len(a), len(grid)), np.nan)
    for k, (_, rs, cs) in enumerate(grid):
        pa = a[:, rs, cs].reshape(len(a), -1)
        pb = b[:, rs, cs].reshape(len(b), -1)
        pa = pa - pa.mean(1, keepdims=True)
        pb = pb - pb.mean(1, keepdims=True)
        den = np.sqrt((pa * pa).sum(1) * (pb * pb).sum(1))
        r = np.where(den > 0, (pa * pb).sum(1) / np.maximum(den, 1e-12), 0.0)
        full = ok[:, rs, cs].reshape(len(a), -1).all(1)
        rho[:, k] = np.where(full, r, np.nan)
    return rho


def relative_signs(d_prev: np.ndarray, d_cur: np.ndarray, e: np.ndarray, min_mm: float = 0.12,
                   max_mm: float = 1.2) -> np.ndarray:
    """Sign of (z_n - z_n-1) times that of (z_n-1 - z_n-2) from unsigned patch distances (m, K):
    d_prev = |dz| of pair n-1, d_cur of pair n, e = |z_n - z_n-2| (frames two apart). Same signs
    make e ~ d_prev + d_cur, opposite signs e ~ |d_cur - d_prev|. Returns (m,) in {+1, -1}, +1 when
    undecidable (small motions, saturated distances, no valid patch)."""
    same = np.abs(e - (d_prev + d_cur))
    opp = np.abs(e - np.abs(d_cur - d_prev))
    use = np.isfinite(e) & np.isfinite(d_prev) & np.isfinite(d_cur) & (e < max_mm) & (d_prev < max_mm) & \
        (d_cur < max_mm) & (np.minimum(d_prev, d_cur) > min_mm)
    vote = np.where(use, np.sign(same - opp), 0.0).sum(1)  # > 0: opposite fits better
    n_use = use.sum(1)
    return np.where((n_use >= 3) & (vote > 0.5 * n_use), -1.0, 1.0)


def fit_abs_plane(Az: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Planes (m, 3) ``(a, b, c)`` with ``|a + b x + c y| ~ dist`` at the patch centres (rows of ``Az`` =
    (1, x, y)) from unsigned distances (m, K) (nan: unused patch).

    The out-of-plane displacement of a rigid motion is a plane in (x, y) that may change sign inside
    the image (fanning about the probe's contact point moves the near field one way and the deep
    field the other): each candidate sign pattern (no change, or a change across one of the
    depth / lateral lines between patch centres) is fitted by least squares on the signed
    distances; the pattern whose |plane| fits best wins. Planes are returned with a >= 0 at the
    patches' mean position (the sign is decided separately)."""
    m, K = dist.shape
    xs, ys = Az[:, 1], Az[:, 2]
    cuts = [np.ones(K)]
    for v, coord in ((np.unique(ys), ys), (np.unique(xs), xs)):
        # a cut needs two distinct patch rows (columns) on each side, or any |plane| would fit
        for lo, hi in list(zip(v[:-1], v[1:]))[1:-1]:
            cuts.append(np.where(coord < 0.5 * (lo + hi), -1.0, 1.0))
    valid = np.isfinite(dist)
    d0 = np.nan_to_num(dist)
    best = np.full(m, np.inf)
    planes = np.zeros((m, 3))
    for sgn in cuts:
        signed = d0 * sgn
        if valid.all():
            P = np.linalg.lstsq(Az, signed.T, rcond=None)[0].T
        else:
            P = np.zeros((m, 3))
            for i in range(m):
                v = valid[i]
                if v.sum() >= 3:
                    P[i] = np.linalg.lstsq(Az[v], signed[i, v], rcond=None)[0]
        res = np.where(valid, (np.abs(P @ Az.T) - d0) ** 2, 0.0).sum(1)
        better = res < best - 1e-12
        best = np.where(better, res, best)
        planes[better] = P[better]
    ref = Az.mean(0)
    return planes * np.where(planes @ ref < 0, -1.0, 1.0)[:, None]


def pair_features(
    frames, T_mm_from_pixel, calibration: dict | None = None, chunk: int = 64,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Measurements of every adjacent pair of a scan's frames (N, H, W) uint8 (steps 1-2 of the module doc).

    Returns a dict of numpy arrays: ``inplane`` (N-1, 3) (tx, ty mm, rz rad) of frame n -> n-1;
    ``rho`` and ``rho2`` (N-1, 24) the patch correlations of frame n with the aligned frame n-1 and
    frame n-2 on the 6 x 4 grid of depth bands x columns (nan: no such patch or pair);
    ``centres`` (24, 2) patch centres (image-mm, nan if absent); ``curve`` (24,) calibration curve
    index of each patch (-1: absent or insensitive); ``dist``/``dist2`` (N-1, 24) the calibrated
    unsigned elevational distances (nan where the curve is unused).
    """
    calib = calibration or load_calibration()
    S = np.asarray(T_mm_from_pixel, dtype=np.float64)
    factor = analysis_factor(S)
    while factor > 1 and min(int(frames.shape[1]), int(frames.shape[2])) // factor < 48:  # tiny frames
        factor -= 1
    sx, sy = S[0, 0] * factor, S[1, 1] * factor
    # image-mm of analysis pixel (i, j) (0-based): the centre of its factor x factor block of 1-based pixels
    off_x, off_y = (factor + 1) / 2 * S[0, 0], (factor + 1) / 2 * S[1, 1]
    n = int(frames.shape[0])
    head = _downsample(np.asarray(frames[: min(n, 20)]), factor)
    mask = _fan_mask(head)
    grid4 = _patch_grid(mask, 4, 4)  # in-plane registration patches

    def centre(rs, cs):
        return off_x + 0.5 * (cs.start + cs.stop - 1) * sx, off_y + 0.5 * (rs.start + rs.stop - 1) * sy

    def curve_of(b, rs, cs):  # calibration curve of a patch: the band at its depth
        if "band_depth_mm" not in calib:  # old tables: bands of the same grid
            return b
        depth = np.asarray(calib["band_depth_mm"]).mean(1)
        return int(np.argmin(np.abs(depth - centre(rs, cs)[1])))

    # decorrelation patches: all of the 6 x 4 grid (features); the calibrated distances use those
    # whose calibration curve is sensitive (drops below 0.5 within the calibrated range; the near
    # field and the far field, where the elevational beam is wide, are left out)
    sensitive = {b for b, curve in enumerate(calib["bands"]) if min(curve) < 0.5}
    gridf, slots, count = [], [], {}
    for b, rs, cs in _patch_grid(mask, N_BANDS, N_COLUMNS):
        slot = b * N_COLUMNS + count.get(b, 0)
        count[b] = count.get(b, 0) + 1
        if rs.stop - rs.start >= 3 and cs.stop - cs.start >= 3:
            gridf.append((curve_of(b, rs, cs), rs, cs))
            slots.append(slot)
    if not gridf or not grid4:
        raise ValueError(f"frames of {mask.shape[0]}x{mask.shape[1]} analysis pixels are too small for decorrelation")
    slots = np.array(slots)
    use = np.array([g[0] in sensitive for g in gridf])
    if not use.any():
        use[:] = True
    allp = grid4 + gridf
    box = (min(g[1].start for g in allp), max(g[1].stop for g in allp), min(g[2].start for g in allp),
           max(g[2].stop for g in allp))
    c4 = np.array([centre(rs, cs) for _, rs, cs in grid4])
    cf = np.array([centre(rs, cs) for _, rs, cs in gridf])
    bands = np.array([b for b, _, _ in gridf])  # calibration curve per patch
    A = np.zeros((2 * len(c4), 3))
    A[0::2, 0], A[1::2, 1] = 1.0, 1.0
    A[0::2, 2], A[1::2, 2] = -c4[:, 1], c4[:, 0]
    pinv = np.linalg.pinv(A)

    def inplane_step(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        disp = np.zeros((len(a), len(grid4), 2))
        for k, (_, rs, cs) in enumerate(grid4):
            disp[:, k] = _phase_shift(torch.from_numpy(np.ascontiguousarray(a[:, rs, cs])),
                                      torch.from_numpy(np.ascontiguousarray(b[:, rs, cs]))).numpy()
        # b(x) ~ a(x - d): tissue at p in frame n is at p + u in frame n-1, u = -d (mm)
        u = np.stack([-disp[..., 1] * sx, -disp[..., 0] * sy], -1).reshape(len(a), -1)
        return u @ pinv.T  # (m, 3) tx, ty, rz (small-angle fit, origin = image-mm origin)

    K = N_BANDS * N_COLUMNS
    inplane = np.zeros((n - 1, 3))
    rho = np.full((n - 1, len(gridf)), np.nan)
    rho2 = np.full((n - 1, len(gridf)), np.nan)  # frame n with frame n-2 (pair index n-1)
    carry = None  # last two analysis frames of the previous chunk
    for start in range(0, n, chunk):
        block = _downsample(np.asarray(frames[start : start + chunk]), factor)
        k0 = 0 if carry is None else len(carry)
        if carry is not None:
            block = np.concatenate([carry, block])
        base = start - k0  # frame index of block[0]
        carry = block[-2:]
        if len(block) < 2:
            continue
        # pairs (block[i-1], block[i]) not done yet: frame index of the current frame >= max(1, start)
        first = max(1, start) - base
        cur = np.arange(first, len(block))
        a_all, b_all = block[cur - 1], block[cur]
        # 1. in-plane: phase correlation per patch, refined once after warping the previous frame
        p1 = inplane_step(a_all, b_all)
        warped, _ = _warp(a_all, p1, sx, sy, off_x, off_y, box)
        params = _compose_inplane(p1, inplane_step(warped, b_all))
        inplane[base + cur - 1] = params
        # 2. out-of-plane: patch correlation of the current frame with the aligned previous frame
        warped, ok = _warp(a_all, params, sx, sy, off_x, off_y, box)
        rho[base + cur - 1] = _patch_corr(warped, b_all, ok, gridf)
        # frames two apart (for the relative sign)
        two = cur >= 2
        if two.any():
            c2 = cur[two]
            T2 = _compose_inplane(inplane[base + c2 - 2], inplane[base + c2 - 1])
            warped2, ok2 = _warp(block[c2 - 2], T2, sx, sy, off_x, off_y, box)
            rho2[base + c2 - 1] = _patch_corr(warped2, block[c2], ok2, gridf)
        if progress is not None:
            progress(2 * len(cur))

    def dist_of(r: np.ndarray) -> np.ndarray:
        d = distance_from_correlation(np.nan_to_num(r, nan=1.0).ravel(), np.tile(bands, len(r)), calib)
        return np.where(np.isfinite(r) & use[None], d.reshape(r.shape), np.nan)

    def full(x: np.ndarray) -> np.ndarray:
        out = np.full((len(x), K), np.nan)
        out[:, slots] = x
        return out

    centres = np.full((K, 2), np.nan)
    centres[slots] = cf
    curve = np.full(K, -1)
    curve[slots] = np.where(use, bands, -1)
    return {"inplane": inplane, "rho": full(rho), "rho2": full(rho2), "dist": full(dist_of(rho)),
            "dist2": full(dist_of(rho2)), "centres": centres, "curve": curve}


def transforms_from_features(feat: dict, sign_rule: str = "pairs") -> tuple[np.ndarray, np.ndarray]:
    """Steps 3-4: global and local transforms (N-1, 4, 4) from :func:`pair_features`."""
    used = feat["curve"] >= 0
    dist, dist2 = feat["dist"][:, used], feat["dist2"][:, used]
    cz = feat["centres"][used]
    n1 = len(dist)
    Az = np.stack([np.ones(len(cz)), cz[:, 0], cz[:, 1]], 1)
    planes = fit_abs_plane(Az, dist)
    if sign_rule == "pairs":
        r = np.ones(n1)
        if n1 > 1:
            r[1:] = relative_signs(dist[:-1], dist[1:], dist2[1:])
        s = np.cumprod(r)
    else:
        speed = np.abs(planes @ np.array([1.0, cz[:, 0].mean(), cz[:, 1].mean()]))
        s = apply_sign_rule(speed, sign_rule)
    inplane = feat["inplane"]
    params6 = np.zeros((n1, 6))
    params6[:, 0] = s * planes[:, 2]  # rx: dz grows with y
    params6[:, 1] = -s * planes[:, 1]  # ry: dz = -ry x
    params6[:, 2] = inplane[:, 2]
    params6[:, 3:5] = inplane[:, :2]
    params6[:, 5] = s * planes[:, 0]
    L = _matrix(params6)
    return chain_local(L), L


N_FEATURES = 3 + 5 * N_BANDS * N_COLUMNS + 4


def feature_vectors(feat: dict, sign_rule: str = "pairs") -> np.ndarray:
    """(N-1, N_FEATURES) float32 network input per pair: in-plane motion (tx, ty mm, rz deg), the
    patch correlations with frames n-1 and n-2 (0 where absent), patch validity, patch centres
    (/100 mm), the unsigned decorrelation plane at the patches' mean position and its slopes, and the
    relative sign of :func:`relative_signs`."""
    n1 = len(feat["inplane"])
    used = feat["curve"] >= 0
    cz = feat["centres"][used]
    Az = np.stack([np.ones(len(cz)), cz[:, 0], cz[:, 1]], 1)
    planes = fit_abs_plane(Az, feat["dist"][:, used])
    r = np.ones(n1)
    if n1 > 1:
        r[1:] = relative_signs(feat["dist"][:-1, used], feat["dist"][1:, used], feat["dist2"][1:, used])
    ref = Az.mean(0)
    cols = [feat["inplane"][:, :2], np.degrees(feat["inplane"][:, 2:3]),
            np.nan_to_num(feat["rho"]), np.nan_to_num(feat["rho2"]), np.isfinite(feat["rho"]).astype(float),
            np.broadcast_to(np.nan_to_num(feat["centres"]).reshape(1, -1) / 100.0, (n1, feat["centres"].size)),
            (planes @ ref)[:, None], planes[:, 1:] * 100.0, r[:, None]]
    return np.concatenate(cols, 1).astype(np.float32)


def estimate_transforms(
    frames, T_mm_from_pixel, calibration: dict | None = None, sign_rule: str = "pairs", chunk: int = 64,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Global and local transforms (N-1, 4, 4) float64, image-mm, of a scan's frames (N, H, W) uint8.

    sign_rule: ``pairs`` (default; relative signs from frames two apart, see :func:`relative_signs`),
    ``turning-point`` or ``monotone`` (see :func:`apply_sign_rule`).
    """
    feat = pair_features(frames, T_mm_from_pixel, calibration, chunk, progress)
    return transforms_from_features(feat, sign_rule)


if __name__ == "__main__":  # regenerate the shipped calibration table
    table = calibrate()
    CALIBRATION_FILE.write_text(json.dumps(table, indent=1) + "\n")
    print(json.dumps(table["bands"]))
