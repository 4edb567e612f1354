"""Tissue scenes: acoustic property volumes in world millimetres.

A :class:`Scene` is a stack of property volumes on one regular grid with an
affine ``T_world_from_voxel`` (voxel (0,0,0) is the centre of the first
voxel; voxel index ``(i0, i1, i2)`` addresses array axes 0, 1, 2), sampled
with trilinear interpolation (edge values continue outside the grid).  A
deformed scene is just another :class:`Scene` with warped volumes, so the
renderer never needs to know how a scene was made.

Channels (``PROPERTY_CHANNELS``):

- ``echo``: scatterer amplitude scale (backscatter strength, unitless; 1 is
  ordinary soft tissue, 0 anechoic fluid),
- ``impedance``: acoustic impedance, MRayl (specular reflection and
  transmission loss at boundaries),
- ``attenuation``: dB/cm/MHz.

Optional ``labels`` (uint8, same grid, nearest sampling) name tissue classes
(``label_names``); they are used to choose landmarks on salient structures,
never by the renderer.  Each scene carries its own
:class:`~usnav.sim.scatterers.ScattererField` (one fixed field per scene) and
a ``surface`` (contact-surface description used by the motion generator).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from usnav.sim.scatterers import ScattererField

__all__ = ["Scene", "PROPERTY_CHANNELS", "TISSUES", "Tissue", "PlanarSurface", "volumes_from_labels", "homogeneous_scene", "warped_scene"]

PROPERTY_CHANNELS = ("echo", "impedance", "attenuation")


@dataclass(frozen=True)
class Tissue:
    """Acoustic properties of one tissue class."""

    echo: float  # backscatter amplitude scale
    impedance_mrayl: float
    attenuation_db_cm_mhz: float


# Literature-typical values (impedance MRayl, attenuation dB/cm/MHz); echo is a
# relative backscatter amplitude tuned for the look of clinical B-mode.
TISSUES: dict[str, Tissue] = {
    "gel": Tissue(0.0, 1.50, 0.002),
    "skin": Tissue(1.6, 1.70, 1.0),
    "fat": Tissue(0.45, 1.38, 0.6),
    "fat_septum": Tissue(1.5, 1.55, 0.8),
    "muscle": Tissue(0.8, 1.70, 1.0),
    "fascia": Tissue(2.2, 1.80, 1.3),
    "tendon": Tissue(1.8, 1.80, 1.5),
    "vessel": Tissue(0.02, 1.61, 0.18),
    "nerve": Tissue(1.2, 1.66, 0.9),
    "bone": Tissue(2.5, 7.80, 20.0),
    "marrow": Tissue(1.0, 1.70, 5.0),
    "csf": Tissue(0.02, 1.51, 0.002),
    "grey_matter": Tissue(0.55, 1.60, 0.8),
    "white_matter": Tissue(0.75, 1.62, 1.0),
    "pia_sulcus": Tissue(2.0, 1.65, 0.9),
    "falx": Tissue(2.4, 1.70, 1.2),
    "choroid_plexus": Tissue(2.5, 1.65, 1.0),
    "dura": Tissue(2.0, 1.70, 1.2),
}


class Scene:
    """Property volumes on a regular grid in world mm (see module docstring).

    Parameters
    ----------
    properties: (3, n0, n1, n2) float32, channels ``PROPERTY_CHANNELS``.
    T_world_from_voxel: (4, 4) affine, voxel index -> world mm.
    scatterers: the scene's scatterer field.
    labels: optional (n0, n1, n2) uint8 tissue classes; ``label_names[l]`` names label l.
    surface: free-form description of the probe contact surface (see usnav.sim.motion).
    """

    def __init__(
        self,
        properties: NDArray[np.float32],
        T_world_from_voxel: NDArray[np.float64],
        scatterers: ScattererField,
        labels: NDArray[np.uint8] | None = None,
        label_names: tuple[str, ...] = (),
        surface: Any = None,
        name: str = "scene",
        salient_labels: tuple[str, ...] = (),
    ) -> None:
        props = np.ascontiguousarray(properties, dtype=np.float32)
        if props.ndim != 4 or props.shape[0] != len(PROPERTY_CHANNELS):
            raise ValueError(f"properties must be (3, n0, n1, n2), got {props.shape}")
        self.properties = props
        self.T_world_from_voxel = np.asarray(T_world_from_voxel, dtype=np.float64)
        self.T_voxel_from_world = np.linalg.inv(self.T_world_from_voxel)
        self.scatterers = scatterers
        self.labels = labels
        self.label_names = tuple(label_names)
        self.surface = surface
        self.name = name
        self.salient_labels = tuple(salient_labels)
        self._torch_props = torch.from_numpy(self.properties)[None]  # (1, C, n0, n1, n2)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.properties.shape[1:])  # type: ignore[return-value]

    def __repr__(self) -> str:
        sp = np.linalg.norm(self.T_world_from_voxel[:3, :3], axis=0)
        return (
            f"Scene({self.name!r}, shape={self.shape}, spacing_mm={tuple(np.round(sp, 3))}, "
            f"scatterer_spacing_mm={self.scatterers.spacing_mm}, seed={self.scatterers.seed})"
        )

    def _grid(self, points_world: NDArray[np.float64]) -> torch.Tensor:
        pts = np.asarray(points_world, dtype=np.float64)
        vox = pts @ self.T_voxel_from_world[:3, :3].T + self.T_voxel_from_world[:3, 3]
        n = np.array(self.shape, dtype=np.float64)
        g = 2.0 * vox / np.maximum(n - 1.0, 1.0) - 1.0  # align_corners=True normalisation
        # grid_sample wants (x, y, z) = (axis 2, axis 1, axis 0)
        g = g[..., ::-1].astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(g.reshape(1, 1, 1, -1, 3)))

    def sample(self, points_world: NDArray[np.float64]) -> NDArray[np.float32]:
        """Trilinear property values at world points (..., 3) -> (..., 3) channels ``PROPERTY_CHANNELS``."""
        pts = np.asarray(points_world)
        out = torch.nn.functional.grid_sample(
            self._torch_props, self._grid(pts), mode="bilinear", padding_mode="border", align_corners=True
        )
        return out[0, :, 0, 0, :].numpy().T.reshape(pts.shape[:-1] + (len(PROPERTY_CHANNELS),))

    def sample_labels(self, points_world: NDArray[np.float64]) -> NDArray[np.uint8]:
        """Nearest-voxel labels at world points (..., 3); 0 outside the grid or without labels."""
        pts = np.asarray(points_world, dtype=np.float64)
        if self.labels is None:
            return np.zeros(pts.shape[:-1], dtype=np.uint8)
        vox = np.rint(pts @ self.T_voxel_from_world[:3, :3].T + self.T_voxel_from_world[:3, 3]).astype(np.int64)
        n = np.array(self.shape)
        ok = np.all((vox >= 0) & (vox < n), axis=-1)
        out = np.zeros(pts.shape[:-1], dtype=np.uint8)
        v = vox[ok]
        out[ok] = self.labels[v[:, 0], v[:, 1], v[:, 2]]
        return out

    def label_id(self, name: str) -> int:
        return self.label_names.index(name)


def volumes_from_labels(
    labels: NDArray[np.integer], label_names: tuple[str, ...], echo_texture: NDArray[np.float32] | None = None
) -> NDArray[np.float32]:
    """(3, ...) property volumes from a label volume using :data:`TISSUES` (echo times optional texture)."""
    lut = np.array(
        [[TISSUES[n].echo, TISSUES[n].impedance_mrayl, TISSUES[n].attenuation_db_cm_mhz] for n in label_names],
        dtype=np.float32,
    )
    props = np.moveaxis(lut[labels], -1, 0).copy()
    if echo_texture is not None:
        props[0] *= echo_texture
    return props


@dataclass
class PlanarSurface:
    """A flat contact surface: points ``origin + a*u + b*v``, outward normal ``normal`` (world)."""

    origin: NDArray[np.float64]
    u: NDArray[np.float64]
    v: NDArray[np.float64]
    extent_mm: tuple[float, float] = (40.0, 40.0)
    meta: dict = field(default_factory=dict)

    @property
    def normal(self) -> NDArray[np.float64]:
        n = np.cross(self.u, self.v)
        return n / np.linalg.norm(n)

    def point_and_frame(self, a: NDArray, b: NDArray) -> tuple[NDArray, NDArray, NDArray, NDArray]:
        """Contact points (..., 3), surface axes u, v and outward normal (..., 3) at coordinates (a, b) mm."""
        a = np.asarray(a, dtype=np.float64)[..., None]
        b = np.asarray(b, dtype=np.float64)[..., None]
        p = self.origin + a * self.u + b * self.v
        shape = p.shape
        return (
            p,
            np.broadcast_to(self.u, shape),
            np.broadcast_to(self.v, shape),
            np.broadcast_to(self.normal, shape),
        )


def homogeneous_scene(
    echo: float = 1.0, seed: int = 0, spacing_mm: float = 0.2, size_mm: float = 400.0, attenuation: float = 0.0
) -> Scene:
    """A uniform medium (for physics checks): echo constant, no boundaries, optional attenuation.

    The contact surface is the plane ``z = 0`` of the world with the medium
    below (outward normal +z).
    """
    props = np.empty((3, 2, 2, 2), dtype=np.float32)
    props[0] = echo
    props[1] = 1.6
    props[2] = attenuation
    T = np.diag([size_mm, size_mm, size_mm, 1.0])
    T[:3, 3] = -size_mm / 2
    surface = PlanarSurface(
        origin=np.zeros(3), u=np.array([1.0, 0.0, 0.0]), v=np.array([0.0, 1.0, 0.0]), extent_mm=(100.0, 100.0)
    )
    return Scene(props, T, ScattererField(seed=seed, spacing_mm=spacing_mm), surface=surface, name="homogeneous")


def warped_scene(scene: Scene, displacement_mm: NDArray[np.floating], name: str | None = None) -> Scene:
    """The scene with its tissue moved by a pull displacement field on the scene's own grid.

    ``displacement_mm``: (3, n0, n1, n2) world-mm vectors ``u`` (x, y, z) at
    every voxel centre; the new scene's properties at world point ``x`` are
    the old ones at ``x + u(x)`` (trilinear; labels nearest).  The scatterer
    field (speckle) stays the same world-fixed field: anatomy moves, the
    speckle realisation does not (adequate for registration studies, where
    speckle is not tracked).
    """
    u = np.asarray(displacement_mm, dtype=np.float64)
    if u.shape != (3,) + scene.shape:
        raise ValueError(f"displacement must be (3, {', '.join(map(str, scene.shape))}), got {u.shape}")
    n0, n1, n2 = scene.shape
    idx = np.stack(np.meshgrid(np.arange(n0), np.arange(n1), np.arange(n2), indexing="ij"), axis=-1).astype(np.float64)
    world = idx @ scene.T_world_from_voxel[:3, :3].T + scene.T_world_from_voxel[:3, 3]
    world += np.moveaxis(u, 0, -1)
    props = np.moveaxis(scene.sample(world), -1, 0)
    labels = scene.sample_labels(world) if scene.labels is not None else None
    return Scene(
        props,
        scene.T_world_from_voxel,
        scene.scatterers,
        labels=labels,
        label_names=scene.label_names,
        surface=scene.surface,
        name=name or f"{scene.name}-warped",
        salient_labels=scene.salient_labels,
    )
