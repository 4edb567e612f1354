"""Physics evidence for the B-mode simulator (issue 3).

Prints a table and writes ``benchmarks/results/sim_realism.json`` plus two
figures: ``sim_frames.png`` (frames of both anatomies and both protocol
families) and ``sim_trajectories.png`` (probe paths and angles).

Measured, on the default 480 x 640 probe (4DC7-3/40-like):

1. Envelope SNR = mean / std before log compression in a homogeneous region
   (fully developed speckle: 1.91).
2. Speckle correlation vs pure out-of-plane displacement 0.1 ... 3 mm, in a
   depth band at the elevational focus, against the beam model's prediction
   ``exp(-s^2 / (2 sigma_e^2))`` (0.5 crossing at ``s = FWHM_e / 2``), and on
   whole uint8 frames.
3. Correlation after compensating a known in-plane shift (lateral and axial
   translation of the probe by whole pixels) vs without compensation.

Usage: ``python benchmarks/sim_realism.py [--quick]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def _crossing(x: np.ndarray, y: np.ndarray, level: float = 0.5) -> float:
    """First x where y falls through ``level`` (linear interpolation)."""
    for i in range(1, len(x)):
        if y[i - 1] >= level > y[i]:
            return float(x[i - 1] + (y[i - 1] - level) * (x[i] - x[i - 1]) / (y[i - 1] - y[i]))
    return float("nan")


def _monotonic(measured: list[float]) -> bool:
    """Strictly decreasing until it first drops below 0.05, then within +-0.05 of zero."""
    m = np.array([1.0] + measured)
    below = np.flatnonzero(m < 0.05)
    stop = int(below[0]) if below.size else len(m)
    falling = bool(np.all(np.diff(m[: stop + 1]) < 0))
    tail = bool(np.all(np.abs(m[stop:]) < 0.05))
    return falling and tail


def physics(probe, quick: bool) -> dict:
    from usnav.geometry import matrix_from_euler_zyx
    from usnav.sim.bmode import BModeParams, frame_from_polar, render_polar
    from usnav.sim.scene import homogeneous_scene

    # a lossless uniform medium imaged with matched (zero) TGC: a flat speckle image
    scene = homogeneous_scene(seed=11)
    params = BModeParams(tgc_db_cm_mhz=0.0)

    def render_frame(scene, T, probe):
        return frame_from_polar(render_polar(scene, T, probe, params), probe, params)

    T0 = matrix_from_euler_zyx([0.31, -0.22, 0.13], [3.0, -2.0, 1.0])

    def pose(shift=(0.0, 0.0, 0.0)):
        S = np.eye(4)
        S[:3, 3] = np.asarray(shift) - probe.face_centre_mm
        return T0 @ S

    ref = render_polar(scene, pose(), probe, params)
    depth = probe.depth_samples_mm
    # 1. envelope statistics in a homogeneous region (30-60 mm deep, central 80 % of the lines)
    rows = (depth > 30) & (depth < 60)
    nl = probe.n_lines
    cols = slice(int(0.1 * nl), int(0.9 * nl))
    env = np.abs(ref.speckle[rows][:, cols])
    snr = float(env.mean() / env.std())
    env_g = ref.envelope[rows][:, cols]  # after gains and electronic noise (lossless medium, TGC off)
    snr_g = float(env_g.mean() / env_g.std())

    # 2. out-of-plane decorrelation
    band = (depth > probe.elevation_focus_mm - 5) & (depth < probe.elevation_focus_mm + 5)
    band_depth = float(depth[band].mean())
    I0 = np.abs(ref.speckle[band]) ** 2
    f0 = render_frame(scene, pose(), probe)
    fan = probe.fan_mask
    shifts = [0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0] if not quick else [0.2, 0.5, 1.0, 2.0]
    band_corr, frame_corr, expected, expected_untr = [], [], [], []
    for s in shifts:
        p = render_polar(scene, pose((0.0, 0.0, s)), probe, params)
        band_corr.append(_corr(I0, np.abs(p.speckle[band]) ** 2))
        frame_corr.append(_corr(f0[fan], frame_from_polar(p, probe, params)[fan]))
        expected.append(float(np.mean(probe.expected_elevational_correlation(s, depth[band]))))
        expected_untr.append(float(np.mean(probe.expected_elevational_correlation(s, depth[band], truncated=False))))
    xs = np.array([0.0] + shifts)
    fwhm_focus = float(probe.elevation_fwhm_mm(band_depth))
    res_oop = {
        "shifts_mm": shifts,
        "band_depth_mm": [float(depth[band].min()), float(depth[band].max())],
        "intensity_correlation_band": band_corr,
        "expected_correlation_band": expected,
        "uint8_frame_correlation": frame_corr,
        "expected_correlation_band_untruncated_gaussian": expected_untr,
        # strictly decreasing while the prediction is above 0.05, then within +-0.05 of zero
        "monotonic_band": _monotonic(band_corr),
        "monotonic_frame": _monotonic(frame_corr),
        "elevation_fwhm_at_band_mm": fwhm_focus,
        "expected_half_crossing_mm": _crossing(xs, np.array([1.0] + expected)),
        "measured_half_crossing_mm": _crossing(xs, np.array([1.0] + band_corr)),
        "measured_half_crossing_frame_mm": _crossing(xs, np.array([1.0] + frame_corr)),
    }

    # 3. in-plane shifts: compensate a known shift of k pixels
    sx, sy = probe.spacing_mm
    k = 4
    res_ip = {}
    for name, shift, axis in (("lateral", (k * sx, 0.0, 0.0), 1), ("axial", (0.0, k * sy, 0.0), 0)):
        f1 = render_frame(scene, pose(shift), probe)
        if axis == 1:
            a, b = f0[:, k:], f1[:, :-k]
            m = fan[:, k:] & fan[:, :-k]
        else:
            a, b = f0[k:], f1[:-k]
            m = fan[k:] & fan[:-k]
        res_ip[name] = {
            "shift_mm": float(k * (sx if axis == 1 else sy)),
            "correlation_compensated": _corr(a[m], b[m]),
            "correlation_uncompensated": _corr(f0[fan & np.roll(fan, 0)], f1[fan]),
        }
    return {
        "envelope_snr_speckle": snr,
        "envelope_snr_after_gains": snr_g,
        "snr_region_depth_mm": [30, 60],
        "out_of_plane": res_oop,
        "in_plane": res_ip,
        "n_scatterers_per_frame": ref.n_scatterers,
    }


def montage(probe, quick: bool) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from usnav.sim.bmode import render_frame
    from usnav.sim.motion import trajectory
    from usnav.sim.tusrec_sim import make_scene

    n = 300
    cases = [
        ("forearm", "RH", "rotation"),
        ("forearm", "LH", "Per_S_DtP"),
        ("brain", "RH", "rotation"),
        ("brain", "LH", "Par_L_PtD"),
    ]
    picks = [0.12, 0.55] if not quick else [0.3]
    fig, axes = plt.subplots(len(cases), len(picks), figsize=(6.4 * len(picks), 4.8 * len(cases)), squeeze=False)
    traj = {}
    for r, (anatomy, side, protocol) in enumerate(cases):
        scene = make_scene(anatomy, 1, side)
        T = trajectory(scene.surface, protocol, n, probe, seed=r)
        traj[f"{anatomy} {side} {protocol}"] = T
        for c, f in enumerate(picks):
            i = int(f * (n - 1))
            img = render_frame(scene, T[i], probe)
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(f"{anatomy} {side}_{protocol}, frame {i}", fontsize=10)
            ax.axis("off")
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / "sim_frames.png", dpi=80)
    plt.close(fig)

    fig, axes = plt.subplots(2, len(traj), figsize=(4.5 * len(traj), 8), squeeze=False)
    t = np.arange(n) / 20.0
    for c, (name, T) in enumerate(traj.items()):
        contact = T[:, :3, :3] @ probe.face_centre_mm + T[:, :3, 3]
        ax = axes[0, c]
        ax.plot(contact[:, 0], contact[:, 1], lw=1)
        ax.set_aspect("equal")
        ax.set_title(f"{name}\ncontact point (world x, y mm)", fontsize=9)
        ax = axes[1, c]
        x = T[:, :3, 0]
        z = T[:, :3, 2]
        ax.plot(t, np.degrees(np.arccos(np.clip(np.abs(z @ z[0]), 0, 1))), label="plane tilt vs frame 0")
        ax.plot(t, np.degrees(np.arccos(np.clip(np.abs(x @ x[0]), 0, 1))), label="lateral-axis turn vs frame 0")
        ax.set_xlabel("time (s, 20 Hz)")
        ax.set_ylabel("degrees")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "sim_trajectories.png", dpi=80)
    plt.close(fig)
    return {"frames_png": "benchmarks/results/sim_frames.png", "trajectories_png": "benchmarks/results/sim_trajectories.png"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer shifts and frames")
    ap.add_argument("--no-figures", action="store_true")
    args = ap.parse_args()
    import usnav
    from usnav.sim.probe import Probe

    probe = Probe()
    t0 = time.perf_counter()
    res = physics(probe, args.quick)
    if not args.no_figures:
        res["figures"] = montage(probe, args.quick)
    res["seconds"] = time.perf_counter() - t0
    oop = res["out_of_plane"]
    print("sim_realism (default 4DC7-3/40-like probe, 480x640)")
    print(f"  envelope SNR (speckle, 30-60 mm)     {res['envelope_snr_speckle']:.3f}   (target 1.91)")
    print(f"  envelope SNR (after gains + noise)   {res['envelope_snr_after_gains']:.3f}")
    print(f"  scatterers per frame                 {res['n_scatterers_per_frame']}")
    print(f"  out-of-plane, intensity correlation in {oop['band_depth_mm'][0]:.0f}-{oop['band_depth_mm'][1]:.0f} mm (beam FWHM {oop['elevation_fwhm_at_band_mm']:.2f} mm):")
    print("    shift_mm  measured  expected(beam model)  expected(untruncated)  uint8_frame")
    for s, m, e, u, f in zip(oop["shifts_mm"], oop["intensity_correlation_band"], oop["expected_correlation_band"], oop["expected_correlation_band_untruncated_gaussian"], oop["uint8_frame_correlation"]):
        print(f"    {s:8.2f}  {m:8.3f}  {e:20.3f}  {u:21.3f}  {f:11.3f}")
    print(f"  0.5 crossing: expected {oop['expected_half_crossing_mm']:.3f} mm, measured {oop['measured_half_crossing_mm']:.3f} mm (band), {oop['measured_half_crossing_frame_mm']:.3f} mm (whole uint8 frame)")
    print(f"  monotonic: band {oop['monotonic_band']}, frame {oop['monotonic_frame']}")
    for name, r in res["in_plane"].items():
        print(f"  in-plane {name} shift {r['shift_mm']:.3f} mm: correlation compensated {r['correlation_compensated']:.3f}, uncompensated {r['correlation_uncompensated']:.3f}")
    out = {
        "name": "sim_realism",
        "usnav_version": usnav.__version__,
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "cpu_count": os.cpu_count(),
            "load_average": list(os.getloadavg()),
        },
        "config": {
            "probe": {k: v for k, v in probe.__dict__.items() if not k.startswith("_")},
            "quick": args.quick,
        },
        "results": res,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sim_realism.json").write_text(json.dumps(out, indent=2, default=float))
    print(f"wrote {RESULTS / 'sim_realism.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
