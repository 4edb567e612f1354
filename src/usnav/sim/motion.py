"""Hand-like freehand probe motion on a scene's skin surface.

Pose convention
---------------
``probe_pose(surface, s, w, yaw, fan, rock, probe) -> T_world_from_image``:
the face centre of the probe (:attr:`Probe.face_centre_mm`, image-mm) sits on
the surface point with surface coordinates ``(s, w)`` (mm; for the forearm
``s`` runs along the arm, ``w`` across).  Before tilting, the image depth
axis (+y) points into the tissue (minus the outward normal) and the lateral
axis (+x) makes the angle ``yaw`` (radians) with the surface's "across"
direction, towards "along": ``yaw = 0`` is a transverse (cross-sectional)
view of the arm, ``yaw = pi/2`` a longitudinal view.  Then, about the contact
point and in the probe's own axes,

- ``fan`` tilts the probe about its lateral (x) axis: the image plane sweeps
  out of plane ("fanning side to side");
- ``rock`` tilts it about the elevation (z) axis: the image rotates in
  plane ("rocking along the long axis" of the transducer).

Protocols (frame rate 20 Hz; time is normalised and warped by a random,
smoothly varying speed):

- ``rotation`` (TUS-REC 2025): contact near one point (near the elbow for
  the forearm); fan, rock, rotate about 90 degrees about the normal, fan
  and rock again.
- ``{Par,Per}_{L,C,S}_{DtP,PtD}`` (TUS-REC 2024): sweep along the arm on a
  straight (L), C-shaped or S-shaped path, distal-to-proximal or back, the
  image plane parallel (Par) or perpendicular (Per) to the sweep direction.

Every protocol adds small tremor (8-12 Hz), slow drift of the angles and a
little contact-pressure variation; the probe face never leaves the surface.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import gaussian_filter1d

from usnav.sim.probe import Probe

__all__ = [
    "FRAME_RATE_HZ",
    "PROTOCOLS_2024",
    "probe_pose",
    "trajectory",
    "SurfaceRange",
    "surface_range",
]

FRAME_RATE_HZ = 20.0
PROTOCOLS_2024 = tuple(
    f"{plane}_{path}_{direction}"
    for plane in ("Par", "Per")
    for path in ("L", "C", "S")
    for direction in ("DtP", "PtD")
)


@dataclass(frozen=True)
class SurfaceRange:
    """Where on a surface the probe may go: ``s`` and ``w`` ranges (mm), and the rotation-protocol spot."""

    s_range: tuple[float, float]
    w_range: tuple[float, float]
    rotation_spot: tuple[float, float]


def surface_range(surface) -> SurfaceRange:
    """Usable region of a scene surface (forearm: wrist-to-elbow band; plane: its extent)."""
    if hasattr(surface, "length_mm"):
        L = surface.length_mm
        a = min(surface.a0, surface.a1)
        return SurfaceRange((0.1 * L, 0.9 * L), (-0.35 * a, 0.35 * a), (0.85 * L, 0.0))
    ex = getattr(surface, "extent_mm", (40.0, 40.0))
    return SurfaceRange((-ex[0] / 2, ex[0] / 2), (-ex[1] / 2, ex[1] / 2), (0.0, 0.0))


def _rot_axis(axis: NDArray, angle: NDArray) -> NDArray:
    """Rotation matrices (..., 3, 3) about unit ``axis`` (3,) by ``angle`` (...)."""
    x, y, z = axis
    K = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]], dtype=np.float64)
    a = np.asarray(angle, dtype=np.float64)[..., None, None]
    return np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * (K @ K)


def probe_pose(surface, s, w, yaw, fan, rock, probe: Probe, press_mm=0.0) -> NDArray[np.float64]:
    """T_world_from_image (..., 4, 4) for probe parameters (arrays broadcast); see module docstring.

    ``press_mm`` pushes the probe along the inward normal (contact pressure).
    """
    s, w, yaw, fan, rock, press = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (s, w, yaw, fan, rock, press_mm)))
    p, along, across, n = surface.point_and_frame(s, w)
    cy, sy = np.cos(yaw)[..., None], np.sin(yaw)[..., None]
    x0 = cy * across + sy * along
    y0 = -n
    z0 = np.cross(x0, y0)
    R_base = np.stack([x0, y0, z0], axis=-1)  # columns = image axes in world
    R_fan = _rot_axis(np.array([1.0, 0.0, 0.0]), fan)
    R_rock = _rot_axis(np.array([0.0, 0.0, 1.0]), rock)
    R = R_base @ R_fan @ R_rock
    # re-orthonormalise (numerical safety)
    u_, _, vt = np.linalg.svd(R)
    R = u_ @ vt
    T = np.zeros(R.shape[:-2] + (4, 4))
    T[..., :3, :3] = R
    contact = p - press[..., None] * n
    T[..., :3, 3] = contact - np.einsum("...ij,j->...i", R, probe.face_centre_mm)
    T[..., 3, 3] = 1.0
    return T


def _smooth_noise(rng: np.random.Generator, n: int, sigma_frames: float) -> NDArray[np.float64]:
    x = gaussian_filter1d(rng.standard_normal(n + int(6 * sigma_frames)), sigma_frames, mode="wrap")
    x = x[: n]
    return x / (x.std() + 1e-12)


def _tremor(rng: np.random.Generator, n: int, fs: float) -> NDArray[np.float64]:
    """Unit-rms band-limited noise around 8-12 Hz (physiological tremor)."""
    t = np.arange(n) / fs
    out = np.zeros(n)
    for _ in range(4):
        f = rng.uniform(8.0, 12.0)
        out += np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) * (1 + 0.5 * _smooth_noise(rng, n, fs))
    return out / (out.std() + 1e-12)


def _warped_time(rng: np.random.Generator, n: int) -> NDArray[np.float64]:
    """Monotone normalised time in [0, 1] with smoothly varying speed (hand-like)."""
    speed = np.exp(0.35 * _smooth_noise(rng, n, max(2.0, n / 25)))
    tau = np.cumsum(speed)
    tau -= tau[0]
    return tau / tau[-1]


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _rotation_protocol(rng, n, rng_region: SurfaceRange):
    tau = _warped_time(rng, n)
    # phase boundaries (fractions of the scan): fan, rock, rotate, fan, rock
    w = np.array([1.0, 1.0, 0.55, 1.0, 1.0]) * rng.uniform(0.85, 1.15, 5)
    edges = np.concatenate([[0.0], np.cumsum(w) / w.sum()])
    fan = np.zeros(n)
    rock = np.zeros(n)
    yaw = np.zeros(n)
    yaw0 = rng.uniform(-0.2, 0.2)
    turn = math.radians(rng.uniform(80, 100)) * rng.choice([-1.0, 1.0])
    a_fan = [math.radians(rng.uniform(15, 25)) for _ in range(2)]
    a_rock = [math.radians(rng.uniform(10, 18)) for _ in range(2)]
    cycles = [rng.uniform(1.5, 2.5) for _ in range(4)]
    for k, kind in enumerate(("fan", "rock", "rotate", "fan", "rock")):
        m = (tau >= edges[k]) & (tau <= edges[k + 1])
        u = (tau[m] - edges[k]) / (edges[k + 1] - edges[k])
        env = np.sin(np.pi * u) ** 0.5  # start and end near neutral
        if kind == "fan":
            j = 0 if k == 0 else 1
            fan[m] = a_fan[j] * env * np.sin(2 * np.pi * cycles[2 * j] * u)
        elif kind == "rock":
            j = 0 if k == 1 else 1
            rock[m] = a_rock[j] * env * np.sin(2 * np.pi * cycles[2 * j + 1] * u)
        yaw[m] = yaw0 + (turn * _smoothstep(u) if kind == "rotate" else (turn if k > 2 else 0.0))
    s0, w0 = rng_region.rotation_spot
    s = s0 + rng.uniform(-3, 3) + 1.5 * _smooth_noise(rng, n, n / 10)
    wv = w0 + rng.uniform(-3, 3) + 1.5 * _smooth_noise(rng, n, n / 10)
    return s, wv, yaw, fan, rock


def _sweep_protocol(rng, n, name: str, region: SurfaceRange):
    plane, path, direction = name.split("_")
    tau = _warped_time(rng, n)
    s_lo, s_hi = region.s_range
    w_lo, w_hi = region.w_range
    span = (s_hi - s_lo) * rng.uniform(0.75, 0.95)
    start = s_lo + rng.uniform(0, (s_hi - s_lo) - span)
    s = start + span * tau
    w_c = 0.5 * (w_lo + w_hi) + rng.uniform(-0.2, 0.2) * (w_hi - w_lo)
    amp = 0.35 * (w_hi - w_lo) * rng.uniform(0.7, 1.0) * rng.choice([-1.0, 1.0])
    if path == "L":
        wv = w_c + 0.03 * (w_hi - w_lo) * _smooth_noise(rng, n, n / 6)
    elif path == "C":
        wv = w_c + amp * np.sin(np.pi * tau)
    elif path == "S":
        wv = w_c + amp * np.sin(2 * np.pi * tau)
    else:
        raise ValueError(f"unknown path {path!r}")
    if direction == "PtD":
        s = s[::-1].copy()
        wv = wv[::-1].copy()
    elif direction != "DtP":
        raise ValueError(f"unknown direction {direction!r}")
    # sweep direction on the surface and the image-plane orientation relative to it
    # heading of the path's overall course (the hand does not follow every wiggle of the path)
    sig = max(3.0, n / 12.0)
    ds = np.gradient(gaussian_filter1d(s, sig, mode="nearest"))
    dw = np.gradient(gaussian_filter1d(wv, sig, mode="nearest"))
    heading = np.unwrap(np.arctan2(ds, dw))  # angle from "across" towards "along"
    if path == "L":  # a straight sweep: the hand keeps one orientation (drift is added later)
        heading = np.full(n, math.atan2(s[-1] - s[0], wv[-1] - wv[0]))
    if plane == "Par":
        yaw = heading
    elif plane == "Per":
        yaw = heading - np.pi / 2
    else:
        raise ValueError(f"unknown plane {plane!r}")
    fan = math.radians(rng.uniform(-4, 4)) + math.radians(3.0) * _smooth_noise(rng, n, n / 8)
    rock = math.radians(rng.uniform(-3, 3)) + math.radians(2.5) * _smooth_noise(rng, n, n / 8)
    return s, wv, yaw, fan, rock


def trajectory(
    surface,
    protocol: str,
    n_frames: int,
    probe: Probe,
    seed: int,
    frame_rate_hz: float = FRAME_RATE_HZ,
) -> NDArray[np.float64]:
    """Poses T_world_from_image (n_frames, 4, 4) of one scan of ``protocol`` on ``surface``.

    Deterministic in ``seed`` (and the protocol name).
    """
    if n_frames < 2:
        raise ValueError("a scan needs at least 2 frames")
    rng = np.random.default_rng([seed, zlib.crc32(protocol.encode())])
    region = surface_range(surface)
    if protocol == "rotation":
        s, wv, yaw, fan, rock = _rotation_protocol(rng, n_frames, region)
    elif protocol in PROTOCOLS_2024:
        s, wv, yaw, fan, rock = _sweep_protocol(rng, n_frames, protocol, region)
    else:
        raise ValueError(f"unknown protocol {protocol!r}; expected 'rotation' or one of {', '.join(PROTOCOLS_2024)}")
    n = n_frames
    fs = frame_rate_hz
    # hand: slow drift of the angles, physiological tremor, contact-pressure variation
    yaw = yaw + math.radians(1.0) * _smooth_noise(rng, n, 2 * fs)
    fan = fan + math.radians(0.8) * _smooth_noise(rng, n, 2 * fs) + math.radians(0.08) * _tremor(rng, n, fs)
    rock = rock + math.radians(0.8) * _smooth_noise(rng, n, 2 * fs) + math.radians(0.08) * _tremor(rng, n, fs)
    s = s + 0.05 * _tremor(rng, n, fs)
    wv = wv + 0.05 * _tremor(rng, n, fs)
    press = np.clip(0.4 + 0.12 * _smooth_noise(rng, n, fs) + 0.02 * _tremor(rng, n, fs), 0.05, 1.0)
    return probe_pose(surface, s, wv, yaw, fan, rock, probe, press_mm=press)
