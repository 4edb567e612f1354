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

from usnav.geometry.tracking import chain_local

__all__ = ["estimate_transforms", "calibrate", "load_calibration", "CALIBRATION_FILE", "ANALYSIS_SPACING_MM"]

CALIBRATION_FILE = Path(__file__).with_name("decorrelation_calibration.json")
ANALYSIS_SPACING_MM = 0.45
N_BANDS = 6
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
        grid = _patch_grid(_fan_mask(small), N_BANDS, N_COLUMNS)
        table = np.zeros((N_BANDS, len(shifts)))
        counts = np.zeros(N_BANDS)
        for b, rs, cs in grid:
            counts[b] += 1
            for k in range(len(shifts)):
                table[b, k] += _corr(small[0, rs, cs], small[k, rs, cs])
        table /= np.maximum(counts, 1)[:, None]
        sums = table if sums is None else sums + table
    table = sums / len(seeds)
    return {"shifts_mm": shifts.tolist(), "bands": table.tolist(), "n_bands": N_BANDS, "n_columns": N_COLUMNS,
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


def estimate_transforms(
    frames, T_mm_from_pixel, calibration: dict | None = None, sign_rule: str = "turning-point", chunk: int = 64,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Global and local transforms (N-1, 4, 4) float64, image-mm, of a scan's frames (N, H, W) uint8."""
    calib = calibration or load_calibration()
    S = np.asarray(T_mm_from_pixel, dtype=np.float64)
    factor = analysis_factor(S)
    sx, sy = S[0, 0] * factor, S[1, 1] * factor
    n = int(frames.shape[0])
    head = _downsample(np.asarray(frames[: min(n, 20)]), factor)
    mask = _fan_mask(head)
    grid4 = _patch_grid(mask, 4, 4)  # in-plane registration patches
    # decorrelation patches, in the depth bands whose calibration curve is sensitive
    # (drops below 0.5 within the calibrated range; the near field and the far
    # field, where the elevational beam is wide, are left out)
    sensitive = {b for b, curve in enumerate(calib["bands"]) if min(curve) < 0.5}
    gridz = [g for g in _patch_grid(mask, N_BANDS, N_COLUMNS) if g[0] in sensitive] or \
        _patch_grid(mask, N_BANDS, N_COLUMNS)
    # margin so that the aligned patch of the previous frame stays inside it (smaller on tiny frames)
    m_ = 3 if min(min(rs.stop - rs.start, cs.stop - cs.start) for _, rs, cs in gridz) >= 16 else 1
    gridz = [(b, slice(rs.start + m_, rs.stop - m_), slice(cs.start + m_, cs.stop - m_)) for b, rs, cs in gridz
             if rs.stop - rs.start >= 2 * m_ + 3 and cs.stop - cs.start >= 2 * m_ + 3]
    if not gridz:
        raise ValueError(f"frames of {mask.shape[0]}x{mask.shape[1]} analysis pixels are too small for decorrelation")
    # patch centres in image-mm (1-based pixel centres of the analysis grid)
    def centre(rs, cs):
        return (0.5 * (cs.start + cs.stop - 1) * factor + (factor + 1) / 2) * S[0, 0], \
               (0.5 * (rs.start + rs.stop - 1) * factor + (factor + 1) / 2) * S[1, 1]

    c4 = np.array([centre(rs, cs) for _, rs, cs in grid4])
    cz = np.array([centre(rs, cs) for _, rs, cs in gridz])
    bands = np.array([b for b, _, _ in gridz])
    A = np.zeros((2 * len(c4), 3))
    A[0::2, 0], A[1::2, 1] = 1.0, 1.0
    A[0::2, 2], A[1::2, 2] = -c4[:, 1], c4[:, 0]
    pinv = np.linalg.pinv(A)
    Az = np.stack([np.ones(len(cz)), cz[:, 0], cz[:, 1]], 1)

    inplane = np.zeros((n - 1, 3))
    planes = np.zeros((n - 1, 3))
    prev_last = None
    for start in range(0, n, chunk):
        block = _downsample(np.asarray(frames[start : start + chunk]), factor)
        if prev_last is not None:
            block = np.concatenate([prev_last[None], block])
            base = start - 1
        else:
            base = start
        prev_last = block[-1]
        if len(block) < 2:
            continue
        a_all, b_all = block[:-1], block[1:]
        m = len(a_all)
        # 1. in-plane: phase correlation per patch
        disp = np.zeros((m, len(grid4), 2))
        for k, (_, rs, cs) in enumerate(grid4):
            d = _phase_shift(torch.from_numpy(np.ascontiguousarray(a_all[:, rs, cs])),
                             torch.from_numpy(np.ascontiguousarray(b_all[:, rs, cs]))).numpy()
            disp[:, k] = d  # (rows, cols) pixels: b(x) ~ a(x - d)
        # tissue at p in frame n is at p + u in frame n-1, u = -d (mm)
        u = np.stack([-disp[..., 1] * sx, -disp[..., 0] * sy], -1).reshape(m, -1)  # (m, 2K) x,y interleaved
        params = u @ pinv.T  # (m, 3) tx, ty, rz
        inplane[base : base + m] = params
        # 2. out-of-plane: patch correlation after in-plane alignment (best integer shift within +-1)
        rho = np.full((m, len(gridz)), -1.0)
        for k, (_, rs, cs) in enumerate(gridz):
            cx, cy = cz[k]
            ux = params[:, 0] - params[:, 2] * cy  # displacement of the patch centre, mm
            uy = params[:, 1] + params[:, 2] * cx
            for i in range(m):
                di0, dj0 = int(round(uy[i] / sy)), int(round(ux[i] / sx))
                best = -1.0
                for di in (di0 - 1, di0, di0 + 1):
                    for dj in (dj0 - 1, dj0, dj0 + 1):
                        r0, r1 = rs.start + di, rs.stop + di
                        c0, c1 = cs.start + dj, cs.stop + dj
                        if r0 < 0 or c0 < 0 or r1 > a_all.shape[1] or c1 > a_all.shape[2]:
                            continue
                        best = max(best, _corr(b_all[i, rs, cs], a_all[i, r0:r1, c0:c1]))
                rho[i, k] = best if best > -1.0 else np.nan  # nan: patch left the frame
        valid = np.isfinite(rho)
        dist = distance_from_correlation(np.nan_to_num(rho, nan=1.0).ravel(), np.tile(bands, m), calib).reshape(m, -1)
        if valid.all():
            planes[base : base + m] = np.linalg.lstsq(Az, dist.T, rcond=None)[0].T
        else:
            for i in range(m):
                v = valid[i]
                if v.sum() >= 3:
                    planes[base + i] = np.linalg.lstsq(Az[v], dist[i, v], rcond=None)[0]
        if progress is not None:
            progress(2 * m)
    speed = np.abs(planes @ np.array([1.0, cz[:, 0].mean(), cz[:, 1].mean()]))
    s = apply_sign_rule(speed, sign_rule)
    params6 = np.zeros((n - 1, 6))
    params6[:, 0] = s * planes[:, 2]  # rx: dz grows with y
    params6[:, 1] = -s * planes[:, 1]  # ry: dz = -ry x
    params6[:, 2] = inplane[:, 2]
    params6[:, 3:5] = inplane[:, :2]
    params6[:, 5] = s * planes[:, 0]
    L = _matrix(params6)
    return chain_local(L), L


if __name__ == "__main__":  # regenerate the shipped calibration table
    table = calibrate()
    CALIBRATION_FILE.write_text(json.dumps(table, indent=1) + "\n")
    print(json.dumps(table["bands"]))
