"""Figures for reports (matplotlib, Agg backend). Each returns a Figure.

Conventions: transforms are (N-1, 4, 4) global transforms (frame n image-mm ->
frame 0 image-mm); volumes are (X, Y, Z) arrays with spacing in mm.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from numpy.typing import ArrayLike  # noqa: E402

__all__ = ["checkerboard", "drift_figure", "orthogonal_slices_figure", "overlay_figure", "trajectory_figure"]


def _frame_points(T: np.ndarray, frame_size_mm: tuple[float, float]) -> np.ndarray:
    """Centre and four corners (N, 5, 3) of each frame in frame-0 mm."""
    w, h = frame_size_mm
    local = np.array([[w / 2, h / 2, 0], [0, 0, 0], [w, 0, 0], [w, h, 0], [0, h, 0]], dtype=np.float64)
    return np.einsum("nij,kj->nki", T[:, :3, :3], local) + T[:, None, :3, 3]


def trajectory_figure(
    estimated: ArrayLike | None, truth: ArrayLike | None, frame_size_mm: tuple[float, float], every: int = 100,
    title: str = "Frame trajectory (frame 0 image-mm)",
) -> plt.Figure:
    """3D path of the frame centres, with frame outlines every ``every`` frames.

    estimated, truth: (N-1, 4, 4) global transforms (frame 0 is the identity).
    frame_size_mm: (width, height) of the image in mm.
    """
    fig = plt.figure(figsize=(6.5, 5.5))
    ax = fig.add_subplot(projection="3d")
    for T, colour, label in ((truth, "tab:green", "truth (tracker)"), (estimated, "tab:blue", "estimated")):
        if T is None:
            continue
        T = np.concatenate([np.eye(4)[None], np.asarray(T, dtype=np.float64)])
        pts = _frame_points(T, frame_size_mm)
        ax.plot(pts[:, 0, 0], pts[:, 0, 1], pts[:, 0, 2], color=colour, label=label, lw=1.5)
        for n in list(range(0, len(T), max(1, every))) + [len(T) - 1]:
            outline = pts[n, [1, 2, 3, 4, 1]]
            ax.plot(outline[:, 0], outline[:, 1], outline[:, 2], color=colour, lw=0.6, alpha=0.6)
    ax.set_xlabel("x mm")
    ax.set_ylabel("y mm")
    ax.set_zlabel("z mm")
    ax.set_title(title)
    ax.legend(loc="upper left")
    return fig


def drift_figure(curves: dict[str, ArrayLike], ylabel: str = "mean pixel error vs truth (mm)",
                 title: str = "Accumulated drift per frame") -> plt.Figure:
    """Per-frame error curves (frame index 1..N-1), one line per method."""
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    for name, values in curves.items():
        v = np.asarray(values, dtype=np.float64)
        ax.plot(np.arange(1, len(v) + 1), v, label=name, lw=1.3)
    ax.set_xlabel("frame index")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _mid_slices(volume: np.ndarray, index: Sequence[int] | None) -> list[np.ndarray]:
    i, j, k = index if index is not None else [s // 2 for s in volume.shape]
    return [volume[i, :, :], volume[:, j, :], volume[:, :, k]]


def orthogonal_slices_figure(
    volume: ArrayLike, spacing_mm: Sequence[float], index: Sequence[int] | None = None, title: str = "",
    cmap: str = "gray", vmin: float | None = None, vmax: float | None = None,
) -> plt.Figure:
    """The three orthogonal slices through ``index`` (default: the centre) of an (X, Y, Z) volume."""
    vol = np.asarray(volume)
    sx, sy, sz = spacing_mm
    slices = _mid_slices(vol, index)
    aspects = [sz / sy, sz / sx, sy / sx]
    names = ["slice along axis 0 (axes 1-2)", "slice along axis 1 (axes 0-2)", "slice along axis 2 (axes 0-1)"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    lo = np.percentile(vol, 1) if vmin is None else vmin
    hi = np.percentile(vol, 99.5) if vmax is None else vmax
    for ax, img, aspect, name in zip(axes, slices, aspects, names, strict=True):
        ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, aspect=aspect, origin="lower", interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return fig


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    """2D checkerboard mixing two equally shaped images (each normalised to [0, 1])."""
    def norm(x: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(x, 1), np.percentile(x, 99.5)
        return np.clip((x - lo) / max(hi - lo, 1e-9), 0, 1)

    a, b = norm(np.asarray(a, dtype=np.float64)), norm(np.asarray(b, dtype=np.float64))
    ii, jj = np.indices(a.shape)
    mask = ((ii * tiles // a.shape[0]) + (jj * tiles // a.shape[1])) % 2 == 0
    return np.where(mask, a, b)


def overlay_figure(
    fixed: ArrayLike, moving_before: ArrayLike, moving_after: ArrayLike, axis: int = 2, index: int | None = None,
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0), title: str = "MRI on ultrasound",
) -> plt.Figure:
    """Colour overlays and checkerboards of one slice, before and after registration.

    fixed: (X, Y, Z) ultrasound; moving_before / moving_after: MRI resampled on the
    same grid without / with the registration.
    """
    F, B, A = (np.asarray(v, dtype=np.float32) for v in (fixed, moving_before, moving_after))
    idx = F.shape[axis] // 2 if index is None else index
    take = lambda v: np.take(v, idx, axis=axis)  # noqa: E731
    f, b, a = take(F), take(B), take(A)
    other = [s for k, s in enumerate(spacing_mm) if k != axis]
    aspect = other[1] / other[0]

    def overlay(us: np.ndarray, mr: np.ndarray) -> np.ndarray:
        def norm(x: np.ndarray) -> np.ndarray:
            lo, hi = np.percentile(x, 1), np.percentile(x, 99.5)
            return np.clip((x - lo) / max(hi - lo, 1e-9), 0, 1)
        u, m = norm(us), norm(mr)
        return np.stack([m, u, u * 0.5 + m * 0.5], axis=-1)

    fig, axes = plt.subplots(2, 2, figsize=(9, 8))
    panels = [(overlay(f, b), "overlay before (MRI red, US cyan)"), (overlay(f, a), "overlay after"),
              (checkerboard(f, b), "checkerboard before"), (checkerboard(f, a), "checkerboard after")]
    for ax, (img, name) in zip(axes.ravel(), panels, strict=True):
        ax.imshow(np.swapaxes(img, 0, 1), cmap="gray", aspect=aspect, origin="lower", interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    fig.suptitle(f"{title} (slice {idx} along axis {axis})")
    return fig
