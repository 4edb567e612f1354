"""The pipeline's HTML report: trajectory, drift, volume, overlays, metrics, timings."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from usnav.report import Report
from usnav.report import figures

__all__ = ["build_report"]


def _fmt(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def build_report(sweep, G_est: NDArray[np.float64], G_true: NDArray[np.float64] | None, volume,
                 mri_initial: list, mri_corrected: list, metrics: dict, method: str) -> Report:
    """Assemble the report (not written yet) from the pipeline's results."""
    H, W = sweep.frame_shape
    corner = sweep.T_mm_from_pixel @ np.array([W, H, 0.0, 1.0])
    origin = sweep.T_mm_from_pixel @ np.array([1.0, 1.0, 0.0, 1.0])
    size_mm = (float(corner[0] - origin[0]), float(corner[1] - origin[1]))
    r = Report("usnav pipeline report",
               subtitle=f"sweep {sweep.name}: {sweep.n_frames} frames of {H}x{W}; poses by '{method}'")

    r.heading("Summary")
    rows = []
    if "tusrec" in metrics:
        t = metrics["tusrec"]
        rows.append(["final drift (mean pixel error of the last frame) mm", _fmt(metrics["drift_mm"][-1])])
        rows.append(["TUS-REC score vs tracking (1 = perfect, 0 = identity)", _fmt(t["score"], 3)])
    if "landmarks" in metrics:
        lm = metrics["landmarks"]
        rows.append(["landmark TRE before registration mm", _fmt(lm["before"]["TRE_mm"])])
        rows.append(["landmark TRE after registration mm", _fmt(lm["after"]["TRE_mm"])])
        rows.append(["TRE30 (hardest 30 %) after mm", _fmt(lm["after"]["TRE30_mm"])])
    rows.append(["total time s", _fmt(sum(metrics.get("timings_s", {}).values()), 1)])
    r.table(["quantity", "value"], rows)

    r.heading("Trackerless reconstruction")
    r.image(figures.trajectory_figure(G_est, G_true, size_mm, every=max(1, len(G_est) // 6)),
            "Frame centres and outlines in frame 0 (mm): estimated vs truth.")
    if "drift_mm" in metrics:
        r.image(figures.drift_figure({method: metrics["drift_mm"]}),
                "Mean distance between estimated and true pixel positions, per frame (the GPE integrand).")
        t = metrics["tusrec"]
        r.table(["metric", "estimate mm", "identity mm", "score"],
                [[m, t[m], t[f"{m}_identity"], t[f"{m}_score"]] for m in ("GPE", "GLE", "LPE", "LLE")], digits=3)
    else:
        r.paragraph("The sweep has no tracking, so the reconstruction accuracy cannot be measured.", note=True)

    r.heading("Compounded 3D ultrasound")
    vm = metrics.get("volume", {})
    r.paragraph(f"Grid {vm.get('shape')} at {_fmt(vm.get('spacing_mm', [0])[0])} mm; "
                f"{100 * (vm.get('filled_fraction') or 0):.1f} % of voxels hit by a pixel.")
    r.image(figures.orthogonal_slices_figure(volume.array, volume.spacing_mm, title="iUS volume (frame 0 image-mm)"),
            "Orthogonal slices through the centre of the compounded volume.")

    if mri_initial:
        r.heading("MRI to ultrasound registration")
        fixed = volume.array.astype(np.float32)
        weight = volume.weight if volume.weight is not None else fixed > 0
        # the slice with the most ultrasound in it
        k = int(np.argmax((weight > 0).sum(axis=(0, 1))))
        if "skipped" in metrics.get("registration", {}):
            r.paragraph("Registration skipped: " + metrics["registration"]["skipped"] + ".", note=True)
        r.image(figures.overlay_figure(fixed, mri_initial[0], mri_corrected[0], axis=2, index=k,
                                       spacing_mm=volume.spacing_mm, title="MRI (first given) on iUS"),
                "Before: MRI placed by the navigation pose. After: rigid + deformable registration.")
        if "landmarks" in metrics:
            lm = metrics["landmarks"]
            r.table(["landmarks", "TRE mm", "TRE30 mm", "max mm"],
                    [["before registration", lm["before"]["TRE_mm"], lm["before"]["TRE30_mm"], lm["before"]["TRE_max_mm"]],
                     ["after registration", lm["after"]["TRE_mm"], lm["after"]["TRE30_mm"], lm["after"]["TRE_max_mm"]]])

    r.heading("Timings")
    r.table(["stage", "seconds"], [[k, v] for k, v in metrics.get("timings_s", {}).items()], digits=1)
    return r
