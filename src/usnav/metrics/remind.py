"""ReMIND2Reg / Learn2Reg scoring: TRE, TRE30, SDlogJ, folding fraction.

Conventions (FORMATS.md section 2):

- ``disp_vox``: (X, Y, Z, 3) displacement on the fixed grid, voxel units,
  channel k = displacement along array axis k, pull direction (the moving
  image is sampled at ``x + u(x)``).
- Landmarks: (N, 3) voxel indices on the stored array axes; voxel (0,0,0) is
  the centre of the first voxel.
- TRE per landmark: ``|| (x_f + u(x_f) - x_m) * spacing_mm ||`` with ``u(x_f)``
  interpolated per channel by cubic splines (``scipy.ndimage.map_coordinates``,
  order 3, mode 'constant', cval 0 outside), as in the Learn2Reg evaluation code.
- SDlogJ: standard deviation of ``log(det J)`` of ``x + u(x)`` with central
  differences, over the grid interior (2 voxels cropped at each border as the
  Learn2Reg code does); determinants are clipped to [1e-9, 1e9] before the log.
  (Some Learn2Reg evaluation versions add 3 before clipping; we follow
  FORMATS.md and do not.) The folding fraction is the share of interior
  voxels with ``det J <= 0``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "interpolate_displacement",
    "landmark_errors_mm",
    "tre_mm",
    "tre30_mm",
    "jacobian_determinant",
    "sdlogj",
    "folding_fraction",
    "PairScore",
    "score_pair",
]


def interpolate_displacement(disp_vox: np.ndarray, points_vox: np.ndarray) -> np.ndarray:
    """u at points: (X,Y,Z,3) field, (N,3) voxel points -> (N,3) voxels (cubic spline, 0 outside)."""
    from scipy.ndimage import map_coordinates

    pts = np.asarray(points_vox, dtype=np.float64).reshape(-1, 3)
    if len(pts) == 0:
        return np.zeros((0, 3))
    out = np.empty((len(pts), 3), dtype=np.float64)
    for k in range(3):
        ch = np.asarray(disp_vox[..., k], dtype=np.float64)
        out[:, k] = map_coordinates(ch, pts.T, order=3, mode="constant", cval=0.0)
    return out


def landmark_errors_mm(
    disp_vox: np.ndarray | None,
    fixed_vox: np.ndarray,
    moving_vox: np.ndarray,
    spacing_mm: np.ndarray | tuple[float, float, float],
) -> np.ndarray:
    """Per-landmark TRE (N,) mm; ``disp_vox=None`` gives the initial (identity) error."""
    f = np.asarray(fixed_vox, dtype=np.float64).reshape(-1, 3)
    m = np.asarray(moving_vox, dtype=np.float64).reshape(-1, 3)
    if f.shape != m.shape:
        raise ValueError(f"fixed {f.shape} and moving {m.shape} landmarks do not pair up")
    u = np.zeros_like(f) if disp_vox is None else interpolate_displacement(disp_vox, f)
    return np.linalg.norm((f + u - m) * np.asarray(spacing_mm, dtype=np.float64), axis=1)


def tre_mm(disp_vox, fixed_vox, moving_vox, spacing_mm) -> float:
    """Mean TRE over landmarks, mm."""
    return float(landmark_errors_mm(disp_vox, fixed_vox, moving_vox, spacing_mm).mean())


def hardest_fraction(initial_errors_mm: np.ndarray, fraction: float = 0.3) -> np.ndarray:
    """Indices of the ``fraction`` of landmarks with the largest initial error (at least one)."""
    n = len(initial_errors_mm)
    k = max(1, int(np.ceil(fraction * n)))
    return np.argsort(-np.asarray(initial_errors_mm), kind="stable")[:k]


def tre30_mm(disp_vox, fixed_vox, moving_vox, spacing_mm) -> float:
    """Mean TRE over the 30% of landmarks with the largest initial error (ceil, >= 1 landmark), mm."""
    init = landmark_errors_mm(None, fixed_vox, moving_vox, spacing_mm)
    err = landmark_errors_mm(disp_vox, fixed_vox, moving_vox, spacing_mm)
    return float(err[hardest_fraction(init)].mean())


def jacobian_determinant(disp_vox: np.ndarray, crop: int = 2) -> np.ndarray:
    """det of d(x + u)/dx by central differences, interior only: (X-2c, Y-2c, Z-2c) float64.

    Central differences ``(u[i+1] - u[i-1]) / 2`` on the voxel grid; the
    result excludes ``crop`` voxels at every border (crop >= 1).
    """
    if crop < 1:
        raise ValueError("crop must be >= 1 for central differences")
    u = np.asarray(disp_vox, dtype=np.float32)
    c = crop
    X, Y, Z = u.shape[:3]
    core = (slice(c, X - c), slice(c, Y - c), slice(c, Z - c))

    def d(axis: int, comp: int) -> np.ndarray:
        sl_p = list(core)
        sl_m = list(core)
        sl_p[axis] = slice(core[axis].start + 1, core[axis].stop + 1)
        sl_m[axis] = slice(core[axis].start - 1, core[axis].stop - 1)
        return (u[tuple(sl_p) + (comp,)].astype(np.float64) - u[tuple(sl_m) + (comp,)]) * 0.5

    # J[a, b] = delta_ab + d u_a / d x_b
    j = [[d(b, a) + (1.0 if a == b else 0.0) for b in range(3)] for a in range(3)]
    return (
        j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
        - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
        + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0])
    )


def sdlogj(disp_vox: np.ndarray, jac: np.ndarray | None = None, mask: np.ndarray | None = None) -> float:
    """Standard deviation of log(det J) (clipped to [1e-9, 1e9]) over the interior (optionally masked)."""
    jd = jacobian_determinant(disp_vox) if jac is None else jac
    v = np.log(np.clip(jd, 1e-9, 1e9))
    if mask is not None:
        v = v[mask[2:-2, 2:-2, 2:-2]]
    return float(v.std())


def folding_fraction(disp_vox: np.ndarray, jac: np.ndarray | None = None) -> float:
    """Fraction of interior voxels with det J <= 0."""
    jd = jacobian_determinant(disp_vox) if jac is None else jac
    return float(np.mean(jd <= 0))


@dataclass
class PairScore:
    """Scores of one registration pair (mm, fraction, seconds)."""

    pair: str
    n_landmarks: int
    tre_initial_mm: float
    tre_mm: float
    tre30_initial_mm: float
    tre30_mm: float
    sdlogj: float
    folding_fraction: float
    runtime_s: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def score_pair(
    name: str,
    disp_vox: np.ndarray,
    fixed_vox: np.ndarray,
    moving_vox: np.ndarray,
    spacing_mm,
    runtime_s: float | None = None,
) -> PairScore:
    """All metrics of one pair."""
    init = landmark_errors_mm(None, fixed_vox, moving_vox, spacing_mm)
    err = landmark_errors_mm(disp_vox, fixed_vox, moving_vox, spacing_mm)
    hard = hardest_fraction(init)
    jd = jacobian_determinant(disp_vox)
    return PairScore(
        pair=name,
        n_landmarks=len(err),
        tre_initial_mm=float(init.mean()),
        tre_mm=float(err.mean()),
        tre30_initial_mm=float(init[hard].mean()),
        tre30_mm=float(err[hard].mean()),
        sdlogj=sdlogj(disp_vox, jac=jd),
        folding_fraction=folding_fraction(disp_vox, jac=jd),
        runtime_s=runtime_s,
    )
