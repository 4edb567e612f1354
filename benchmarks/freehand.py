"""Accuracy and speed of the trackerless pose methods (identity, decorrelation, two-frame, sequence).

    python benchmarks/freehand.py --test TEST_DIR [--generate] --two-frame RUN --sequence RUN \
        [--plus ../shared/data/plus/SpinePhantomFreehand.igs.mha] [--timing-frames 1500]

- ``--test``: a TUS-REC data set with ground truth (held out from training).
  With ``--generate`` it is simulated first with :mod:`usnav.freehand.simdata`
  (rotation protocol, subjects/seeds given by ``--subjects``/``--seed``, never
  used for training, full 480x640 frames).
- Each method predicts every scan; the official metrics (GPE, GLE, LPE, LLE in
  mm, final score) are averaged over scans.
- Timing: prediction of one ``--timing-frames``-frame 480x640 scan (frames
  repeated from the test set; the cost does not depend on content) with the
  torch thread count given by ``--threads``.
- ``--plus``: a real tracked PLUS sweep (different probe) as a domain-shift
  check, converted to a TUS-REC data set (S from the Image->Probe
  calibration's column norms, C its rigid part, tforms Probe->Reference).

Prints a table and writes ``benchmarks/results/freehand.json`` (config,
usnav version, machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from usnav import __version__
from usnav.freehand.predict import make_predictor, predict_dataset
from usnav.io.tusrec import open_dataset
from usnav.metrics.tusrec_dataset import iter_scores, summarise

ROOT = Path(__file__).resolve().parents[1]


def score_method(roots: list[Path], predictor, work: Path) -> dict:
    """Predict and score every scan of every data set in ``roots``; mean over all scans."""
    scores, seconds = [], []
    for i, data in enumerate(roots):
        pred = work / f"{predictor.method}_{i}"
        res = predict_dataset(data, pred, predictor, overwrite=True)
        seconds += list(res["seconds"].values())
        scores += list(iter_scores(open_dataset(data), pred_root=pred))
    summary = summarise(scores)
    m = summary["mean"]
    return {k: m.get(k) for k in ("GPE", "GLE", "LPE", "LLE", "score")} | {
        "seconds_per_scan": float(np.mean(seconds)) if seconds else None,
        "scans": len(summary["scans"]),
        "per_scan": [{k: r[k] for k in ("subject", "scan", "GPE", "GLE", "LPE", "LLE", "score")} for r in summary["scans"]],
    }


def time_prediction(predictor, frames: np.ndarray, S: np.ndarray) -> float:
    t0 = time.perf_counter()
    predictor(frames, S)
    return time.perf_counter() - t0


def plus_as_tusrec(mha: Path, config_xml: Path, out: Path) -> Path:
    """Write a PLUS sweep as a TUS-REC train-layout data set (no landmarks)."""
    from usnav.geometry import invert
    from usnav.io.plus import read_config, read_sequence
    from usnav.io.tusrec import CALIB_FILENAME, Calibration, write_calibration, write_scan

    seq = read_sequence(mha)
    cfg = read_config(config_xml)
    image_to_probe = cfg.coordinate_definitions[("Image", "Probe")]
    scale = np.linalg.norm(image_to_probe[:3, :3], axis=0)
    S = np.diag([scale[0], scale[1], 1.0, 1.0])
    C = image_to_probe @ np.diag([1 / scale[0], 1 / scale[1], 1 / scale[2], 1.0])
    C[:3, :3] = np.linalg.svd(C[:3, :3])[0] @ np.linalg.svd(C[:3, :3])[2]  # nearest rotation
    tforms = invert(seq.transforms["ReferenceToTracker"]) @ seq.transforms["ProbeToTracker"]
    write_calibration(out / CALIB_FILENAME, Calibration(T_mm_from_pixel=S, T_tool_from_mm=C))
    write_scan(out, "000", "SpinePhantomFreehand", seq.frames, tforms, layout="train")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--test", type=Path, nargs="+", required=True, help="test data set folder(s)")
    p.add_argument("--generate", action="store_true", help="simulate the test set into --test first")
    p.add_argument("--subjects", default="90,91", help="held-out subject indices (with --generate)")
    p.add_argument("--seed", type=int, default=9090)
    p.add_argument("--segment", type=int, default=1000, help="frames per test scan (with --generate)")
    p.add_argument("--two-frame", type=Path)
    p.add_argument("--sequence", type=Path)
    p.add_argument("--plus", type=Path)
    p.add_argument("--plus-config", type=Path)
    p.add_argument("--timing-frames", type=int, default=1500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", default="identity,decorrelation,two-frame,sequence",
                   help="comma-separated subset to run (learned ones need --two-frame/--sequence)")
    p.add_argument("--merge", action="store_true", help="keep the other methods' results already in --out")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "freehand.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    if a.generate:
        from usnav.freehand.simdata import write_segments

        for k, subject in enumerate(int(s) for s in a.subjects.split(",")):
            anatomy = "forearm"
            write_segments(a.test[0] / f"sub{subject}", anatomy, "rotation", subject, a.seed + k, 1500, a.segment, 1,
                           (480, 640))
        a.test = sorted(a.test[0].glob("sub*"))
    wanted = a.methods.split(",")
    methods = [(m, None) for m in ("identity", "decorrelation") if m in wanted]
    if a.two_frame and "two-frame" in wanted:
        methods.append(("two-frame", a.two_frame))
    if a.sequence and "sequence" in wanted:
        methods.append(("sequence", a.sequence))
    results: dict = {"simulated": {}, "timing_s": {}, "plus": {}}
    previous_config = None
    if a.merge and a.out.exists():
        old = json.loads(a.out.read_text())
        results = old["results"]
        previous_config = old.get("config")
    n_frames, test_scans = [], []
    for root in a.test:
        ds = open_dataset(root)
        for ref in ds.scans:
            test_scans.append(f"{root}:{ref}")
            with ds.open_scan(ref) as s:
                n_frames.append(s.n_frames)
                frame_shape = s.frame_shape
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, model in methods:
            predictor = make_predictor(name, model)
            results["simulated"][name] = score_method(a.test, predictor, work / "sim")
            print(name, results["simulated"][name], flush=True)
        # timing on a long scan of full-size frames
        with ds.open_scan(ds.scans[0]) as s:
            base = s.read_frames(0, min(s.n_frames, 200))
        reps = int(np.ceil(a.timing_frames / len(base)))
        long_frames = np.concatenate([base] * reps)[: a.timing_frames]
        S = ds.calibration.T_mm_from_pixel
        for name, model in methods:
            results["timing_s"][name] = time_prediction(make_predictor(name, model), long_frames, S)
            print("timing", name, results["timing_s"][name], flush=True)
        del long_frames
        if a.plus is not None:
            cfg_xml = a.plus_config or next(a.plus.parent.glob("PlusDeviceSet_*NN_MEAN.xml"))
            plus_data = plus_as_tusrec(a.plus, cfg_xml, work / "plus_data")
            for name, model in methods:
                results["plus"][name] = score_method([plus_data], make_predictor(name, model), work / "plus")
                print("plus", name, results["plus"][name], flush=True)

    order = ("identity", "decorrelation", "two-frame", "sequence")
    for key in results:
        results[key] = {k: results[key][k] for k in sorted(results[key], key=lambda m: order.index(m) if m in order else 9)}
    from rich.console import Console
    from rich.table import Table

    def fmt(v, d=3):
        return "-" if v is None else f"{v:.{d}f}"

    for key, title in (("simulated", f"simulated test set {a.test} ({len(n_frames)} scans, {sum(n_frames)} frames "
                                      f"of {frame_shape[0]}x{frame_shape[1]})"),
                       ("plus", f"real PLUS sweep {a.plus} (pixel metrics only: no landmarks)")):
        if not results[key]:
            continue
        t = Table(title=title)
        for col in ("method", "GPE mm", "GLE mm", "LPE mm", "LLE mm", "score", f"time {a.timing_frames} fr (s)"):
            t.add_column(col, justify="left" if col == "method" else "right")
        for name, r in results[key].items():
            t.add_row(name, fmt(r["GPE"]), fmt(r["GLE"]), fmt(r["LPE"], 4), fmt(r["LLE"], 4), fmt(r["score"]),
                      fmt(results["timing_s"].get(name), 1) if key == "simulated" else "")
        Console().print(t)
    out = {
        "previous_run_config": previous_config,
        "config": {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, list) else v)
                   for k, v in vars(a).items()},
        "test_scans": test_scans, "test_frames": n_frames, "frame_shape": list(frame_shape),
        "results": results, "usnav_version": __version__,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": a.threads,
                    "load_average": os.getloadavg()},
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
