"""Frames + poses -> 3D volume.

Pixel nearest-neighbour and trilinear splatting, MEAN / MAXIMUM / LATEST
compounding, clip rectangle and fan masks, hole filling, PLUS-style output
extent; a PLUS-conformant reconstruction of PLUS sequences.

>>> vol = compound_frames(frames, T_world_from_pixel, spacing_mm=0.5, method="nn", mode="mean")
>>> vol.save("out.nii.gz")
"""

from usnav.compound.core import METHODS, MODES, Grid, clipped_corners, compound_frames, grid_from_frames, pixel_to_image_mm
from usnav.compound.holes import HoleFiller, apply_hole_filling
from usnav.compound.masks import PixelMask, mask_to_segments, row_segments, segments_to_mask
from usnav.compound.plus import PlusResult, reconstruct_plus
from usnav.compound.volume import Volume, grid_matrix

__all__ = [
    "METHODS",
    "MODES",
    "Grid",
    "HoleFiller",
    "PixelMask",
    "PlusResult",
    "Volume",
    "apply_hole_filling",
    "clipped_corners",
    "compound_frames",
    "grid_from_frames",
    "grid_matrix",
    "mask_to_segments",
    "pixel_to_image_mm",
    "reconstruct_plus",
    "row_segments",
    "segments_to_mask",
]
