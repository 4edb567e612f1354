"""Benchmark: official TUS-REC scoring of one 1600-frame 480x640 scan.

Writes a synthetic scan (smooth trajectory, eval layout) and a prediction
(truth perturbed by a drifting error), then scores it in a fresh process and
reports wall time and peak RSS of that process. Goal: < 20 s, < 1.5 GB.

    .venv/bin/python benchmarks/tusrec_scoring.py [--frames 1600] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_rows, save_results  # noqa: E402

SCORER = r"""
import json, resource, sys, time
from usnav.io.tusrec import open_dataset
from usnav.metrics.tusrec_dataset import iter_scores, summarise
t0 = time.perf_counter()
ds = open_dataset(sys.argv[1])
scores = list(iter_scores(ds, pred_root=sys.argv[2]))
elapsed = time.perf_counter() - t0
print(json.dumps({"seconds": elapsed, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "summary": summarise(scores)}))
"""


def build(root: Path, n_frames: int, shape: tuple[int, int], seed: int) -> None:
    from usnav import geometry as g
    from usnav.geometry.tracking import global_from_tracking, local_from_tracking
    from usnav.io import tusrec

    rng = np.random.default_rng(seed)
    C = g.matrix_from_params([0.02, -0.03, 1.55, 10.0, -30.0, 5.0])
    calib = tusrec.Calibration(T_mm_from_pixel=np.diag([0.229, 0.221, 1.0, 1.0]), T_tool_from_mm=C)
    tusrec.write_calibration(root / "calib_matrix.csv", calib)
    t = np.linspace(0, 1, n_frames)[:, None]
    params = np.array([[0.4, 0.3, 0.8, 20, 20, 30]]) * np.sin(2 * np.pi * np.array([[1, 2, 0.5, 1.5, 1, 0.7]]) * t)
    tforms = g.matrix_from_params(params + np.array([[0, 0, 0, 100, -50, 1500.0]]))
    H, W = shape
    with tusrec.ScanWriter(root, "050", "LH_rotation", n_frames, shape, layout="eval") as w:
        pattern = (np.arange(H * W, dtype=np.uint32).reshape(H, W) % 251).astype(np.uint8)
        for start in range(0, n_frames, 100):
            n = min(100, n_frames - start)
            w.write(start, np.broadcast_to(pattern, (n, H, W)), tforms[start : start + n])
    lm = np.stack([rng.integers(1, n_frames, 100), rng.integers(1, W + 1, 100), rng.integers(1, H + 1, 100)], 1)
    tusrec.write_landmarks(root, "050", {"LH_rotation": lm})
    tusrec.write_dataset_keys(root, [("050", "LH_rotation")])
    G, L = global_from_tracking(tforms, C), local_from_tracking(tforms, C)
    drift = g.matrix_from_params(np.cumsum(rng.normal(0, [1e-4, 1e-4, 1e-4, 0.01, 0.01, 0.01], (n_frames - 1, 6)), 0))
    tusrec.write_prediction(root / "pred" / "050" / "LH_rotation.h5", G @ drift, L @ g.matrix_from_params(
        rng.normal(0, [1e-4, 1e-4, 1e-4, 0.01, 0.01, 0.01], (n_frames - 1, 6))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=1600)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="build the data set here and keep it")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        t0 = time.perf_counter()
        build(root, args.frames, (args.height, args.width), args.seed)
        build_s = time.perf_counter() - t0
        out = subprocess.run([sys.executable, "-c", SCORER, str(root), str(root / "pred")], check=True,
                             capture_output=True, text=True)
        result = json.loads(out.stdout)
    scan = result["summary"]["scans"][0]
    rows = [("frames", args.frames), ("frame size", f"{args.height}x{args.width}"),
            ("data set build s", f"{build_s:.1f}"), ("scoring wall s", f"{result['seconds']:.2f}"),
            ("scoring peak RSS MB", f"{result['peak_rss_mb']:.0f}"),
            ("GPE / GLE mm", f"{scan['GPE']:.3f} / {scan['GLE']:.3f}"),
            ("LPE / LLE mm", f"{scan['LPE']:.4f} / {scan['LLE']:.4f}"), ("score", f"{scan['score']:.4f}")]
    print_rows("TUS-REC scoring benchmark (goal: < 20 s, < 1500 MB)", rows)
    path = save_results("tusrec_scoring", {
        "config": vars(args) | {"keep": str(args.keep) if args.keep else None},
        "results": {"build_seconds": build_s, "score_seconds": result["seconds"],
                    "peak_rss_mb": result["peak_rss_mb"], "scan": scan},
    })
    print(f"saved {path}")


if __name__ == "__main__":
    main()
