"""Official TUS-REC displacement fields and metrics (2025 rules), memory-safe.

Definitions (FORMATS.md section 1):

- Pixels: x = 1..W (columns), y = 1..H (rows), z = 0, flat row-major order
  ``index = (y-1)*W + (x-1)``; image-mm point ``p = S @ [x, y, 0, 1]``.
- Displacement of a pixel under a transform T (frame n image-mm -> reference
  frame image-mm): ``(T @ p)[:3] - p[:3]``, in mm.
- GP/LP: (N-1, 3, H*W) global/local displacements of every pixel of frames 1..N-1.
  GL/LL: (3, K) displacements of the K landmarks; landmark (f, x, y) takes row
  f-1 of the (N-1)-frame arrays at pixel (x, y).
- GPE/LPE: mean over frames and pixels of the Euclidean distance between
  predicted and true displacement; GLE/LLE: the same over landmarks.
- Normalised score per metric: ``M* = 1 - M / M_identity``; final score: mean of
  the four, averaged over scans.

The pixel errors never materialise the (N-1, 3, H*W) arrays: the difference of
two displacements is ``(T_pred - T_true) @ p``, evaluated in chunks of frames
and accumulated in float64.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "METRICS",
    "ScanScore",
    "displacements",
    "ddfs_from_transforms",
    "iter_pixel_ddfs",
    "landmark_ddf",
    "landmark_points_mm",
    "mean_pixel_error",
    "mean_landmark_error",
    "normalised_score",
    "pixel_error_per_frame",
    "pixel_points_mm",
    "score_scan",
]

METRICS = ("GPE", "GLE", "LPE", "LLE")
_CHUNK_FRAMES = 16


def pixel_points_mm(T_mm_from_pixel: ArrayLike, frame_shape: tuple[int, int]) -> NDArray[np.float64]:
    """Image-mm points (H*W, 3) of every pixel, official row-major order
    (``index = (y-1)*W + (x-1)``, x and y 1-based, z = 0)."""
    S = np.asarray(T_mm_from_pixel, dtype=np.float64)
    H, W = frame_shape
    y, x = np.meshgrid(np.arange(1, H + 1, dtype=np.float64), np.arange(1, W + 1, dtype=np.float64), indexing="ij")
    pix = np.stack([x.ravel(), y.ravel(), np.zeros(H * W), np.ones(H * W)], axis=0)  # (4, P)
    return (S @ pix)[:3].T.copy()


def landmark_points_mm(landmarks: ArrayLike, T_mm_from_pixel: ArrayLike) -> NDArray[np.float64]:
    """Image-mm points (K, 3) of landmarks (K, 3) = (frame, x, y), x and y 1-based."""
    lm = np.asarray(landmarks)
    S = np.asarray(T_mm_from_pixel, dtype=np.float64)
    pix = np.stack([lm[:, 1], lm[:, 2], np.zeros(len(lm)), np.ones(len(lm))], axis=0).astype(np.float64)
    return (S @ pix)[:3].T


def displacements(T: ArrayLike, points_mm: ArrayLike) -> NDArray[np.float64]:
    """Displacements (M, 3, P) of points (P, 3) under transforms (M, 4, 4): ``T p - p``."""
    T = np.asarray(T, dtype=np.float64)
    p = np.asarray(points_mm, dtype=np.float64)
    moved = T[:, :3, :3] @ p.T + T[:, :3, 3:4]
    return moved - p.T[None]


def landmark_ddf(T: ArrayLike, landmarks: ArrayLike, T_mm_from_pixel: ArrayLike) -> NDArray[np.float64]:
    """(3, K) displacement of each landmark (f, x, y) under ``T[f-1]`` ((N-1, 4, 4))."""
    T = np.asarray(T, dtype=np.float64)
    lm = np.asarray(landmarks)
    p = landmark_points_mm(lm, T_mm_from_pixel)  # (K, 3)
    Tk = T[lm[:, 0] - 1]  # (K, 4, 4)
    moved = np.einsum("kij,kj->ki", Tk[:, :3, :3], p) + Tk[:, :3, 3]
    return (moved - p).T


def iter_pixel_ddfs(
    T: ArrayLike, T_mm_from_pixel: ArrayLike, frame_shape: tuple[int, int], chunk_frames: int = _CHUNK_FRAMES,
    dtype: type = np.float32,
) -> Iterator[tuple[int, NDArray]]:
    """Yield ``(start, ddf)`` with ddf (c, 3, H*W) pixel displacements of frames
    start..start+c-1 of the (N-1)-frame transform stack T."""
    T = np.asarray(T, dtype=np.float64)
    p = pixel_points_mm(T_mm_from_pixel, frame_shape)
    for start in range(0, len(T), chunk_frames):
        yield start, displacements(T[start : start + chunk_frames], p).astype(dtype, copy=False)


def ddfs_from_transforms(
    global_transforms: ArrayLike,
    local_transforms: ArrayLike,
    T_mm_from_pixel: ArrayLike,
    frame_shape: tuple[int, int],
    landmarks: ArrayLike,
    dtype: type = np.float32,
) -> tuple[NDArray, NDArray, NDArray, NDArray]:
    """The four official arrays GP (N-1, 3, P), GL (3, K), LP (N-1, 3, P), LL (3, K), mm.

    Holds the full pixel arrays in memory (as the official ``predict_ddfs``
    interface requires); use :func:`iter_pixel_ddfs` to stream them instead.
    """
    G = np.asarray(global_transforms, dtype=np.float64)
    L = np.asarray(local_transforms, dtype=np.float64)
    P = frame_shape[0] * frame_shape[1]
    GP = np.empty((len(G), 3, P), dtype=dtype)
    LP = np.empty((len(L), 3, P), dtype=dtype)
    for start, chunk in iter_pixel_ddfs(G, T_mm_from_pixel, frame_shape, dtype=dtype):
        GP[start : start + len(chunk)] = chunk
    for start, chunk in iter_pixel_ddfs(L, T_mm_from_pixel, frame_shape, dtype=dtype):
        LP[start : start + len(chunk)] = chunk
    GL = landmark_ddf(G, landmarks, T_mm_from_pixel).astype(dtype)
    LL = landmark_ddf(L, landmarks, T_mm_from_pixel).astype(dtype)
    return GP, GL, LP, LL


def _pixel_basis(T_mm_from_pixel: ArrayLike, frame_shape: tuple[int, int]) -> torch.Tensor:
    """(6, H*W) float64 monomials X^2, XY, Y^2, X, Y, 1 of the pixels' image-mm (X, Y)."""
    p = pixel_points_mm(T_mm_from_pixel, frame_shape)
    X, Y = torch.from_numpy(p[:, 0].copy()), torch.from_numpy(p[:, 1].copy())
    return torch.stack([X * X, X * Y, Y * Y, X, Y, torch.ones_like(X)])


def pixel_error_per_frame(
    T_pred: ArrayLike, T_true: ArrayLike, T_mm_from_pixel: ArrayLike, frame_shape: tuple[int, int],
    chunk_frames: int = 64,
) -> NDArray[np.float64]:
    """Per frame (M,), the mean over pixels of ``|| (T_pred - T_true) @ p ||`` (mm):
    the distance between predicted and true displacements (a drift curve).

    Pixels lie in the z = 0 plane, so with ``D = (T_pred - T_true)[:3]`` and
    ``p = (X, Y, 0, 1)`` the squared distance is the quadratic form
    ``|a X + b Y + c|^2`` (a, b, c: columns 0, 1, 3 of D). Its six
    coefficients per frame times a fixed (6, H*W) monomial basis give every
    pixel's squared error in one float64 matrix product per chunk of frames.
    """
    D = np.asarray(T_pred, dtype=np.float64) - np.asarray(T_true, dtype=np.float64)
    if D.shape != np.shape(T_true) or D.ndim != 3:
        raise ValueError(f"predicted and true transforms differ in shape: {np.shape(T_pred)} vs {np.shape(T_true)}")
    a, b, c = D[:, :3, 0], D[:, :3, 1], D[:, :3, 3]
    dot = lambda u, v: np.einsum("mi,mi->m", u, v)  # noqa: E731
    coeffs = np.stack([dot(a, a), 2 * dot(a, b), dot(b, b), 2 * dot(a, c), 2 * dot(b, c), dot(c, c)], axis=1)
    basis = _pixel_basis(T_mm_from_pixel, frame_shape)
    coeffs_t = torch.from_numpy(coeffs)
    # One reused buffer: allocating a fresh (c, P) array per chunk costs more
    # than the product itself (page faults).
    buffer = torch.empty((min(chunk_frames, len(D)), basis.shape[1]), dtype=torch.float64)
    per_frame = np.empty(len(D))
    for start in range(0, len(D), chunk_frames):
        block = coeffs_t[start : start + chunk_frames]
        squared = buffer[: len(block)]
        torch.matmul(block, basis, out=squared)  # (c, P) squared distances
        per_frame[start : start + len(block)] = squared.clamp_(min=0.0).sqrt_().mean(dim=1, dtype=torch.float64).numpy()
    return per_frame


def mean_pixel_error(
    T_pred: ArrayLike, T_true: ArrayLike, T_mm_from_pixel: ArrayLike, frame_shape: tuple[int, int],
    chunk_frames: int = 64,
) -> float:
    """Mean over frames and pixels of the distance between predicted and true
    displacements, mm (GPE or LPE); see :func:`pixel_error_per_frame`."""
    return float(pixel_error_per_frame(T_pred, T_true, T_mm_from_pixel, frame_shape, chunk_frames).mean())


def mean_landmark_error(T_pred: ArrayLike, T_true: ArrayLike, landmarks: ArrayLike, T_mm_from_pixel: ArrayLike) -> float:
    """Mean over landmarks of the distance between predicted and true displacement (GLE or LLE)."""
    diff = landmark_ddf(T_pred, landmarks, T_mm_from_pixel) - landmark_ddf(T_true, landmarks, T_mm_from_pixel)
    return float(np.linalg.norm(diff, axis=0).mean())


def normalised_score(error: float | None, identity_error: float | None) -> float | None:
    """The 2025 per-metric score ``1 - M / M_identity`` (None if either is undefined;
    1 for a perfect prediction, 0 for the identity, negative when worse)."""
    if error is None or identity_error is None:
        return None
    if identity_error == 0.0:
        return 1.0 if error == 0.0 else float("-inf")
    return 1.0 - error / identity_error


@dataclass(frozen=True)
class ScanScore:
    """Errors (mm) of one scan, the identity errors, and the normalised scores.

    Landmark metrics are None when the scan has no landmarks; the final score
    is then the mean of the pixel scores only.
    """

    subject: str
    scan: str
    GPE: float
    GLE: float | None
    LPE: float
    LLE: float | None
    GPE_identity: float
    GLE_identity: float | None
    LPE_identity: float
    LLE_identity: float | None

    def normalised(self, metric: str) -> float | None:
        """``1 - M / M_identity`` (can be negative; 1 for a perfect prediction)."""
        return normalised_score(getattr(self, metric), getattr(self, f"{metric}_identity"))

    @property
    def score(self) -> float:
        """Final score: mean of the available normalised metrics."""
        parts = [s for s in (self.normalised(m) for m in METRICS) if s is not None]
        return float(np.mean(parts))

    def as_dict(self) -> dict:
        out = asdict(self)
        for m in METRICS:
            out[f"{m}_score"] = self.normalised(m)
        out["score"] = self.score
        return out


def score_scan(
    subject: str,
    scan: str,
    pred_global: ArrayLike,
    pred_local: ArrayLike,
    true_global: ArrayLike,
    true_local: ArrayLike,
    T_mm_from_pixel: ArrayLike,
    frame_shape: tuple[int, int],
    landmarks: ArrayLike | None,
) -> ScanScore:
    """Score one scan's predicted transforms against the truth (all (N-1, 4, 4))."""
    identity = np.broadcast_to(np.eye(4), np.shape(true_global))
    errors: dict[str, float | None] = {}
    for tag, pred in (("", (pred_global, pred_local)), ("_identity", (identity, identity))):
        errors[f"GPE{tag}"] = mean_pixel_error(pred[0], true_global, T_mm_from_pixel, frame_shape)
        errors[f"LPE{tag}"] = mean_pixel_error(pred[1], true_local, T_mm_from_pixel, frame_shape)
        if landmarks is not None and len(landmarks):
            errors[f"GLE{tag}"] = mean_landmark_error(pred[0], true_global, landmarks, T_mm_from_pixel)
            errors[f"LLE{tag}"] = mean_landmark_error(pred[1], true_local, landmarks, T_mm_from_pixel)
        else:
            errors[f"GLE{tag}"] = errors[f"LLE{tag}"] = None
    return ScanScore(subject=subject, scan=scan, **errors)  # type: ignore[arg-type]
