"""Benchmark: `usnav remind evaluate` on real-size ReMIND2Reg pairs (256^3 at 0.5 mm).

Writes a synthetic validation case (iUS + ceT1 + T2 volumes, 20 landmarks),
a submission with a smooth random displacement field per pair and a
runtimes.json, then runs the evaluation in a fresh process and reports wall
time per pair and peak RSS.

    .venv/bin/python benchmarks/remind_evaluation.py [--size 256] [--cases 1]
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

RUNNER = r"""
import json, resource, sys, time
from usnav.harness.remind import evaluate_remind
t0 = time.perf_counter()
doc = evaluate_remind(sys.argv[1], sys.argv[2], sys.argv[3])
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "summary": doc["summary"]}))
"""


def build(root: Path, size: int, cases: int, seed: int) -> tuple[Path, Path]:
    from scipy.ndimage import gaussian_filter

    from usnav.io import learn2reg as l2r

    rng = np.random.default_rng(seed)
    data, sub = root / "data", root / "submission"
    affine = np.diag([0.5, 0.5, 0.5, 1.0])
    shape = (size, size, size)
    pairs, runtimes = [], {}
    for case in range(1, cases + 1):
        pts = rng.uniform(20, size - 20, size=(20, 3))
        fixed = l2r.image_name(case, 0)
        l2r.write_volume(data / "imagesVal" / fixed, rng.random(shape, dtype=np.float32), affine)
        l2r.write_landmarks(data / "landmarksVal" / fixed.replace(".nii.gz", ".csv"), pts)
        for mod in (1, 2):
            name = l2r.image_name(case, mod)
            l2r.write_volume(data / "imagesVal" / name, rng.random(shape, dtype=np.float32), affine)
            l2r.write_landmarks(data / "landmarksVal" / name.replace(".nii.gz", ".csv"), pts + rng.normal(0, 6, pts.shape))
            pairs.append((f"imagesVal/{fixed}", f"imagesVal/{name}"))
            coarse = rng.normal(0, 4, size=(3, 8, 8, 8)).astype(np.float32)
            disp = np.stack([gaussian_filter(np.kron(c, np.ones((size // 8,) * 3, np.float32)), 6) for c in coarse], -1)
            l2r.write_displacement(sub / l2r.disp_name(case, 0, case, mod), disp, affine)
            runtimes[l2r.disp_name(case, 0, case, mod)] = 30.0
    l2r.write_dataset_json(data, train_pairs=[], val_pairs=pairs, shape=shape)
    (sub / "runtimes.json").write_text(json.dumps(runtimes))
    return data, sub


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--cases", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        data, sub = build(Path(tmp), args.size, args.cases, args.seed)
        build_s = time.perf_counter() - t0
        out = subprocess.run([sys.executable, "-c", RUNNER, str(data), str(sub), str(Path(tmp) / "results.json")],
                             check=True, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
    n = result["summary"]["n_pairs"]
    rows = [("grid", f"{args.size}^3"), ("pairs", n), ("build s", f"{build_s:.1f}"),
            ("evaluate wall s", f"{result['seconds']:.1f}"), ("per pair s", f"{result['seconds'] / n:.1f}"),
            ("peak RSS MB", f"{result['peak_rss_mb']:.0f}"),
            ("mean TRE / initial mm", f"{result['summary']['tre_mm']:.2f} / {result['summary']['tre_initial_mm']:.2f}"),
            ("mean SDlogJ", f"{result['summary']['sdlogj']:.3f}")]
    print_rows("ReMIND2Reg evaluation benchmark", rows)
    path = save_results("remind_evaluation", {"config": vars(args), "results": {"build_seconds": build_s, **result}})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
