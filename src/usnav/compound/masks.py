"""Which pixels of a frame are inserted: clip rectangle and fan mask.

The pixel set is described as row segments ``(y, x0, x1)`` (inclusive
columns), computed exactly as PLUS's ``vtkPlusPasteSliceIntoVolume`` does
(so conformance runs insert the very same pixels):

- clip rectangle (pixels): columns ``ceil(ox) .. floor(ox + sx)``, rows
  ``ceil(oy) .. floor(oy + sy)``, clamped to the image;
- fan (curvilinear probes): apex at ``fan_origin_px`` (column, row), left
  and right edge angles in degrees from the image's vertical axis (negative
  = towards column 0), radial extent ``radius_start_px .. radius_stop_px``
  measured from the apex; a pixel is kept when it lies strictly inside the
  two edges (one-pixel margin) and between the two radii. No fan when both
  angles are 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["PixelMask", "row_segments", "segments_to_mask"]

_TOL = 7.62939453125e-06  # PLUS/VTK fast floor tolerance (2^-17)


def _floor(x: float) -> int:
    return math.floor(x + _TOL)


def _ceil(x: float) -> int:
    return -_floor(-x)


@dataclass(frozen=True)
class PixelMask:
    """Clip rectangle and fan parameters, in pixels and degrees.

    ``clip_origin_px``/``clip_size_px``: (column, row) of the rectangle's
    corner and its size; size (0, 0) = whole image.
    ``pixel_aspect``: row spacing / column spacing (for the fan angles and
    radii, which PLUS measures in column-pixel units horizontally and
    row-pixel units vertically; 1 for PLUS's unit-spacing images).
    """

    clip_origin_px: tuple[float, float] = (0.0, 0.0)
    clip_size_px: tuple[float, float] = (0.0, 0.0)
    fan_angles_deg: tuple[float, float] = (0.0, 0.0)
    fan_origin_px: tuple[float, float] = (0.0, 0.0)
    radius_start_px: float = 0.0
    radius_stop_px: float = 500.0
    pixel_spacing: tuple[float, float] = (1.0, 1.0)

    @property
    def has_fan(self) -> bool:
        return self.fan_angles_deg[0] != 0.0 or self.fan_angles_deg[1] != 0.0

    def clip_bounds(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(x0, x1, y0, y1) inclusive pixel bounds of the clip rectangle."""
        if self.clip_size_px[0] > 0 and self.clip_size_px[1] > 0:
            ox, oy = self.clip_origin_px
            sx, sy = self.clip_size_px
            x0, x1 = math.ceil(ox), math.floor(ox + sx)
            y0, y1 = math.ceil(oy), math.floor(oy + sy)
            x0, x1 = min(x0, x1), max(x0, x1)
            y0, y1 = min(y0, y1), max(y0, y1)
            return max(x0, 0), min(x1, width - 1), max(y0, 0), min(y1, height - 1)
        return 0, width - 1, 0, height - 1


def row_segments(mask: PixelMask, height: int, width: int) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Row segments of the inserted pixels: arrays ``(y, x0, x1)``, rows in
    increasing order, at most two segments per row (fan with a start radius
    can split a row)."""
    sx_mm, sy_mm = mask.pixel_spacing
    cx0, cx1, cy0, cy1 = mask.clip_bounds(height, width)
    aspect = abs(sy_mm / sx_mm)
    tl = math.tan(math.radians(mask.fan_angles_deg[0])) * aspect
    tr = math.tan(math.radians(mask.fan_angles_deg[1])) * aspect
    if tl > tr:
        tl, tr = tr, tl
    fan = tl != 0.0 or tr != 0.0
    fox, foy = mask.fan_origin_px
    r0sq = mask.radius_start_px ** 2
    r1sq = mask.radius_stop_px ** 2
    ys: list[int] = []
    x0s: list[int] = []
    x1s: list[int] = []
    for row in range(cy0, cy1 + 1):
        start, end = 0, width - 1
        skip = None
        if fan:
            y = row - foy
            start = max(start, _ceil(tl * y + fox + 1))
            end = min(end, _floor(tr * y + fox - 1))
            depth2 = (y * y) * sy_mm * sy_mm
            dstop = r1sq - depth2
            if dstop < 0:
                continue
            dstop = math.sqrt(dstop / (sx_mm * sx_mm))
            start = max(start, _ceil(fox - dstop + 1))
            end = min(end, _floor(fox + dstop - 1))
            dstart = r0sq - depth2
            if dstart > 0:
                d = math.sqrt(dstart / (sx_mm * sx_mm))
                skip = (_ceil(fox - d + 1), _floor(fox + d - 1))
        start = max(start, cx0)
        end = min(end, cx1)
        if start > end:
            continue
        if skip is not None and skip[0] <= skip[1] and skip[1] >= start and skip[0] <= end:
            if skip[0] > start:
                ys.append(row); x0s.append(start); x1s.append(skip[0] - 1)
            if skip[1] < end:
                ys.append(row); x0s.append(skip[1] + 1); x1s.append(end)
            continue
        ys.append(row); x0s.append(start); x1s.append(end)
    return np.asarray(ys, np.int64), np.asarray(x0s, np.int64), np.asarray(x1s, np.int64)


def segments_to_mask(segments: tuple[np.ndarray, np.ndarray, np.ndarray], height: int, width: int) -> NDArray[np.bool_]:
    """(H, W) boolean mask of the pixels covered by row segments."""
    m = np.zeros((height, width), dtype=bool)
    for y, a, b in zip(*segments):
        m[y, a : b + 1] = True
    return m


def mask_to_segments(mask: np.ndarray) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Row segments of an arbitrary (H, W) boolean mask (runs of True)."""
    m = np.asarray(mask, dtype=bool)
    padded = np.zeros((m.shape[0], m.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = m
    d = np.diff(padded, axis=1)
    ys, starts = np.nonzero(d == 1)
    _, ends = np.nonzero(d == -1)
    return ys.astype(np.int64), starts.astype(np.int64), (ends - 1).astype(np.int64)
