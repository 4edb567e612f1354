"""Rigid 4x4 transforms: compose, invert, apply, 6-DoF parameters, checks.

All functions accept a single matrix ``(4, 4)`` or a batch ``(..., 4, 4)`` and
work in float64.

Euler convention ("ZYX", as the TUS-REC baseline): the rotation is
``R = Rz(rz) @ Ry(ry) @ Rx(rx)`` with angles in radians, i.e. rotate about x
first, then y, then z, all about the fixed axes. 6-DoF parameter vectors are
``(rx, ry, rz, tx, ty, tz)``: angles in radians, translation in mm.
Quaternions are ``(w, x, y, z)`` with ``w >= 0``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

from usnav.errors import input_error

__all__ = [
    "apply",
    "check_rigid",
    "compose",
    "euler_zyx_from_matrix",
    "invert",
    "is_rigid",
    "matrix_from_euler_zyx",
    "matrix_from_params",
    "matrix_from_quaternion",
    "params_from_matrix",
    "quaternion_from_matrix",
    "rotation_from_euler_zyx",
    "translation_matrix",
]

F64 = NDArray[np.float64]


def _as_matrices(T: ArrayLike) -> F64:
    T = np.asarray(T, dtype=np.float64)
    if T.shape[-2:] != (4, 4):
        raise ValueError(f"expected (..., 4, 4) matrices, got shape {T.shape}")
    return T


def compose(*transforms: ArrayLike) -> F64:
    """Matrix product of the transforms, right to left: ``compose(A, B) = A @ B``."""
    if not transforms:
        return np.eye(4)
    result = _as_matrices(transforms[0])
    for T in transforms[1:]:
        result = result @ _as_matrices(T)
    return result


def invert(T: ArrayLike) -> F64:
    """Exact inverse of rigid transform(s): ``[R t] -> [R^T, -R^T t]``."""
    T = _as_matrices(T)
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    Rt = np.swapaxes(R, -1, -2)
    out = np.zeros_like(T)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, t)
    out[..., 3, 3] = 1.0
    return out


def apply(T: ArrayLike, points: ArrayLike) -> F64:
    """Map ``points`` (..., 3) by transform(s) ``T`` (4, 4) or broadcastable (..., 4, 4)."""
    T = _as_matrices(T)
    p = np.asarray(points, dtype=np.float64)
    if p.shape[-1] != 3:
        raise ValueError(f"points must have shape (..., 3), got {p.shape}")
    return np.einsum("...ij,...j->...i", T[..., :3, :3], p) + T[..., :3, 3]


def translation_matrix(t: ArrayLike) -> F64:
    """Pure translation by ``t`` (..., 3) mm."""
    t = np.asarray(t, dtype=np.float64)
    T = np.zeros(t.shape[:-1] + (4, 4))
    T[..., :3, :3] = np.eye(3)
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T


def rotation_from_euler_zyx(angles: ArrayLike) -> F64:
    """Rotation matrices (..., 3, 3) from angles (..., 3) = (rx, ry, rz) radians,
    ``R = Rz @ Ry @ Rx``."""
    a = np.asarray(angles, dtype=np.float64)
    cx, cy, cz = np.cos(a[..., 0]), np.cos(a[..., 1]), np.cos(a[..., 2])
    sx, sy, sz = np.sin(a[..., 0]), np.sin(a[..., 1]), np.sin(a[..., 2])
    R = np.empty(a.shape[:-1] + (3, 3))
    R[..., 0, 0] = cz * cy
    R[..., 0, 1] = cz * sy * sx - sz * cx
    R[..., 0, 2] = cz * sy * cx + sz * sx
    R[..., 1, 0] = sz * cy
    R[..., 1, 1] = sz * sy * sx + cz * cx
    R[..., 1, 2] = sz * sy * cx - cz * sx
    R[..., 2, 0] = -sy
    R[..., 2, 1] = cy * sx
    R[..., 2, 2] = cy * cx
    return R


def matrix_from_euler_zyx(angles: ArrayLike, translation: ArrayLike | None = None) -> F64:
    """4x4 transform(s) from Euler ZYX angles (..., 3) radians and translation (..., 3) mm."""
    R = rotation_from_euler_zyx(angles)
    T = np.zeros(R.shape[:-2] + (4, 4))
    T[..., :3, :3] = R
    if translation is not None:
        T[..., :3, 3] = np.asarray(translation, dtype=np.float64)
    T[..., 3, 3] = 1.0
    return T


def euler_zyx_from_matrix(T: ArrayLike) -> F64:
    """Angles (..., 3) = (rx, ry, rz) radians with ``R = Rz @ Ry @ Rx``.

    ``ry`` is in [-pi/2, pi/2]; at gimbal lock (|ry| = pi/2) ``rx`` is set to 0.
    """
    M = np.asarray(T, dtype=np.float64)
    R = M[..., :3, :3]
    sy = np.clip(-R[..., 2, 0], -1.0, 1.0)
    ry = np.arcsin(sy)
    cy = np.sqrt(R[..., 2, 1] ** 2 + R[..., 2, 2] ** 2)
    locked = cy < 1e-9
    rx = np.where(locked, 0.0, np.arctan2(R[..., 2, 1], R[..., 2, 2]))
    rz = np.where(
        locked,
        np.arctan2(-R[..., 0, 1], R[..., 1, 1]),
        np.arctan2(R[..., 1, 0], R[..., 0, 0]),
    )
    return np.stack([rx, ry, rz], axis=-1)


def matrix_from_params(params: ArrayLike) -> F64:
    """4x4 transform(s) from 6-DoF parameters (..., 6) = (rx, ry, rz, tx, ty, tz)."""
    p = np.asarray(params, dtype=np.float64)
    if p.shape[-1] != 6:
        raise ValueError(f"6-DoF parameters must have shape (..., 6), got {p.shape}")
    return matrix_from_euler_zyx(p[..., :3], p[..., 3:])


def params_from_matrix(T: ArrayLike) -> F64:
    """6-DoF parameters (..., 6) = (rx, ry, rz, tx, ty, tz) of rigid transform(s)."""
    T = _as_matrices(T)
    return np.concatenate([euler_zyx_from_matrix(T), T[..., :3, 3]], axis=-1)


def matrix_from_quaternion(q: ArrayLike, translation: ArrayLike | None = None) -> F64:
    """4x4 transform(s) from unit quaternions (..., 4) = (w, x, y, z) (normalised here)."""
    q = np.asarray(q, dtype=np.float64)
    if q.shape[-1] != 4:
        raise ValueError(f"quaternions must have shape (..., 4), got {q.shape}")
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    T = np.zeros(q.shape[:-1] + (4, 4))
    T[..., 0, 0] = 1 - 2 * (y * y + z * z)
    T[..., 0, 1] = 2 * (x * y - z * w)
    T[..., 0, 2] = 2 * (x * z + y * w)
    T[..., 1, 0] = 2 * (x * y + z * w)
    T[..., 1, 1] = 1 - 2 * (x * x + z * z)
    T[..., 1, 2] = 2 * (y * z - x * w)
    T[..., 2, 0] = 2 * (x * z - y * w)
    T[..., 2, 1] = 2 * (y * z + x * w)
    T[..., 2, 2] = 1 - 2 * (x * x + y * y)
    if translation is not None:
        T[..., :3, 3] = np.asarray(translation, dtype=np.float64)
    T[..., 3, 3] = 1.0
    return T


def quaternion_from_matrix(T: ArrayLike) -> F64:
    """Unit quaternions (..., 4) = (w, x, y, z), ``w >= 0``, of the rotation part.

    Uses the largest-pivot method, stable for every rotation.
    """
    M = np.asarray(T, dtype=np.float64)
    R = M[..., :3, :3]
    batch = R.shape[:-2]
    R = R.reshape(-1, 3, 3)
    trace = R[:, 0, 0] + R[:, 1, 1] + R[:, 2, 2]
    # Candidate quaternions scaled by 4*component, pick the best-conditioned.
    cands = np.stack(
        [
            np.stack([1 + trace, R[:, 2, 1] - R[:, 1, 2], R[:, 0, 2] - R[:, 2, 0], R[:, 1, 0] - R[:, 0, 1]], -1),
            np.stack([R[:, 2, 1] - R[:, 1, 2], 1 + R[:, 0, 0] - R[:, 1, 1] - R[:, 2, 2], R[:, 0, 1] + R[:, 1, 0], R[:, 0, 2] + R[:, 2, 0]], -1),
            np.stack([R[:, 0, 2] - R[:, 2, 0], R[:, 0, 1] + R[:, 1, 0], 1 - R[:, 0, 0] + R[:, 1, 1] - R[:, 2, 2], R[:, 1, 2] + R[:, 2, 1]], -1),
            np.stack([R[:, 1, 0] - R[:, 0, 1], R[:, 0, 2] + R[:, 2, 0], R[:, 1, 2] + R[:, 2, 1], 1 - R[:, 0, 0] - R[:, 1, 1] + R[:, 2, 2]], -1),
        ],
        axis=1,
    )  # (B, 4 candidates, 4)
    pivots = np.stack([1 + trace, 1 + R[:, 0, 0] - R[:, 1, 1] - R[:, 2, 2],
                       1 - R[:, 0, 0] + R[:, 1, 1] - R[:, 2, 2], 1 - R[:, 0, 0] - R[:, 1, 1] + R[:, 2, 2]], -1)
    best = np.argmax(pivots, axis=-1)
    q = cands[np.arange(len(best)), best]
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    return q.reshape(batch + (4,))


def is_rigid(T: ArrayLike, atol: float = 1e-4) -> NDArray[np.bool_]:
    """Whether each matrix is rigid: orthonormal rotation, det +1, last row 0 0 0 1, finite."""
    T = _as_matrices(T)
    R = T[..., :3, :3]
    finite = np.isfinite(T).all(axis=(-1, -2))
    RtR = np.swapaxes(R, -1, -2) @ np.where(np.isfinite(R), R, 0.0)
    ortho = np.abs(RtR - np.eye(3)).max(axis=(-1, -2)) <= atol
    det = np.linalg.det(np.where(np.isfinite(R), R, 0.0))
    last = np.abs(T[..., 3, :] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=-1) <= atol
    return finite & ortho & (np.abs(det - 1.0) <= atol) & last


def check_rigid(T: ArrayLike, name: str = "transform", path: str | Path | None = None, atol: float = 1e-4) -> F64:
    """Return ``T`` as float64 if every matrix is rigid, else raise one clear
    :class:`usnav.errors.InputError` naming the first bad matrix and why."""
    T = _as_matrices(T)
    ok = is_rigid(T, atol=atol)
    if np.all(ok):
        return T
    flat_ok = ok.reshape(-1)
    index = int(np.argmin(flat_ok))
    M = T.reshape(-1, 4, 4)[index]
    where = f"{name}[{index}]" if T.ndim > 2 else name
    if not np.isfinite(M).all():
        reason = "contains NaN or Inf"
    elif np.abs(M[3] - [0, 0, 0, 1]).max() > atol:
        reason = f"has last row {np.round(M[3], 6).tolist()} instead of [0, 0, 0, 1]"
    elif np.linalg.det(M[:3, :3]) < 0:
        reason = "is a reflection (rotation determinant is negative)"
    else:
        err = np.abs(M[:3, :3].T @ M[:3, :3] - np.eye(3)).max()
        reason = f"is not rigid (rotation part is not orthonormal, max |R^T R - I| = {err:.3g})"
    raise input_error(path, f"{where} {reason}")
