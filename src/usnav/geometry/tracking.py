"""Frame-to-frame transforms from tracked probe poses (TUS-REC convention).

Frames: each frame's *image-mm* space (origin at pixel (0, 0) of the 1-based
grid scaled by S, x along columns, y along rows, z out of plane, mm), the
tracking *tool* and the *tracker* (camera).

    T_tracker_from_image = T_tracker_from_tool[n] @ T_tool_from_image      (C)
    T_image0_from_imagen = inv(C) @ inv(T_tracker_from_tool[0]) @ T_tracker_from_tool[n] @ C
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from usnav.geometry.rigid import invert

__all__ = ["global_from_tracking", "local_from_tracking", "chain_local", "local_from_global"]


def global_from_tracking(T_tracker_from_tool: ArrayLike, T_tool_from_image: ArrayLike) -> NDArray[np.float64]:
    """Global transforms (N-1, 4, 4): frame n image-mm -> frame 0 image-mm, n = 1..N-1.

    T_tracker_from_tool: (N, 4, 4) tracked tool poses (the TUS-REC ``tforms``).
    T_tool_from_image: (4, 4) rigid calibration C (image-mm -> tool).
    """
    tforms = np.asarray(T_tracker_from_tool, dtype=np.float64)
    C = np.asarray(T_tool_from_image, dtype=np.float64)
    T_tracker_from_image = tforms @ C
    return invert(T_tracker_from_image[0]) @ T_tracker_from_image[1:]


def local_from_tracking(T_tracker_from_tool: ArrayLike, T_tool_from_image: ArrayLike) -> NDArray[np.float64]:
    """Local transforms (N-1, 4, 4): frame n image-mm -> frame n-1 image-mm, from the
    ground-truth poses of both frames (not chained)."""
    tforms = np.asarray(T_tracker_from_tool, dtype=np.float64)
    C = np.asarray(T_tool_from_image, dtype=np.float64)
    T_tracker_from_image = tforms @ C
    return invert(T_tracker_from_image[:-1]) @ T_tracker_from_image[1:]


def chain_local(T_prev_from_current: ArrayLike) -> NDArray[np.float64]:
    """Chain local transforms (N-1, 4, 4) (frame n -> n-1) into global ones
    (frame n -> frame 0): ``G[n] = L[1] @ L[2] @ ... @ L[n]``."""
    L = np.asarray(T_prev_from_current, dtype=np.float64)
    G = np.empty_like(L)
    acc = np.eye(4)
    for i in range(len(L)):
        acc = acc @ L[i]
        G[i] = acc
    return G


def local_from_global(T_image0_from_image: ArrayLike) -> NDArray[np.float64]:
    """Local transforms (N-1, 4, 4) implied by global ones (N-1, 4, 4):
    ``L[n] = inv(G[n-1]) @ G[n]`` with ``G[0] = I`` for frame 0."""
    G = np.asarray(T_image0_from_image, dtype=np.float64)
    previous = np.concatenate([np.eye(4)[None], G[:-1]], axis=0)
    return invert(previous) @ G
