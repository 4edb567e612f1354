"""Frames + poses -> volume: output grid, fast parallel splatting, merging.

``compound_frames`` is the general entry point: it takes frames (any object
with ``.shape`` whose slices ``frames[a:b]`` are (n, H, W) arrays, e.g. a
numpy array or a lazy HDF5 dataset), the pose of every frame's pixel grid in
the world (``T_world_from_pixel``: pixel (column x, row y) 0-based sits at
``T @ (x, y, 0, 1)``), a voxel spacing, and returns a :class:`Volume`.

Work is chunked over frames; chunks are compounded by compiled kernels that
release the GIL, on ``threads`` workers with private float32 sum/weight
buffers that are merged at the end (peak extra memory ~ threads x 8 bytes
per voxel, +8 for LATEST).
"""

from __future__ import annotations


import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from usnav.compound.masks import PixelMask, row_segments
from usnav.compound.volume import Volume, grid_matrix

__all__ = ["Grid", "grid_from_frames", "compound_frames", "METHODS", "MODES"]

METHODS = ("nn", "linear")
MODES = ("mean", "max", "latest")
_MODE_CODE = {"mean": 0, "max": 1, "latest": 2}


@dataclass(frozen=True)
class Grid:
    """Axis-aligned output grid in the world frame: ``origin_mm`` is the
    centre of voxel (0, 0, 0); ``shape`` is (nx, ny, nz)."""

    origin_mm: tuple[float, float, float]
    spacing_mm: tuple[float, float, float]
    shape: tuple[int, int, int]

    @property
    def T_world_from_voxel(self) -> NDArray[np.float64]:
        return grid_matrix(np.asarray(self.origin_mm), np.asarray(self.spacing_mm))

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.shape))


def clipped_corners(mask: PixelMask, height: int, width: int) -> NDArray[np.float64]:
    """(4, 2) pixel corners (x, y) of the clipped image, as PLUS takes them:
    ``x in {max(0, ox), min(W-1, ox+sx)}``, same for y."""
    minx, maxx, miny, maxy = 0.0, float(width - 1), 0.0, float(height - 1)
    if mask.clip_size_px[0] > 0 and mask.clip_size_px[1] > 0:
        ox, oy = mask.clip_origin_px
        sx, sy = mask.clip_size_px
        minx, maxx = max(minx, ox), min(maxx, ox + sx)
        miny, maxy = max(miny, oy), min(maxy, oy + sy)
    return np.array([[minx, miny], [minx, maxy], [maxx, miny], [maxx, maxy]], dtype=np.float64)


def grid_from_frames(
    T_world_from_pixel: np.ndarray,
    corners_px: np.ndarray,
    spacing_mm: float | tuple[float, float, float],
    valid: np.ndarray | None = None,
    rounding: str = "ceil",
    max_voxels: int = 400_000_000,
) -> Grid:
    """Bounding grid of the frames' (clipped) corners, as PLUS computes it.

    The origin is the minimum corner coordinate per world axis; the number
    of voxels along an axis is ``n(range / spacing) + 1`` where ``n`` is
    ``ceil`` (every corner inside the grid; current PLUS source), ``floor``
    (older PLUS source) or ``round`` (the rule that reproduces the
    dimensions of PLUS's shipped reference reconstructions).
    """
    T = np.asarray(T_world_from_pixel, dtype=np.float64).reshape(-1, 4, 4)
    if valid is not None:
        T = T[np.asarray(valid, dtype=bool)]
    T = T[np.isfinite(T).all(axis=(1, 2))]
    if len(T) == 0:
        raise ValueError("no frame has a valid pose; cannot compute the output extent")
    sp = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,)).copy()
    if (sp <= 0).any():
        raise ValueError(f"spacing must be positive, got {sp}")
    c = np.asarray(corners_px, dtype=np.float64)
    pts = np.concatenate([c, np.zeros((len(c), 1)), np.ones((len(c), 1))], axis=1)  # (K, 4)
    world = np.einsum("nij,kj->nki", T, pts)[..., :3].reshape(-1, 3)
    lo, hi = world.min(axis=0), world.max(axis=0)
    span = (hi - lo) / sp
    if rounding == "ceil":
        n = np.ceil(span).astype(np.int64) + 1
    elif rounding == "floor":
        n = np.floor(span).astype(np.int64) + 1
    elif rounding == "round":
        n = np.floor(span + 0.5).astype(np.int64) + 1
    else:
        raise ValueError("rounding must be 'ceil', 'floor' or 'round'")
    if int(np.prod(n)) > max_voxels:
        raise ValueError(f"output grid {tuple(int(v) for v in n)} at spacing {tuple(sp)} mm is too large")
    return Grid(tuple(float(v) for v in lo), tuple(float(v) for v in sp), tuple(int(v) for v in n))  # type: ignore[arg-type]


def _chunks(indices: np.ndarray, size: int) -> list[np.ndarray]:
    """Split frame indices into runs of consecutive indices of at most ``size``."""
    out: list[np.ndarray] = []
    if len(indices) == 0:
        return out
    breaks = np.nonzero(np.diff(indices) != 1)[0] + 1
    for run in np.split(indices, breaks):
        for a in range(0, len(run), size):
            out.append(run[a : a + size])
    return out


def compound_frames(
    frames,
    T_world_from_pixel: np.ndarray,
    spacing_mm: float | tuple[float, float, float] = 0.5,
    method: str = "nn",
    mode: str = "mean",
    mask: PixelMask | np.ndarray | None = None,
    grid: Grid | None = None,
    valid: np.ndarray | None = None,
    fill_holes: list | None = None,
    out_dtype: str | np.dtype | None = None,
    threads: int = 2,
    chunk_frames: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> Volume:
    """Compound 2D frames into a 3D volume.

    frames: (N, H, W) array-like (uint8 or float), sliceable along frames.
    T_world_from_pixel: (N, 4, 4) float64, pixel (x, y, 0, 1) 0-based ->
    world mm (non-rigid is fine: it carries the pixel spacing).
    spacing_mm: voxel size (scalar or (3,)). method: "nn" (pixel nearest
    neighbour) or "linear" (trilinear splat). mode: "mean", "max" or
    "latest" (later frames win). mask: :class:`PixelMask` (clip rectangle /
    fan) or an (H, W) boolean array of pixels to use. grid: output grid
    (default: bounding grid of the masked frame corners). valid: (N,) bool,
    frames to skip when False (also skipped: frames with non-finite poses).
    fill_holes: list of :class:`usnav.compound.holes.HoleFiller` applied
    after insertion to voxels never hit. out_dtype: default uint8 for uint8
    frames (rounded to nearest), else float32. threads: worker threads.
    progress: called as ``progress(frames_done, frames_total)``.

    Returns a :class:`Volume` whose ``weight`` is the accumulated weight.
    """
    from usnav.compound import _kernels as K
    from usnav.compound.masks import mask_to_segments

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    shape = tuple(frames.shape)
    if len(shape) != 3:
        raise ValueError(f"frames must be (N, H, W), got shape {shape}")
    N, H, W = (int(s) for s in shape)
    T = np.asarray(T_world_from_pixel, dtype=np.float64)
    if T.shape != (N, 4, 4):
        raise ValueError(f"T_world_from_pixel must be ({N}, 4, 4), got {T.shape}")
    ok = np.isfinite(T).all(axis=(1, 2))
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    if isinstance(mask, np.ndarray):
        if mask.shape != (H, W):
            raise ValueError(f"mask must be ({H}, {W}), got {mask.shape}")
        segs = mask_to_segments(mask)
        ys, xs = np.nonzero(mask)
        corners = np.array([[xs.min(), ys.min()], [xs.min(), ys.max()], [xs.max(), ys.min()], [xs.max(), ys.max()]], float) if len(xs) else clipped_corners(PixelMask(), H, W)
    else:
        pm = mask or PixelMask()
        segs = row_segments(pm, H, W)
        corners = clipped_corners(pm, H, W)
    if grid is None:
        grid = grid_from_frames(T, corners, spacing_mm, valid=ok)
    nx, ny, nz = grid.shape
    nvox = grid.n_voxels
    T_voxel_from_world = np.linalg.inv(grid.T_world_from_voxel)
    M_all = np.einsum("ij,njk->nik", T_voxel_from_world, T)[:, :3, [0, 1, 3]]  # (N, 3, 3)

    idx = np.nonzero(ok)[0]
    chunks = _chunks(idx, max(1, chunk_frames))
    nthreads = max(1, min(int(threads), len(chunks)))
    code = _MODE_CODE[mode]
    kernel = K.splat_nn if method == "nn" else K.splat_linear
    sy, sx0, sx1 = (np.ascontiguousarray(a) for a in segs)
    npix = H * W

    bufs = []
    for _ in range(nthreads):
        buf = np.zeros(2 * nvox, np.float32)
        key = np.full(nvox, -1, np.int64) if mode == "latest" else np.zeros(0, np.int64)
        bufs.append((buf, key))

    lock = threading.Lock()
    done = [0]
    # interleave chunks between workers; LATEST ordering is resolved by keys
    assignments = [chunks[t::nthreads] for t in range(nthreads)]

    def work(t: int) -> None:
        buf, key = bufs[t]
        for ch in assignments[t]:
            a, b = int(ch[0]), int(ch[-1]) + 1
            block = np.asarray(frames[a:b])
            if block.dtype not in (np.uint8, np.float32):
                block = block.astype(np.float32)
            kernel(block, np.ascontiguousarray(M_all[a:b]), sy, sx0, sx1, nx, ny, nz, code, buf, key, a, npix)
            with lock:
                done[0] += b - a
                if progress is not None:
                    progress(done[0], len(idx))

    def parallel(fn, *args) -> None:
        """Run fn(*args, start, stop) over voxel ranges on the worker threads."""
        parts = np.linspace(0, nvox, max(1, threads) + 1).astype(np.int64)
        ranges = [(int(parts[i]), int(parts[i + 1])) for i in range(len(parts) - 1)]
        if len(ranges) == 1:
            fn(*args, *ranges[0])
            return
        with ThreadPoolExecutor(len(ranges)) as ex:
            list(ex.map(lambda r: fn(*args, *r), ranges))

    if nthreads == 1:
        work(0)
    else:
        with ThreadPoolExecutor(nthreads) as ex:
            list(ex.map(work, range(nthreads)))

    buf, key = bufs[0]
    for buf2, key2 in bufs[1:]:
        parallel(K.merge_into, buf, buf2, key, key2, code)
    bufs.clear()
    del key

    in_dtype = np.dtype(getattr(frames, "dtype", np.float32))
    dtype = np.dtype(out_dtype) if out_dtype is not None else (np.dtype(np.uint8) if in_dtype == np.uint8 else np.dtype(np.float32))
    weight = np.empty(nvox, np.float32)
    if fill_holes:
        from usnav.compound.holes import apply_hole_filling

        val = np.empty(nvox, np.float32)
        parallel(K.finalize, buf, code, val, weight, False, 0.0, 0.0)
        del buf
        vol_zyx = apply_hole_filling(val.reshape(nz, ny, nx), weight.reshape(nz, ny, nx), fill_holes)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            out = np.clip(np.rint(vol_zyx), info.min, info.max).astype(dtype)
        else:
            out = vol_zyx.astype(dtype, copy=False)
    else:
        is_int = bool(np.issubdtype(dtype, np.integer))
        flat = np.empty(nvox, dtype if is_int else np.float32)
        lo, hi = (float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)) if is_int else (0.0, 0.0)
        parallel(K.finalize, buf, code, flat, weight, is_int, lo, hi)
        del buf
        out = flat.reshape(nz, ny, nx).astype(dtype, copy=False)
    w_zyx = weight.reshape(nz, ny, nx)
    return Volume(out.transpose(2, 1, 0), grid.T_world_from_voxel, weight=w_zyx.transpose(2, 1, 0))


def pixel_to_image_mm(spacing_xy: tuple[float, float], one_based: bool = False) -> NDArray[np.float64]:
    """T_image_from_pixel for a (column, row) pixel grid with the given
    spacing; ``one_based``: the image-mm point of 0-based pixel (c, r) is
    ((c+1) sx, (r+1) sy) (TUS-REC convention)."""
    T = np.diag([float(spacing_xy[0]), float(spacing_xy[1]), 1.0, 1.0])
    if one_based:
        T[0, 3] = spacing_xy[0]
        T[1, 3] = spacing_xy[1]
    return T


