"""Run the joined pipeline end to end and write its outputs and report.

Outputs in ``out`` (all NIfTI files share one grid and one affine: the iUS
grid placed in MRI world (RAS mm) by the navigation pose, so 3D Slicer and
ITK overlay them on the preoperative MRI directly):

- ``us_volume.nii.gz``: the compounded 3D iUS volume (uint8);
- ``displacement.nii.gz``: (X, Y, Z, 3) float32 pull field in voxels of that
  grid (Learn2Reg convention: the MRI is sampled at ``x + u(x)``);
- ``<mri>_initial.nii.gz`` / ``<mri>_corrected.nii.gz``: each MRI resampled on
  the iUS grid with the navigation pose only / after registration (the
  brain-shift-corrected MRI);
- ``transforms.h5``: the estimated frame transforms (TUS-REC prediction file);
- ``landmarks_mapped.csv``: sweep landmarks mapped into MRI world, when given;
- ``metrics.json`` and ``report.html``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from usnav import geometry as g
from usnav.errors import input_error
from usnav.io.atomic import atomic_path
from usnav.pipeline import stages as st

__all__ = ["PipelineResult", "run"]

Progress = Callable[[str, int, int], None]

# The registration works on 4 mm cells with 3-cell neighbourhoods; thinner volumes cannot be registered.
MIN_FOV_EXTENT_MM = 24.0


def _fov_extent_mm(fov: NDArray[np.bool_], spacing_mm: NDArray[np.float64]) -> NDArray[np.float64]:
    """Bounding-box size (3,) in mm of the voxels with data."""
    idx = np.argwhere(fov)
    if len(idx) == 0:
        return np.zeros(3)
    return (idx.max(axis=0) - idx.min(axis=0) + 1) * np.asarray(spacing_mm, dtype=np.float64)


@dataclass
class PipelineResult:
    """Paths written, metrics (mm, s) and per-stage timings (s)."""

    out_dir: Path
    paths: dict[str, Path] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def report(self) -> Path:
        return self.paths["report"]


def _tre(mapped: NDArray[np.float64], truth: NDArray[np.float64], initial: NDArray[np.float64]) -> dict:
    err = np.linalg.norm(mapped - truth, axis=1)
    init = np.linalg.norm(initial - truth, axis=1)
    hardest = np.argsort(init)[::-1][: max(1, int(np.ceil(0.3 * len(init))))]
    return {"TRE_mm": float(err.mean()), "TRE30_mm": float(err[hardest].mean()), "TRE_max_mm": float(err.max()),
            "per_landmark_mm": err.tolist()}


def _landmark_points_img0(sweep: st.Sweep, G: NDArray[np.float64]) -> NDArray[np.float64]:
    from usnav.metrics.tusrec import landmark_points_mm

    lm = sweep.landmarks
    Gall = np.concatenate([np.eye(4)[None], G])
    return g.apply(Gall[lm[:, 0]], landmark_points_mm(lm, sweep.T_mm_from_pixel))


def run(
    sweep: str | Path | st.Sweep,
    mri: Sequence[str | Path] = (),
    init_pose: str | Path | NDArray[np.float64] | None = None,
    out: str | Path = "usnav_out",
    method: str = "default",
    model: str | Path | None = None,
    calib: str | Path | None = None,
    plus_config: str | Path | None = None,
    spacing_mm: float = 0.5,
    landmarks_mri: str | Path | NDArray[np.float64] | None = None,
    true_T_mri_from_image: NDArray[np.float64] | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
) -> PipelineResult:
    """Freehand sweep -> poses -> 3D iUS -> MRI registration -> corrected MRI + report.

    sweep: TUS-REC scan (.h5), PLUS sequence (.igs.mha, with ``plus_config``) or a :class:`Sweep`.
    mri: NIfTI MRIs (ceT1, T2, ...) in one MRI world; registered jointly.
    init_pose: T_mri_from_image0 (4x4 file or array): pose of the first frame's
        image-mm in MRI world, as navigation gives it (may be off by ~10 mm / 15 deg).
    method: pose estimation (``default``, a :mod:`usnav.freehand` method, ``tracked``, ``identity``).
    landmarks_mri: (K, 3) MRI-world mm of the sweep's K landmarks (CSV or array), for TRE.
    true_T_mri_from_image: (N, 4, 4) true frame poses in MRI world (simulations), for the report.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = PipelineResult(out_dir=out)
    tick = progress or (lambda *_: None)
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        res.timings_s[name] = now - clock
        clock = now

    # 1. sweep and trackerless poses
    sw = sweep if isinstance(sweep, st.Sweep) else st.load_sweep(sweep, calib=calib, plus_config=plus_config)
    if mri and init_pose is None:
        raise input_error(None, "registration needs --init-pose (the navigation pose of the first frame in MRI space)")
    mris = [st.load_mri(p) for p in mri]
    T_mri_from_image0 = None
    if init_pose is not None:
        T_mri_from_image0 = st.read_pose(init_pose) if not isinstance(init_pose, np.ndarray) else g.check_rigid(init_pose)
    lm_truth = None
    if landmarks_mri is not None:
        lm_truth = np.loadtxt(landmarks_mri, delimiter=",", ndmin=2) if not isinstance(landmarks_mri, np.ndarray) else landmarks_mri
        if sw.landmarks is None or len(sw.landmarks) != len(lm_truth):
            raise input_error(landmarks_mri if not isinstance(landmarks_mri, np.ndarray) else None,
                              f"has {len(lm_truth)} rows but the sweep has "
                              f"{0 if sw.landmarks is None else len(sw.landmarks)} landmarks; rows must pair up")
    lap("load inputs")
    G, L = st.estimate_poses(sw, method=method, model=model, device=device,
                             progress=lambda d, t: tick("trackerless poses", d, t))
    from usnav.io.tusrec import write_prediction

    res.paths["transforms"] = write_prediction(out / "transforms.h5", G, L)
    lap("trackerless poses")

    # TUS-REC metrics against tracking, when the sweep has it
    if sw.tracked_global is not None and method != "tracked":
        from usnav.metrics.tusrec import pixel_error_per_frame, score_scan

        s = score_scan("sweep", sw.name, G, L, sw.tracked_global, sw.tracked_local, sw.T_mm_from_pixel,
                       sw.frame_shape, sw.landmarks)
        res.metrics["tusrec"] = s.as_dict()
        res.metrics["drift_mm"] = pixel_error_per_frame(G, sw.tracked_global, sw.T_mm_from_pixel, sw.frame_shape).tolist()
        lap("tracking comparison")

    # 2. compounding in frame 0 image-mm
    vol = st.compound_sweep(sw, G, spacing_mm=spacing_mm, progress=lambda d, t: tick("compounding", d, t))
    A_img0 = vol.T_world_from_voxel
    A_world = (T_mri_from_image0 if T_mri_from_image0 is not None else np.eye(4)) @ A_img0
    from usnav.io.nifti import write_nifti

    res.paths["us_volume"] = write_nifti(out / "us_volume.nii.gz", vol.array, A_world, world="ras")
    res.metrics["volume"] = {"shape": list(vol.shape), "spacing_mm": vol.spacing_mm.tolist(),
                             "filled_fraction": float((vol.weight > 0).mean()) if vol.weight is not None else None}
    lap("compounding")

    # 3. registration of the MRI to the iUS volume
    disp = None
    mri_initial: list[NDArray[np.float32]] = []
    mri_corrected: list[NDArray[np.float32]] = []
    if mris:
        tick("registration", 0, 1)
        mri_initial = [st.resample_to_grid(m, A_world, vol.shape) for m in mris]
        fov = vol.weight > 0 if vol.weight is not None else vol.array > 0
        extent_mm = _fov_extent_mm(fov, vol.spacing_mm)
        if extent_mm.min() < MIN_FOV_EXTENT_MM:
            # A sweep whose poses collapse onto a few planes gives no 3D volume to register to.
            res.metrics["registration"] = {"skipped": (
                f"the compounded volume is only {extent_mm.min():.1f} mm thick along one axis "
                f"(< {MIN_FOV_EXTENT_MM:.0f} mm): the estimated poses do not span a 3D volume")}
            mri_corrected = list(mri_initial)
        else:
            reg = st.register_mri_to_us(vol.array, mri_initial, vol.spacing_mm, fov_mask=fov)
            disp = reg.disp_vox
            from usnav.register.pipeline import warp_image

            mri_corrected = [warp_image(m, disp) for m in mri_initial]
            res.paths["displacement"] = write_nifti(out / "displacement.nii.gz", disp.astype(np.float32), A_world,
                                                    world="ras")
            res.metrics["registration"] = {"runtime_s": reg.runtime_s}
        for m, before, after in zip(mris, mri_initial, mri_corrected, strict=True):
            stem = m.name.removesuffix(".gz").removesuffix(".nii")
            res.paths[f"{stem}_initial"] = write_nifti(out / f"{stem}_initial.nii.gz", before, A_world, world="ras")
            if disp is not None:
                res.paths[f"{stem}_corrected"] = write_nifti(out / f"{stem}_corrected.nii.gz", after, A_world,
                                                             world="ras")
        tick("registration", 1, 1)
        lap("registration")

    # 4. landmarks
    if sw.landmarks is not None and T_mri_from_image0 is not None:
        vox = g.apply(np.linalg.inv(A_img0), _landmark_points_img0(sw, G))
        before = st.map_points_to_mri(vox, None, A_world)
        after = st.map_points_to_mri(vox, disp, A_world) if disp is not None else before
        with atomic_path(out / "landmarks_mapped.csv") as tmp:
            np.savetxt(tmp, np.concatenate([sw.landmarks, after], axis=1), delimiter=",", fmt="%.6g",
                       header="frame,x_px,y_px,x_mm,y_mm,z_mm (MRI world after registration)")
        res.paths["landmarks_mapped"] = out / "landmarks_mapped.csv"
        if lm_truth is not None:
            res.metrics["landmarks"] = {"before": _tre(before, lm_truth, before), "after": _tre(after, lm_truth, before)}
    lap("landmarks")

    # 5. report
    from usnav.pipeline.report import build_report

    true_G = None
    if true_T_mri_from_image is not None:
        true_G = g.invert(true_T_mri_from_image[0]) @ true_T_mri_from_image[1:]
    elif sw.tracked_global is not None and method != "tracked":
        true_G = sw.tracked_global
    res.metrics["timings_s"] = dict(res.timings_s)
    report = build_report(sw, G, true_G, vol, mri_initial, mri_corrected, res.metrics, method)
    res.paths["report"] = report.write(out / "report.html")
    lap("report")
    res.metrics["timings_s"] = dict(res.timings_s)
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps({k: v for k, v in res.metrics.items() if k != "drift_mm"}, indent=2) + "\n")
    res.paths["metrics"] = out / "metrics.json"
    return res
