"""Compounding speed: a 1500-frame 480 x 640 sweep into a 0.5 mm volume.

Measures usnav.compound.compound_frames (nearest neighbour and trilinear,
MEAN) on 2 threads, and two plain baselines on a subset of the same frames
in the same run: numpy (np.bincount scatter) and torch (index_add_).
Reports pixels/s, wall time, peak memory beyond the input frames and the
output volume, and the machine load (the machine may be shared).

    .venv/bin/python benchmarks/compounding.py [--frames 1500] [--threads 2] [--baseline-frames 150]

Prints a table and writes benchmarks/results/compounding.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from usnav import __version__  # noqa: E402
from usnav.compound import compound_frames, grid_from_frames, pixel_to_image_mm  # noqa: E402
from usnav.compound.core import clipped_corners  # noqa: E402
from usnav.compound.masks import PixelMask  # noqa: E402
from usnav.geometry import matrix_from_euler_zyx  # noqa: E402

H, W = 480, 640
SPACING_PX = (0.229, 0.221)  # TUS-REC pixel size, mm


def sweep_poses(n: int) -> np.ndarray:
    """T_world_from_pixel (n, 4, 4): a 150 mm freehand-like sweep with rocking."""
    S = pixel_to_image_mm(SPACING_PX, one_based=True)
    t = np.linspace(0.0, 1.0, n)
    T = [
        matrix_from_euler_zyx(
            [0.25 * np.sin(2 * np.pi * 2 * ti), 0.15 * np.sin(2 * np.pi * 3 * ti + 1), 0.1 * np.sin(2 * np.pi * ti)],
            [10 * np.sin(2 * np.pi * ti), 5 * np.cos(2 * np.pi * 2 * ti), 150.0 * ti],
        )
        @ S
        for ti in t
    ]
    return np.stack(T)


class PeakRSS:
    """Samples the resident set size (Linux /proc) in a background thread."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> "PeakRSS":
        self.start = self.rss()
        self.peak = self.start
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.rss())


def numpy_nn_mean(frames: np.ndarray, T: np.ndarray, grid, chunk: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy NN MEAN: vectorised coordinates, one np.bincount scatter
    per chunk of frames (amortises bincount's O(voxels) output)."""
    nx, ny, nz = grid.shape
    nvox = nx * ny * nz
    acc = np.zeros(nvox)
    cnt = np.zeros(nvox)
    M = np.linalg.inv(grid.T_world_from_voxel) @ T
    ys, xs = np.mgrid[0:H, 0:W]
    pix = np.stack([xs.ravel(), ys.ravel(), np.ones(H * W)], 0).astype(np.float64)
    for a in range(0, len(frames), chunk):
        lins, vals = [], []
        for f in range(a, min(a + chunk, len(frames))):
            v = M[f][:3, [0, 1, 3]] @ pix
            idx = np.floor(v + 0.5).astype(np.int64)
            ok = (idx >= 0).all(0) & (idx[0] < nx) & (idx[1] < ny) & (idx[2] < nz)
            lins.append((idx[2, ok] * ny + idx[1, ok]) * nx + idx[0, ok])
            vals.append(frames[f].ravel()[ok])
        lin = np.concatenate(lins)
        acc += np.bincount(lin, weights=np.concatenate(vals), minlength=nvox)
        cnt += np.bincount(lin, minlength=nvox)
    return acc, cnt


def torch_nn_mean(frames: np.ndarray, T: np.ndarray, grid, threads: int) -> None:
    """Plain torch NN MEAN: addmm for coordinates, index_add_ scatter."""
    import torch

    torch.set_num_threads(threads)
    nx, ny, nz = grid.shape
    acc = torch.zeros(nx * ny * nz)
    cnt = torch.zeros(nx * ny * nz)
    M = torch.from_numpy((np.linalg.inv(grid.T_world_from_voxel) @ T)[:, :3, [0, 1, 3]]).float()
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones(H * W)], 1)
    for f in range(len(frames)):
        v = torch.floor(pix @ M[f].T + 0.5).long()
        ok = (v >= 0).all(1) & (v[:, 0] < nx) & (v[:, 1] < ny) & (v[:, 2] < nz)
        lin = (v[ok, 2] * ny + v[ok, 1]) * nx + v[ok, 0]
        vals = torch.from_numpy(frames[f]).reshape(-1)[ok].float()
        acc.index_add_(0, lin, vals)
        cnt.index_add_(0, lin, torch.ones_like(vals))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baseline-frames", type=int, default=150)
    ap.add_argument("--spacing", type=float, default=0.5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compounding.json")
    args = ap.parse_args()

    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (args.frames, H, W), dtype=np.uint8)
    T = sweep_poses(args.frames)
    grid = grid_from_frames(T, clipped_corners(PixelMask(), H, W), args.spacing)
    n_pix = args.frames * H * W
    vol_bytes = grid.n_voxels  # uint8 output

    # compile (cached by numba on disk after the first run) outside the timings
    t0 = time.perf_counter()
    for method in ("nn", "linear"):
        compound_frames(frames[:2], T[:2], grid=grid, method=method, threads=1)
    compile_s = time.perf_counter() - t0

    rows = []
    for method, goal in (("nn", 100e6), ("linear", 30e6)):
        with PeakRSS() as mem:
            c0 = time.process_time()
            t0 = time.perf_counter()
            vol = compound_frames(frames, T, grid=grid, method=method, mode="mean", threads=args.threads, chunk_frames=16)
            dt = time.perf_counter() - t0
            cpu = time.process_time() - c0
        hit = float((vol.weight > 0).mean())
        del vol
        extra = mem.peak - mem.start - vol_bytes
        rows.append(
            dict(
                implementation=f"usnav {method}", frames=args.frames, pixels=n_pix, seconds=dt, pixels_per_s=n_pix / dt,
                cpu_seconds=cpu, pixels_per_cpu_s=n_pix / cpu,
                goal_pixels_per_s=goal, meets_goal=n_pix / dt >= goal, peak_extra_memory_gb=extra / 1e9,
                voxels_hit_fraction=hit,
            )
        )

    nb = min(args.baseline_frames, args.frames)
    sub = frames[:nb]
    c0, t0 = time.process_time(), time.perf_counter()
    numpy_nn_mean(sub, T[:nb], grid)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    rows.append(dict(implementation="numpy nn (bincount)", frames=nb, pixels=nb * H * W, seconds=dt, pixels_per_s=nb * H * W / dt,
                     cpu_seconds=cpu, pixels_per_cpu_s=nb * H * W / cpu))
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        torch_nn_mean(sub, T[:nb], grid, args.threads)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        rows.append(dict(implementation="torch nn (index_add_)", frames=nb, pixels=nb * H * W, seconds=dt, pixels_per_s=nb * H * W / dt,
                         cpu_seconds=cpu, pixels_per_cpu_s=nb * H * W / cpu))
    except ImportError:  # pragma: no cover
        pass
    base = rows[2]["pixels_per_s"]
    for r in rows:
        r["speedup_vs_numpy"] = r["pixels_per_s"] / base
    load_after = os.getloadavg()

    print(f"compounding: {args.frames} frames {H}x{W} -> grid {grid.shape} at {args.spacing} mm "
          f"({grid.n_voxels / 1e6:.1f} M voxels), threads={args.threads}, JIT warm-up {compile_s:.1f} s")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (2-core machine shared with other jobs; "
          "Mpix/cpu-s is throughput per CPU-second of this process, less sensitive to the others' load)")
    print(f"{'implementation':24s} {'frames':>6s} {'seconds':>8s} {'Mpix/s':>8s} {'x numpy':>8s} {'Mpix/cpu-s':>10s} {'extra GB':>9s} {'goal':>6s}")
    for r in rows:
        goal = "" if "meets_goal" not in r else ("ok" if r["meets_goal"] else "MISS")
        mem = f"{r['peak_extra_memory_gb']:.2f}" if "peak_extra_memory_gb" in r else ""
        print(f"{r['implementation']:24s} {r['frames']:6d} {r['seconds']:8.2f} {r['pixels_per_s'] / 1e6:8.1f} "
              f"{r['speedup_vs_numpy']:8.1f} {r['pixels_per_cpu_s'] / 1e6:10.1f} {mem:>9s} {goal:>6s}")

    result = dict(
        benchmark="compounding",
        usnav_version=__version__,
        config=dict(frames=args.frames, height=H, width=W, pixel_spacing_mm=SPACING_PX, spacing_mm=args.spacing,
                    grid_shape=list(grid.shape), threads=args.threads, baseline_frames=nb, mode="mean"),
        machine=dict(platform=platform.platform(), python=platform.python_version(), cpu_count=os.cpu_count(),
                     load_average_before=load_before, load_average_after=load_after,
                     max_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6),
        jit_warmup_seconds=compile_s,
        results=rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
