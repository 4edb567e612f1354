"""Brain-shift registration benchmark on synthetic ReMIND2Reg-like cases.

Simulates ``--cases`` cases with ``usnav.sim.remind`` (seed ``--seed``; seeds
used in development: 999, and 2026 (cases 100-109, the previous benchmark);
the reported run uses seed 4711, cases 200-209, never used in development), registers ceT1+T2 to the
post-resection iUS with usnav (ConvexAdam-style, joint modalities) and, when
installed (``pip install -e .[bench]``), the reference ConvexAdam
(PyPI ``convexAdam``, MIND, CPU, its default settings, ceT1 only) and ANTsPy
SyN with mutual information. Scores with the official-style metrics
(``usnav.metrics.remind``): TRE, TRE30, SDlogJ, folding fraction, runtime
(wall and process CPU seconds, measured in this run; the machine is shared,
the load average is recorded).

    nice -n 5 .venv/bin/python benchmarks/registration.py --cases 10 --first-case 200 --seed 4711 \\
        --data /tmp/remind_bench_4711 --methods usnav,ants --threads 1

Writes ``benchmarks/results/registration.json`` (config, version, machine)
and prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _load(p):
    return os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3


THREADS = {"n": 1}


def _usnav_config():
    """The one RegistrationConfig the usnav rows run with (also written to the JSON)."""
    from usnav.register.pipeline import RegistrationConfig

    return RegistrationConfig(threads=THREADS["n"])


def run_usnav(fix, movs, sp):
    from usnav.register.pipeline import register_pair

    return register_pair(fix, movs, sp, config=_usnav_config()).disp_vox


def run_convexadam(fix, movs, sp):
    import torch
    from convexAdam.convex_adam_MIND import convex_adam_pt

    torch.set_num_threads(THREADS["n"])
    d = convex_adam_pt(fix.astype(np.float32), movs[0].astype(np.float32), dtype=torch.float32,
                       device=torch.device("cpu"))
    return np.asarray(d, dtype=np.float32)


def run_ants(fix, movs, sp):
    import ants  # noqa: F401  (antspyx)

    f = ants.from_numpy(fix.astype(np.float32), spacing=tuple(float(s) for s in sp))
    m = ants.from_numpy(movs[0].astype(np.float32), spacing=tuple(float(s) for s in sp))
    tx = ants.registration(f, m, type_of_transform="SyN", aff_metric="mattes", syn_metric="mattes")
    field = ants.image_read(tx["fwdtransforms"][0]).numpy()  # (X,Y,Z,3) mm, physical axes = array axes here
    return (field / np.asarray(sp)).astype(np.float32)


METHODS = {"usnav": run_usnav, "convexadam": run_convexadam, "ants": run_ants}


def available(name: str) -> str | None:
    """None if usable, else why not."""
    if name == "convexadam":
        try:
            import convexAdam.convex_adam_MIND  # noqa: F401
        except Exception as exc:  # pragma: no cover
            return f"convexAdam not installed ({exc.__class__.__name__}); pip install -e .[bench]"
    if name == "ants":
        try:
            import ants  # noqa: F401
        except Exception:
            return ("antspyx not installed: every antspyx wheel (0.5.4-0.6.3) requires numpy<2.4 or scipy<1.16, "
                    "which conflict with the pinned numpy==2.4.6 / scipy==1.17.1, so it is not in the [bench] extra")
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--first-case", type=int, default=100)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--data", type=Path, default=Path("/tmp/usnav_remind_bench"))
    ap.add_argument("--methods", default="usnav,convexadam,ants")
    ap.add_argument("--out", type=Path, default=RESULTS / "registration.json")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per registration (1: on the shared 2-core machine two threads spin "
                         "and cost 3-4x the CPU time)")
    ap.add_argument("--wait-min", type=float, default=0.0,
                    help="wait up to this many minutes per case for a separate simulating process")
    ap.add_argument("--report", type=Path, nargs="+", default=None,
                    help="only print one combined table from existing result JSON files (same cases)")
    args = ap.parse_args()
    if args.report:
        print_table(args.report)
        return

    import torch

    from usnav import __version__
    from usnav.io import learn2reg as l2r
    from usnav.metrics.remind import score_pair
    from usnav.sim.remind import simulate_case, write_case

    THREADS["n"] = max(1, args.threads)
    torch.set_num_threads(THREADS["n"])
    cases = list(range(args.first_case, args.first_case + args.cases))
    load_start = _load(None)
    sim_info: dict = {}

    def ensure_case(c: int) -> None:
        ready = args.data / "groundtruth" / f"ReMIND2Reg_{c:04d}.json"
        waited = 0.0
        while args.wait_min > 0 and not ready.is_file() and waited < args.wait_min * 60:
            time.sleep(10)  # another process is simulating the cases
            waited += 10
        if not (args.data / "imagesVal" / l2r.image_name(c, 0)).is_file() or not ready.is_file():
            t = time.perf_counter()
            truth = simulate_case(c, args.seed)
            write_case(args.data, truth, "val")
            print(f"simulated case {c:04d} in {time.perf_counter() - t:.0f} s", flush=True)
        sim_info[c] = json.loads(ready.read_text())


    methods = [m for m in args.methods.split(",") if m]
    skipped = {m: why for m in methods if (why := available(m))}
    rows: dict[str, list[dict]] = {m: [] for m in methods if m not in skipped}
    def load_case(c):
        ensure_case(c)
        fix = l2r.read_volume(args.data / "imagesVal" / l2r.image_name(c, 0))
        movs = [l2r.read_volume(args.data / "imagesVal" / l2r.image_name(c, k)).array for k in (1, 2)]
        stem = args.data / "landmarksVal"
        lf = l2r.read_landmarks(stem / f"ReMIND2Reg_{c:04d}_0000.csv", fix.shape)
        lm = l2r.read_landmarks(stem / f"ReMIND2Reg_{c:04d}_0001.csv", fix.shape)
        return fix, movs, lf, lm

    # methods outer, cases inner: the main method finishes on every case first
    for m in rows:
        for c in cases:
            fix, movs, lf, lm = load_case(c)
            t, cpu = time.perf_counter(), time.process_time()
            try:
                disp = METHODS[m](fix.array, movs, fix.spacing_mm)
            except Exception as exc:  # record and continue
                rows[m].append({"case": c, "error": f"{exc.__class__.__name__}: {exc}"})
                print(f"{m} case {c}: failed: {exc}", flush=True)
                continue
            wall, cpu = time.perf_counter() - t, time.process_time() - cpu
            s = score_pair(l2r.disp_name(c, 0, c, 1), disp, lf, lm, fix.spacing_mm, wall).as_dict()
            s.update(case=c, cpu_s=cpu, load1=_load(None)[0])
            rows[m].append(s)
            print(f"{m} case {c}: TRE {s['tre_initial_mm']:.2f} -> {s['tre_mm']:.2f} mm, TRE30 {s['tre30_mm']:.2f}, "
                  f"SDlogJ {s['sdlogj']:.3f}, fold {s['folding_fraction']:.1e}, {wall:.1f} s wall / {cpu:.1f} s CPU, "
                  f"load {s['load1']:.1f}", flush=True)
            _write(args, rows, skipped, sim_info, load_start, __version__, partial=True)
    _write(args, rows, skipped, sim_info, load_start, __version__, partial=False)


def _summary(rs: list[dict]) -> dict:
    ok = [r for r in rs if "error" not in r]
    if not ok:
        return {"n": 0, "failed": len(rs)}
    keys = ["tre_initial_mm", "tre_mm", "tre30_initial_mm", "tre30_mm", "sdlogj", "folding_fraction", "runtime_s",
            "cpu_s"]
    out = {k: float(np.mean([r[k] for r in ok])) for k in keys}
    out["max_folding_fraction"] = float(max(r["folding_fraction"] for r in ok))
    out["n"] = len(ok)
    out["failed"] = len(rs) - len(ok)
    return out


def _write(args, rows, skipped, sim_info, load_start, version, partial: bool) -> None:
    summ = {m: _summary(rs) for m, rs in rows.items()}
    shift = [v["shift_stats"] for v in sim_info.values()]
    doc = {
        "benchmark": "registration",
        "partial": partial,
        "usnav_version": version,
        "config": {"cases": args.cases, "first_case": args.first_case, "seed": args.seed, "methods": args.methods,
                   "grid": [256, 256, 256], "spacing_mm": 0.5, "threads": args.threads,
                   "usnav_registration": {k: v for k, v in asdict(_usnav_config()).items() if k != "threads"}},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "torch_threads": args.threads, "loadavg_start": list(load_start), "loadavg_end": list(_load(None))},
        "brain_shift_truth": {"mean_mm": float(np.mean([s["mean_mm"] for s in shift])) if shift else None,
                              "max_mm": float(np.max([s["max_mm"] for s in shift])) if shift else None},
        "skipped_methods": skipped,
        "summary": summ,
        "per_case": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, args.out)
    if partial:
        return
    print()
    hdr = f"{'method':<11}{'n':>3}{'TRE0':>7}{'TRE':>7}{'TRE30_0':>9}{'TRE30':>7}{'SDlogJ':>8}{'fold':>9}{'wall s':>8}{'CPU s':>8}"
    print(hdr)
    print("-" * len(hdr))
    for m, s in summ.items():
        if s["n"] == 0:
            print(f"{m:<11}  all {s['failed']} failed")
            continue
        print(f"{m:<11}{s['n']:>3}{s['tre_initial_mm']:>7.2f}{s['tre_mm']:>7.2f}{s['tre30_initial_mm']:>9.2f}"
              f"{s['tre30_mm']:>7.2f}{s['sdlogj']:>8.3f}{s['folding_fraction']:>9.1e}{s['runtime_s']:>8.1f}{s['cpu_s']:>8.1f}")
    for m, why in skipped.items():
        print(f"{m:<11}  skipped: {why}")
    print(f"load average start {load_start[0]:.1f}, end {_load(None)[0]:.1f} on {os.cpu_count()} CPUs")


def print_table(paths: list[Path]) -> None:
    """One table from several result files (e.g. methods run as separate processes at the same time)."""
    hdr = f"{'method':<11}{'cases':>6}{'TRE0':>7}{'TRE':>7}{'TRE30_0':>9}{'TRE30':>7}{'SDlogJ':>8}{'fold':>9}{'wall s':>8}{'CPU s':>8}"
    print(hdr)
    print("-" * len(hdr))
    for p in paths:
        doc = json.loads(Path(p).read_text())
        for m, rs in doc["per_case"].items():
            s = _summary(rs)
            if s["n"] == 0:
                print(f"{m:<11}  no finished case")
                continue
            ids = ",".join(str(r["case"]) for r in rs if "error" not in r)
            print(f"{m:<11}{s['n']:>6}{s['tre_initial_mm']:>7.2f}{s['tre_mm']:>7.2f}{s['tre30_initial_mm']:>9.2f}"
                  f"{s['tre30_mm']:>7.2f}{s['sdlogj']:>8.3f}{s['folding_fraction']:>9.1e}{s['runtime_s']:>8.1f}"
                  f"{s['cpu_s']:>8.1f}   cases {ids}{' (partial run)' if doc.get('partial') else ''}")
        for m, why in doc.get("skipped_methods", {}).items():
            print(f"{m:<11}  skipped: {why}")
        la = doc["machine"]
        print(f"  [{Path(p).name}] load average start {la['loadavg_start'][0]:.1f}, last {la['loadavg_end'][0]:.1f}, "
              f"{la['cpu_count']} CPUs")


if __name__ == "__main__":
    main()
