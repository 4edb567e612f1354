"""A simulated neurosurgical case for the joined pipeline, with known truth.

One subject's brain scene (MNI152 anatomy, craniotomy window; :mod:`usnav.sim.brain`)
gives

- the **preoperative MRI** (ceT1 and T2 contrasts from the tissue labels) on the
  scene grid, in the scene's world frame ("MRI world", mm);
- a known **brain shift** (gravity sag below the craniotomy, smooth random
  part; :func:`usnav.sim.brain_shift.make_brain_shift`) applied to the scene;
- a **freehand sweep** through the craniotomy,
  rendered with the B-mode simulator from the *shifted* brain;
- landmark pairs: points on salient structures in the sweep's frames (post-shift
  position) and the same tissue points in the preoperative MRI;
- the true pose of frame 0 in MRI world and a perturbed one, as a navigation
  system would give it.

Everything is deterministic in ``seed``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import gaussian_filter

from usnav import geometry as g

__all__ = ["DemoCase", "simulate_demo_case", "write_demo_case"]

# Relative MRI intensities per brain-scene label (ceT1, T2).
_MRI_CONTRAST = {
    "gel": (0.0, 0.0),
    "dura": (0.55, 0.35),
    "bone": (0.08, 0.05),
    "grey_matter": (0.48, 0.62),
    "white_matter": (0.78, 0.42),
    "csf": (0.12, 1.0),
    "pia_sulcus": (0.25, 0.85),
    "falx": (0.6, 0.3),
}


@dataclass
class DemoCase:
    """Everything the demo needs, with ground truth.

    frames: (N, H, W) uint8 sweep of the shifted brain.
    T_mm_from_pixel: (4, 4) pixel (1-based) -> image-mm scaling of the frames.
    T_world_from_image: (N, 4, 4) true frame poses, image-mm -> MRI world mm.
    fan_mask: (H, W) bool, pixels inside the probe's fan.
    mri_cet1, mri_t2: (X, Y, Z) float32 preoperative MRI on ``T_world_from_mri_voxel``.
    T_world_from_mri_voxel: (4, 4) MRI grid, voxel -> world mm.
    shift_mm: (X, Y, Z, 3) float32 pull field of the brain shift on the MRI grid:
        post-shift tissue at world x was at x + shift(x) before surgery.
    landmarks_frame: (K, 3) int (frame index >= 1, x, y 1-based pixels) in the sweep.
    landmarks_us_world: (K, 3) post-shift world mm of those landmarks.
    landmarks_mri_world: (K, 3) pre-shift world mm of the same tissue points.
    T_world_from_image0_init: (4, 4) the "navigation" pose of frame 0 (perturbed truth).
    """

    frames: NDArray[np.uint8]
    T_mm_from_pixel: NDArray[np.float64]
    T_world_from_image: NDArray[np.float64]
    fan_mask: NDArray[np.bool_]
    mri_cet1: NDArray[np.float32]
    mri_t2: NDArray[np.float32]
    T_world_from_mri_voxel: NDArray[np.float64]
    shift_mm: NDArray[np.float32]
    landmarks_frame: NDArray[np.int64]
    landmarks_us_world: NDArray[np.float64]
    landmarks_mri_world: NDArray[np.float64]
    T_world_from_image0_init: NDArray[np.float64]
    shift_stats: dict

    @property
    def T_image0_from_image(self) -> NDArray[np.float64]:
        """True global transforms (N-1, 4, 4): frame n -> frame 0 image-mm."""
        return g.invert(self.T_world_from_image[0]) @ self.T_world_from_image[1:]


def _mri_from_labels(labels: NDArray[np.uint8], names: tuple[str, ...], rng: np.random.Generator,
                     voxel_mm: float) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    lut = np.array([_MRI_CONTRAST.get(n, (0.3, 0.3)) for n in names], dtype=np.float32)
    out = []
    shape = labels.shape
    coarse = tuple(max(2, s // 16) for s in shape)
    for c in range(2):
        img = gaussian_filter(lut[labels, c], 0.6 / voxel_mm)
        bias = gaussian_filter(rng.standard_normal(coarse), 1.0)
        bias = np.kron(bias, np.ones((16, 16, 16)))[: shape[0], : shape[1], : shape[2]]
        if bias.shape != shape:
            bias = np.pad(bias, [(0, s - b) for s, b in zip(shape, bias.shape, strict=True)], mode="edge")
        img = img * (1.0 + 0.08 * bias / (np.abs(bias).max() + 1e-9))
        img = np.abs(img + 0.02 * rng.standard_normal(shape))
        out.append((1000.0 * img).astype(np.float32))
    return out[0], out[1]


def _random_pose_error(rng: np.random.Generator, rot_deg: float, shift_mm: float,
                       centre: NDArray[np.float64]) -> NDArray[np.float64]:
    """A rigid error (image-mm -> image-mm): rotation by ``rot_deg`` about a random
    axis through ``centre`` (the imaged region), then a ``shift_mm`` translation."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    q = np.concatenate([[np.cos(np.radians(rot_deg) / 2)], np.sin(np.radians(rot_deg) / 2) * axis])
    R = g.matrix_from_quaternion(q)
    return g.translation_matrix(centre + shift_mm * direction) @ R @ g.translation_matrix(-centre)


def simulate_demo_case(
    seed: int = 0,
    n_frames: int = 160,
    frame_hw: tuple[int, int] = (480, 640),
    depth_mm: float = 90.0,
    init_error: tuple[float, float] = (8.0, 6.0),
    protocol: str = "Per_L_DtP",
    n_landmarks: int = 20,
    progress: Callable[[str, int, int], None] | None = None,
) -> DemoCase:
    """Simulate the case (a few tens of seconds for the default size on 2 cores).

    frame_hw: frame size in pixels; the default weights' features are measured on
        480x640 frames (frames rendered smaller have other speckle statistics).
    init_error: (rotation degrees about the imaged region's centre, translation mm)
        of the navigation pose error.
    protocol: probe motion (:func:`usnav.sim.motion.trajectory`); the default, a
        slow perpendicular sweep across the craniotomy, covers a block densely.
    progress: called as ``progress(stage, done, total)``.
    """
    from usnav.sim.brain_shift import BrainShiftParams, make_brain_shift, upsample_shift
    from usnav.metrics.tusrec import landmark_points_mm
    from usnav.sim.bmode import BModeParams, render_frame
    from usnav.sim.motion import trajectory
    from usnav.sim.probe import Probe
    from usnav.sim.scene import warped_scene
    from usnav.sim.tusrec_sim import choose_landmarks, make_scene

    def tick(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(stage, done, total)

    rng = np.random.default_rng([seed, 2024])
    tick("brain scene", 0, 1)
    scene = make_scene("brain", int(rng.integers(0, 2**31)), "RH")
    tick("brain scene", 1, 1)
    A = scene.T_world_from_voxel
    voxel_mm = float(np.linalg.norm(A[:3, 0]))
    labels = scene.labels
    names = tuple(scene.label_names)
    cet1, t2 = _mri_from_labels(labels, names, rng, voxel_mm)

    # Brain shift: gravity into the brain through the craniotomy.
    surface = scene.surface
    normal = surface.normal
    contact = surface.origin
    L = {n: i for i, n in enumerate(names)}
    brain = (labels == L["grey_matter"]) | (labels == L["white_matter"])
    factor = 4
    cs = tuple(s // factor for s in labels.shape)
    weight = brain[: cs[0] * factor, : cs[1] * factor, : cs[2] * factor].reshape(
        cs[0], factor, cs[1], factor, cs[2], factor).mean(axis=(1, 3, 5)) > 0.5
    params = dataclasses.replace(BrainShiftParams.sample(rng), collapse_mm=1.0)
    u_coarse, params, stats = make_brain_shift(
        rng, labels.shape, A, gravity_world=-normal, craniotomy_world=contact,
        cavity_centre_world=contact - 30.0 * normal, cavity_radius_mm=3.0, weight_mask_coarse=weight,
        params=params, factor=factor,
    )
    u_vox = upsample_shift(u_coarse, labels.shape)  # (X, Y, Z, 3) voxels, pull
    shift_mm = (u_vox @ A[:3, :3].T).astype(np.float32)
    shifted = warped_scene(scene, np.moveaxis(shift_mm, -1, 0), name="brain-shifted")

    # Freehand sweep through the craniotomy, rendered from the shifted brain.
    probe = Probe.for_frame_size(*frame_hw, depth_mm=depth_mm)
    T_world_from_image = trajectory(shifted.surface, protocol, n_frames, probe, int(rng.integers(0, 2**31)))
    bmode = BModeParams()
    frames = np.empty((n_frames, *frame_hw), dtype=np.uint8)
    for i in range(n_frames):
        frames[i] = render_frame(shifted, T_world_from_image[i], probe, bmode)
        tick("rendering frames", i + 1, n_frames)

    lm = choose_landmarks(shifted, T_world_from_image, probe, np.random.default_rng([seed, 7]), k=n_landmarks)
    us_world = g.apply(T_world_from_image[lm[:, 0]], landmark_points_mm(lm, probe.T_mm_from_pixel))
    # Pre-shift position: x + shift(x), shift sampled trilinearly on the MRI grid.
    from scipy.ndimage import map_coordinates

    vox = g.apply(np.linalg.inv(A), us_world).T
    u_at = np.stack([map_coordinates(shift_mm[..., k], vox, order=1, mode="nearest") for k in range(3)], axis=1)
    mri_world = us_world + u_at

    H, W = frame_hw
    centre = (probe.T_mm_from_pixel @ [W / 2, H / 2, 0, 1])[:3]
    T_init = T_world_from_image[0] @ _random_pose_error(rng, *init_error, centre=centre)
    return DemoCase(
        frames=frames, T_mm_from_pixel=probe.T_mm_from_pixel, T_world_from_image=T_world_from_image,
        fan_mask=probe.fan_mask, mri_cet1=cet1, mri_t2=t2, T_world_from_mri_voxel=A, shift_mm=shift_mm,
        landmarks_frame=lm, landmarks_us_world=us_world, landmarks_mri_world=mri_world,
        T_world_from_image0_init=T_init, shift_stats=dict(stats),
    )


def write_demo_case(case: DemoCase, out: str | Path) -> dict[str, Path]:
    """Write the case as a user would have it: a TUS-REC scan (frames + tracked
    poses + calibration), the MRI as NIfTI, the navigation pose and landmarks.

    Returns the written paths by name.
    """
    from usnav.io.nifti import write_nifti
    from usnav.io.tusrec import Calibration, write_calibration, write_landmarks, write_scan

    out = Path(out)
    calib = Calibration(T_mm_from_pixel=case.T_mm_from_pixel, T_tool_from_mm=np.eye(4))
    sweep_root = out / "sweep"
    write_calibration(sweep_root / "calib_matrix.csv", calib)
    write_scan(sweep_root, "000", "RH_rotation", case.frames, case.T_world_from_image)
    write_landmarks(sweep_root, "000", {"RH_rotation": case.landmarks_frame})
    paths = {
        "sweep": sweep_root / "frames_transfs" / "000" / "RH_rotation.h5",
        "calib": sweep_root / "calib_matrix.csv",
        "cet1": write_nifti(out / "mri_ceT1.nii.gz", case.mri_cet1, case.T_world_from_mri_voxel, world="ras"),
        "t2": write_nifti(out / "mri_T2.nii.gz", case.mri_t2, case.T_world_from_mri_voxel, world="ras"),
    }
    pose = out / "init_pose.txt"
    np.savetxt(pose, case.T_world_from_image0_init, header="T_mri_from_image0 (navigation pose of frame 0), mm")
    paths["init_pose"] = pose
    lm = out / "landmarks_mri.csv"
    np.savetxt(lm, case.landmarks_mri_world, delimiter=",", header="x_mm,y_mm,z_mm (MRI world), row k pairs landmark k")
    paths["landmarks_mri"] = lm
    return paths
