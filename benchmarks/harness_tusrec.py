"""Benchmark: the TUS-REC submission harness on one real-size scan (480x640 frames).

Builds a synthetic eval-layout scan and a prediction set (as
benchmarks/tusrec_scoring.py does), writes a submission whose predict_ddfs
returns the full float32 DDFs of that prediction (what a real submission
returns), and runs the harness in a fresh process. Reports the harness wall
time, the predict_ddfs call time, the time spent saving/scoring, the peak
RSS of the harness (parent) and of the submission process (child), and the
largest difference between the harness errors and `usnav tusrec score`.

    .venv/bin/python benchmarks/harness_tusrec.py [--frames 400]

Disk: the child writes GP and LP (.npy, 2 x frames x 3.7 MB) to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_rows, save_results  # noqa: E402
from tusrec_scoring import build  # noqa: E402

SUBMISSION = r'''
import numpy as np
from usnav.io.tusrec import read_calibration, read_prediction
from usnav.metrics.tusrec import ddfs_from_transforms

PRED = {pred!r}

def predict_ddfs(frames, landmark, data_path_calib, device):
    p = read_prediction(PRED)
    S = read_calibration(data_path_calib).T_mm_from_pixel
    return ddfs_from_transforms(p.global_transforms, p.local_transforms, S, frames.shape[1:], landmark)
'''

RUNNER = r"""
import json, resource, sys, time
from usnav.harness.tusrec import evaluate_submission
from usnav.io.tusrec import open_dataset
from usnav.metrics.tusrec_dataset import iter_scores
t0 = time.perf_counter()
summary = evaluate_submission(sys.argv[1], sys.argv[2], sys.argv[3], time_limit_s=3600)
wall = time.perf_counter() - t0
parent_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
ref = list(iter_scores(open_dataset(sys.argv[2]), pred_root=sys.argv[4]))[0].as_dict()
scan = summary["scans"][0]
diff = max(abs(scan[k] - ref[k]) / max(abs(ref[k]), 1e-12) for k in ("GPE", "GLE", "LPE", "LLE"))
print(json.dumps({"wall_s": wall, "parent_peak_rss_mb": parent_rss, "child_peak_rss_mb": child_rss,
                  "scan": scan, "max_rel_diff_vs_score": diff}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "data"
        t0 = time.perf_counter()
        build(data, args.frames, (480, 640), args.seed)
        build_s = time.perf_counter() - t0
        sub = root / "submission"
        sub.mkdir()
        (sub / "predict_ddfs.py").write_text(SUBMISSION.format(pred=str(data / "pred" / "050" / "LH_rotation.h5")))
        out = subprocess.run([sys.executable, "-c", RUNNER, str(sub), str(data), str(root / "results"),
                              str(data / "pred")], check=True, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
    scan = result["scan"]
    rows = [("frames", args.frames), ("frame size", "480x640"), ("data set build s", f"{build_s:.1f}"),
            ("status", scan["status"]),
            ("harness wall s", f"{result['wall_s']:.1f}"),
            ("predict_ddfs call s", f"{scan['time_s']:.1f}"),
            ("other (start, save, load, score) s", f"{result['wall_s'] - scan['time_s']:.1f}"),
            ("harness peak RSS MB", f"{result['parent_peak_rss_mb']:.0f}"),
            ("submission peak RSS MB", f"{result['child_peak_rss_mb']:.0f}"),
            ("max rel. diff vs tusrec score", f"{result['max_rel_diff_vs_score']:.2e}"),
            ("score", f"{scan['score']:.4f}")]
    print_rows("TUS-REC submission harness benchmark", rows)
    path = save_results("harness_tusrec", {"config": vars(args), "results": {"build_seconds": build_s, **result}})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
