"""Speed and memory of the simulator: one freehand sweep written as a TUS-REC scan.

Default: a 1500-frame 480 x 640 forearm ``rotation`` sweep (target <= 90 s on
2 cores, peak memory <= 4 GB), rendered as ``usnav simulate tusrec`` does:
frames concurrently, one per thread (``--threads``).  Reports wall and CPU
time per stage, frames per second, peak resident memory (sampled from /proc
and ru_maxrss) and the machine load (the machine may be shared: read the
numbers with the load; ``projected_1500_frames_idle_estimate_s`` is the CPU
time divided by the thread count, the wall time on an idle machine if the
threads scale perfectly).

Usage: ``python benchmarks/simulator_speed.py [--frames N] [--threads T] [--anatomy forearm|brain]``
Writes ``benchmarks/results/simulator_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


class RssSampler(threading.Thread):
    """Peak resident set size of this process, sampled every 50 ms from /proc/self/status."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_kb = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                for line in Path("/proc/self/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            except OSError:
                pass
            self._halt.wait(0.05)

    def stop(self) -> None:
        self._halt.set()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--anatomy", default="forearm", choices=["forearm", "brain"])
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--scatterer-spacing-mm", type=float, default=0.2)
    ap.add_argument("--tag", default="", help="suffix of the result file name (simulator_speed<tag>.json)")
    args = ap.parse_args()

    import numba
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    import usnav
    from usnav.io.tusrec import ScanWriter
    from usnav.sim.tusrec_sim import SimConfig, render_scan, simulate_scan

    sampler = RssSampler()
    sampler.start()
    load_before = os.getloadavg()
    config = SimConfig(
        anatomy=args.anatomy,
        n_frames=args.frames,
        frame_hw=(args.height, args.width),
        scatterer_spacing_mm=args.scatterer_spacing_mm,
    )
    # warm-up: numba compilation (cached on disk after the first run) on a tiny frame
    from usnav.geometry import matrix_from_euler_zyx
    from usnav.sim.bmode import render_frame, render_frames
    from usnav.sim.probe import Probe
    from usnav.sim.scene import homogeneous_scene

    small = Probe(frame_hw=(64, 80), depth_mm=10.0, fov_deg=20.0, n_lines=32)
    t = time.perf_counter()
    T_small = matrix_from_euler_zyx([0.1, 0.2, 0.3])
    render_frame(homogeneous_scene(), T_small, small)  # the multi-threaded kernel (one frame at a time)
    render_frames(homogeneous_scene(), np.stack([T_small, T_small]), small, threads=args.threads)  # frame threads
    t_warm = time.perf_counter() - t

    t_wall0, t_cpu0 = time.perf_counter(), time.process_time()
    scene, T_wi, tforms, landmarks = simulate_scan(config, 0, "RH_rotation")
    t_plan = time.perf_counter() - t_wall0
    t_r0, c_r0 = time.perf_counter(), time.process_time()
    n_scat = []
    with tempfile.TemporaryDirectory() as tmp:
        with ScanWriter(tmp, "000", "RH_rotation", n_frames=config.n_frames, frame_shape=config.frame_hw) as w:
            for start, frames in render_scan(config, scene, T_wi):
                w.write(start, frames, tforms[start : start + len(frames)])
                if start % 160 == 0:
                    done = start + len(frames)
                    el = time.perf_counter() - t_r0
                    print(f"  {done:5d}/{config.n_frames} frames, {el:7.1f} s, {done / el:5.2f} frames/s, load {os.getloadavg()[0]:.1f}", flush=True)
        size_mb = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file()) / 1e6
    t_render = time.perf_counter() - t_r0
    c_render = time.process_time() - c_r0
    t_total = time.perf_counter() - t_wall0
    c_total = time.process_time() - t_cpu0
    sampler.stop()
    sampler.join()
    peak_rss_mb = max(sampler.peak_kb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024.0
    load_after = os.getloadavg()
    from usnav.sim.bmode import render_polar

    n_scat = render_polar(scene, T_wi[config.n_frames // 2], config.probe()).n_scatterers

    res = {
        "frames": config.n_frames,
        "frame_hw": list(config.frame_hw),
        "anatomy": config.anatomy,
        "threads": args.threads,
        "scatterer_spacing_mm": config.scatterer_spacing_mm,
        "scatterers_per_frame_mid_sweep": int(n_scat),
        "numba_warmup_s": t_warm,
        "scene_and_trajectory_s": t_plan,
        "render_and_write_wall_s": t_render,
        "render_and_write_cpu_s": c_render,
        "total_wall_s": t_total,
        "total_cpu_s": c_total,
        "ms_per_frame_wall": 1e3 * t_render / config.n_frames,
        "ms_per_frame_cpu": 1e3 * c_render / config.n_frames,
        "projected_1500_frames_wall_s": t_plan + 1500 * t_render / config.n_frames,
        # CPU seconds of all threads / number of threads: the wall time on an otherwise idle machine
        # if the threads scaled perfectly (an optimistic bound; the machine here is shared)
        "projected_1500_frames_idle_estimate_s": t_plan + 1500 * c_render / config.n_frames / args.threads,
        "peak_rss_mb": peak_rss_mb,
        "h5_size_mb": size_mb,
        "load_average_before": list(load_before),
        "load_average_after": list(load_after),
        "target": {"total_wall_s": 90.0, "peak_rss_mb": 4096.0},
    }
    print("simulator_speed")
    for k, v in res.items():
        print(f"  {k:32s} {v}")
    out = {
        "name": "simulator_speed",
        "usnav_version": usnav.__version__,
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpu_count": os.cpu_count()},
        "config": vars(args),
        "results": res,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"simulator_speed{args.tag}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
