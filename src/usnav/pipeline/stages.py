"""The stages of the joined pipeline, each usable on its own.

sweep (frames) -> poses (frame n -> frame 0) -> compounded iUS volume (frame 0
image-mm) -> MRI on the iUS grid (navigation pose) -> rigid + deformable
registration -> displacement field and brain-shift-corrected MRI.

Frames: ``image-mm`` of frame n is ``T_mm_from_pixel @ (x, y, 0, 1)`` with 1-based
pixels (TUS-REC convention, docs/coordinates.md); "frame 0" is image-mm of the
first frame; "MRI world" is the world of the MRI's NIfTI affine (RAS, mm).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from usnav import geometry as g
from usnav.errors import input_error
from usnav.geometry.tracking import global_from_tracking, local_from_tracking

__all__ = [
    "MriImage",
    "Sweep",
    "compound_sweep",
    "estimate_poses",
    "load_mri",
    "load_sweep",
    "map_points_to_mri",
    "read_pose",
    "register_mri_to_us",
    "resample_to_grid",
]

POSE_METHODS_BUILTIN = ("tracked", "identity")


@dataclass
class Sweep:
    """A freehand sweep.

    frames: (N, H, W) uint8 (array or lazy h5py dataset).
    T_mm_from_pixel: (4, 4) 1-based pixel (x, y, 0, 1) -> image-mm.
    fan_mask: (H, W) bool pixels to compound (None: non-zero pixels of frame 0..).
    tracked_global: (N-1, 4, 4) tracked frame n -> frame 0 transforms, if known.
    landmarks: (K, 3) int (frame, x, y; 1-based pixels), if any.
    """

    name: str
    frames: object
    T_mm_from_pixel: NDArray[np.float64]
    fan_mask: NDArray[np.bool_] | None = None
    tracked_global: NDArray[np.float64] | None = None
    tracked_local: NDArray[np.float64] | None = None
    landmarks: NDArray[np.int64] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])  # type: ignore[attr-defined]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])  # type: ignore[attr-defined]


def _find_calibration(scan_path: Path) -> Path | None:
    for parent in list(scan_path.parents)[:4]:
        candidate = parent / "calib_matrix.csv"
        if candidate.exists():
            return candidate
    return None


def _fan_mask_from_frames(frames: object, n_sample: int = 32) -> NDArray[np.bool_]:
    """Pixels that are non-zero in any of up to ``n_sample`` evenly spread frames."""
    n = int(frames.shape[0])  # type: ignore[attr-defined]
    idx = np.unique(np.linspace(0, n - 1, min(n, n_sample)).astype(int))
    mask = np.zeros(frames.shape[1:], dtype=bool)  # type: ignore[attr-defined]
    for i in idx:
        mask |= np.asarray(frames[int(i)]) > 0  # type: ignore[index]
    return mask


def load_sweep(path: str | Path, calib: str | Path | None = None, plus_config: str | Path | None = None) -> Sweep:
    """Load a TUS-REC scan (``.h5``; calibration from ``calib`` or a
    ``calib_matrix.csv`` in a parent folder) or a PLUS sequence (``.mha``;
    ``plus_config`` gives the Image -> Probe calibration)."""
    path = Path(path)
    if not path.exists():
        raise input_error(path, "sweep file not found")
    name = path.name.lower()
    if name.endswith(".h5"):
        from usnav.io.tusrec import landmark_path, read_scan_file

        calib_path = Path(calib) if calib else _find_calibration(path)
        if calib_path is None:
            raise input_error(path, "no calib_matrix.csv given (--calib) or found next to the scan")
        root = path.parents[2] if len(path.parents) > 2 else path.parent
        lm = landmark_path(root, path.parent.name)
        scan = read_scan_file(path, calib_path, lm if lm.exists() else None)
        frames = scan.read_frames()
        tracked_g = scan.T_image0_from_image if scan.tforms is not None else None
        tracked_l = scan.T_previous_from_image if scan.tforms is not None else None
        S = scan.calibration.T_mm_from_pixel  # type: ignore[union-attr]
        landmarks = scan.landmarks
        scan.close()
        return Sweep(path.stem, frames, S, _fan_mask_from_frames(frames), tracked_g, tracked_l, landmarks)
    if name.endswith((".mha", ".mhd")):
        from usnav.io.plus import read_config, read_sequence

        if plus_config is None:
            raise input_error(path, "a PLUS sequence needs its device-set configuration (--plus-config) for the image calibration")
        seq = read_sequence(path)
        cfg = read_config(plus_config)
        image_to_probe = cfg.coordinate_definitions.get(("Image", "Probe"))
        if image_to_probe is None:
            raise input_error(plus_config, "has no Image -> Probe transform in CoordinateDefinitions")
        spacing = np.linalg.norm(image_to_probe[:3, :2], axis=0)
        # image-mm: 0-based PLUS pixel (i, j) at (i*sx, j*sy); with 1-based pixels that is S @ (x-1, y-1).
        S = np.diag([spacing[0], spacing[1], 1.0, 1.0])
        S[:2, 3] = -spacing[:2]
        T_probe_from_mm = image_to_probe @ np.diag([1 / spacing[0], 1 / spacing[1], 1.0, 1.0])
        tracked_g = tracked_l = None
        probe_key = next((k for k in seq.transforms if k.lower() == "probetotracker"), None)
        ref_key = next((k for k in seq.transforms if k.lower() == "referencetotracker"), None)
        if probe_key is not None:
            T_tracker_from_mm = seq.transforms[probe_key] @ T_probe_from_mm
            if ref_key is not None:
                T_tracker_from_mm = g.invert(seq.transforms[ref_key]) @ T_tracker_from_mm
            R = T_tracker_from_mm[:, :3, :3]
            U, _, Vt = np.linalg.svd(R)  # re-orthonormalise (tracker noise, probe scaling residue)
            T_tracker_from_mm[:, :3, :3] = U @ Vt
            if np.isfinite(T_tracker_from_mm).all():
                tracked_g = global_from_tracking(T_tracker_from_mm, np.eye(4))
                tracked_l = local_from_tracking(T_tracker_from_mm, np.eye(4))
        frames = np.ascontiguousarray(seq.frames)
        return Sweep(path.stem, frames, S, _fan_mask_from_frames(frames), tracked_g, tracked_l, None)
    raise input_error(path, "unknown sweep format: expected a TUS-REC scan (.h5) or a PLUS sequence (.igs.mha)")


def estimate_poses(
    sweep: Sweep, method: str = "default", model: str | Path | None = None, device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Global (frame n -> frame 0) and local (frame n -> n-1) transforms, (N-1, 4, 4) each.

    method: ``tracked`` (the sweep's own tracking, a reference), ``identity``,
    or a trackerless method of :mod:`usnav.freehand` (``default`` = its
    default model).
    """
    n = sweep.n_frames
    if method == "tracked":
        if sweep.tracked_global is None:
            raise input_error(sweep.name, "the sweep has no tracked transforms; choose a trackerless method")
        return sweep.tracked_global, sweep.tracked_local  # type: ignore[return-value]
    if method == "identity":
        eye = np.broadcast_to(np.eye(4), (n - 1, 4, 4)).copy()
        return eye, eye.copy()
    from usnav.freehand.predict import make_predictor  # heavy, optional stage

    if method == "default":
        predictor = make_predictor(None, model or "default", device)
    else:
        predictor = make_predictor(method, model, device)
    # The predictor advances by work units (about twice the frame count in total).
    report = None
    if progress is not None:
        done = [0]

        def report(step: int) -> None:
            done[0] += int(step)
            progress(min(done[0], 2 * n), 2 * n)

    G, L = predictor(sweep.frames, sweep.T_mm_from_pixel, progress=report)
    if progress is not None:  # the units are approximate: close the bar when done
        progress(2 * n, 2 * n)
    return np.asarray(G, dtype=np.float64), np.asarray(L, dtype=np.float64)


def compound_sweep(
    sweep: Sweep, T_image0_from_image: NDArray[np.float64], spacing_mm: float = 0.5, method: str = "linear",
    fill_holes: bool = True, progress: Callable[[int, int], None] | None = None,
):
    """Compound the sweep into a volume in frame 0's image-mm space (:class:`usnav.compound.Volume`)."""
    from usnav.compound import compound_frames
    from usnav.compound.holes import HoleFiller

    n = sweep.n_frames
    G = np.concatenate([np.eye(4)[None], np.asarray(T_image0_from_image, dtype=np.float64)])
    if G.shape != (n, 4, 4):
        raise ValueError(f"expected {n - 1} global transforms, got {len(G) - 1}")
    # compound_frames takes 0-based pixels; ours are 1-based.
    one_based = np.eye(4)
    one_based[:2, 3] = 1.0
    T_world_from_pixel0 = G @ sweep.T_mm_from_pixel @ one_based
    fillers = [HoleFiller(kind="gaussian", size=5, stdev=1.0, min_ratio=0.1)] if fill_holes else None
    return compound_frames(
        sweep.frames, T_world_from_pixel0, spacing_mm=spacing_mm, method=method, mode="mean",
        mask=sweep.fan_mask, fill_holes=fillers, progress=progress,
    )


@dataclass
class MriImage:
    """An MRI volume: (X, Y, Z) float32 array and its voxel -> MRI world (RAS mm) affine."""

    name: str
    array: NDArray[np.float32]
    T_world_from_voxel: NDArray[np.float64]


def load_mri(path: str | Path) -> MriImage:
    """Read a NIfTI MRI (3D, finite); world = the file's RAS affine."""
    from usnav.io.nifti import read_nifti

    array, affine = read_nifti(path, world="ras")
    if array.ndim != 3:
        raise input_error(path, f"expected a 3D MRI volume, got shape {array.shape}")
    array = np.asarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise input_error(path, "the MRI contains NaN or Inf voxels")
    return MriImage(Path(path).name, array, affine)


def read_pose(path: str | Path) -> NDArray[np.float64]:
    """A 4x4 rigid matrix from a text file (whitespace or comma separated, '#' comments)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise input_error(path, f"cannot read the pose file ({exc.strerror or exc})") from None
    rows = [line.split("#", 1)[0].replace(",", " ").split() for line in text.splitlines()]
    try:
        values = [float(v) for row in rows for v in row]
    except ValueError:
        raise input_error(path, "the pose file must hold 16 numbers (a 4x4 matrix)") from None
    if len(values) != 16:
        raise input_error(path, f"the pose file must hold 16 numbers (a 4x4 matrix), found {len(values)}")
    return g.check_rigid(np.array(values).reshape(4, 4), name="pose", path=path, atol=1e-3)


def resample_to_grid(
    image: MriImage, T_world_from_gridvox: NDArray[np.float64], shape: Sequence[int], order: int = 1
) -> NDArray[np.float32]:
    """Sample ``image`` at every voxel of a grid given in MRI world (trilinear, 0 outside)."""
    import torch
    import torch.nn.functional as F

    T = np.linalg.inv(image.T_world_from_voxel) @ T_world_from_gridvox  # grid voxel -> MRI voxel
    X, Y, Z = (int(s) for s in shape)
    src = torch.from_numpy(np.ascontiguousarray(image.array, dtype=np.float32))[None, None]
    size = torch.tensor(image.array.shape, dtype=torch.float32)
    out = torch.empty((X, Y, Z), dtype=torch.float32)
    jj, kk = torch.meshgrid(torch.arange(Y, dtype=torch.float32), torch.arange(Z, dtype=torch.float32), indexing="ij")
    base = torch.stack([jj, kk], dim=-1) @ torch.from_numpy(T[:3, 1:3].T.astype(np.float32)) + torch.from_numpy(
        T[:3, 3].astype(np.float32))  # (Y, Z, 3) MRI voxel of grid voxel (0, j, k)
    step = torch.from_numpy(T[:3, 0].astype(np.float32))
    chunk = max(1, 4_000_000 // max(1, Y * Z))
    for i0 in range(0, X, chunk):
        i = torch.arange(i0, min(X, i0 + chunk), dtype=torch.float32)
        vox = base[None] + i[:, None, None, None] * step  # (c, Y, Z, 3)
        # grid_sample: last dim (x, y, z) addresses array axes (2, 1, 0), normalised to [-1, 1].
        norm = (2 * vox / (size - 1).clamp(min=1) - 1).flip(-1)
        out[i0 : i0 + len(i)] = F.grid_sample(src, norm[None], mode="bilinear" if order == 1 else "nearest",
                                              padding_mode="zeros", align_corners=True)[0, 0]
    return out.numpy()


def register_mri_to_us(us: NDArray, mris_on_grid: list[NDArray], spacing_mm: Sequence[float],
                       fov_mask: NDArray[np.bool_] | None = None):
    """Rigid + deformable registration of MRIs (already on the iUS grid) to the iUS volume.

    Returns :class:`usnav.register.pipeline.RegistrationResult` (``disp_vox``: (X, Y, Z, 3)
    pull field in voxels: the MRI is sampled at ``x + u(x)``).
    """
    from usnav.register.pipeline import register_pair

    return register_pair(np.asarray(us, dtype=np.float32), [np.asarray(m) for m in mris_on_grid],
                         spacing_mm=tuple(float(s) for s in spacing_mm), fov_mask=fov_mask)


def map_points_to_mri(points_vox: NDArray[np.float64], disp_vox: NDArray[np.floating] | None,
                      T_world_from_usvox: NDArray[np.float64]) -> NDArray[np.float64]:
    """MRI world positions (K, 3) of iUS-grid points (K, 3 voxels) under the pull field:
    ``T_world_from_usvox @ (x + u(x))`` (u by trilinear interpolation; None: u = 0)."""
    from scipy.ndimage import map_coordinates

    x = np.asarray(points_vox, dtype=np.float64)
    if disp_vox is not None:
        u = np.stack([map_coordinates(np.asarray(disp_vox[..., k], dtype=np.float64), x.T, order=1, mode="nearest")
                      for k in range(3)], axis=1)
        x = x + u
    return g.apply(T_world_from_usvox, x)
