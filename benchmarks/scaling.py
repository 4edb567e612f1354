"""Batch scaling: cases per minute with 1 and 2 workers, local pool and Ray, in one run.

Workloads (``--workload``):
- ``cpu`` (default): :func:`usnav.batch.synthetic.cpu_case`, a documented
  CPU-bound synthetic case (200 single-threaded element-wise sin/cos passes
  over 200000 float64 values, about 0.9 s of CPU time) that writes one small array.
- ``overhead``: :func:`usnav.batch.synthetic.array_case` without sleep (one
  8 kB array per case): measures what the batch layer itself costs per case
  (dispatch, sha256, fsync, rename, manifest append).
- ``tusrec-sim``: a real per-case workload, simulating one small TUS-REC scan
  with ``usnav.sim.tusrec_sim.write_one_scan`` (``--frames`` frames of
  ``--frame-size`` pixels, coarse scatterers), written as an HDF5 file.

Every configuration writes to a fresh folder through :func:`usnav.batch.run_batch`
(manifest, checksums, renames included). The wall time of a Ray run excludes
starting the private local cluster (reported separately); the local pool's
includes spawning its processes. The machine is shared: the load average is
recorded before and after each configuration.

    .venv/bin/python benchmarks/scaling.py                      # cpu, 8 cases
    .venv/bin/python benchmarks/scaling.py --workload overhead --cases 200
    .venv/bin/python benchmarks/scaling.py --workload tusrec-sim --cases 4
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save_results  # noqa: E402


def tusrec_scan_case(payload: dict, out: Path) -> dict:
    """Simulate one TUS-REC scan (train layout) into ``out``; return its landmarks."""
    from usnav.sim.tusrec_sim import SimConfig, write_one_scan

    cfg = SimConfig(
        n_frames=payload["frames"],
        frame_hw=tuple(payload["frame_hw"]),
        depth_mm=payload["depth_mm"],
        scatterer_spacing_mm=payload["scatterer_spacing_mm"],
        seed=payload["seed"],
    )
    landmarks = write_one_scan(cfg, out, payload["subject"], payload["scan"])
    return {"landmarks": landmarks.tolist()}


def make_cases(args):
    from usnav.batch import Case
    from usnav.batch.synthetic import cpu_cases

    if args.workload == "cpu":
        return cpu_cases(args.cases, iterations=args.iterations)
    if args.workload == "overhead":
        from usnav.batch.synthetic import array_cases

        return array_cases(args.cases, sleep_s=0.0)
    h, w = (int(x) for x in args.frame_size.split("x"))
    cases = []
    for i in range(args.cases):
        subject, scan = divmod(i, 2)
        scan_name = ("LH_rotation", "RH_rotation")[scan]
        cases.append(Case(f"{subject:03d}/{scan_name}", {
            "subject": subject, "scan": scan_name, "frames": args.frames, "frame_hw": [h, w],
            "depth_mm": 40.0, "scatterer_spacing_mm": 1.0, "seed": 0}))
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=["cpu", "overhead", "tusrec-sim"], default="cpu")
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--iterations", type=int, default=200, help="cpu: element-wise passes per case")
    ap.add_argument("--frames", type=int, default=20, help="tusrec-sim: frames per scan")
    ap.add_argument("--frame-size", default="64x80", help="tusrec-sim: HxW")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--backends", default="pool,ray")
    ap.add_argument("--name", default=None, help="results file name (default scaling or scaling_<workload>)")
    args = ap.parse_args()

    from usnav.batch import BatchOptions, read_manifest, run_batch, start_local_ray

    task = tusrec_scan_case
    if args.workload == "cpu":
        from usnav.batch.synthetic import cpu_case as task
    elif args.workload == "overhead":
        from usnav.batch.synthetic import array_case as task
    cases = make_cases(args)
    workers_list = [int(w) for w in args.workers.split(",")]
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="usnav_scaling_"))
    try:
        for backend in args.backends.split(","):
            for workers in workers_list:
                out = tmp / f"{backend}_{workers}"
                startup = 0.0
                if backend == "ray":
                    try:
                        t0 = time.perf_counter()
                        ray = start_local_ray(num_cpus=workers)
                        startup = time.perf_counter() - t0
                    except Exception as exc:  # Ray missing: report and go on
                        print(f"ray: skipped ({exc})")
                        break
                    options = BatchOptions(workers=workers, ray_address="local", progress=False)
                else:
                    options = BatchOptions(workers=workers, progress=False)
                load_before = os.getloadavg()[0]
                t0 = time.perf_counter()
                report = run_batch(task, cases, out, options)
                wall = time.perf_counter() - t0
                load_after = os.getloadavg()[0]
                if backend == "ray":
                    ray.shutdown()
                recs = read_manifest(out)
                assert len(report.done) == len(cases), report.summary()
                task_s = [r.seconds for r in recs.values()]
                cpu_s = [r.result["cpu_s"] for r in recs.values() if isinstance(r.result, dict) and "cpu_s" in r.result]
                rows.append({
                    "backend": backend,
                    "workers": workers,
                    "runs_on": report.backend,
                    "cases": len(cases),
                    "wall_s": round(wall, 2),
                    "cases_per_min": round(60.0 * len(cases) / wall, 1),
                    "mean_case_s": round(sum(task_s) / len(task_s), 3),
                    "mean_case_cpu_s": round(sum(cpu_s) / len(cpu_s), 3) if cpu_s else None,
                    "ray_startup_s": round(startup, 2) if backend == "ray" else None,
                    "load_1min_before": round(load_before, 2),
                    "load_1min_after": round(load_after, 2),
                })
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base = {r["backend"]: r["cases_per_min"] for r in rows if r["workers"] == 1}
    for r in rows:
        r["speedup_vs_1_worker"] = round(r["cases_per_min"] / base[r["backend"]], 2) if r["backend"] in base else None
    header = f"{'backend':8} {'workers':>7} {'cases':>5} {'wall s':>7} {'cases/min':>9} {'speedup':>7} {'case s':>7} {'cpu s':>6} {'load':>11}  runs on"
    print(f"workload {args.workload}, {len(cases)} cases, {os.cpu_count()} CPUs")
    print(header)
    for r in rows:
        print(f"{r['backend']:8} {r['workers']:>7} {r['cases']:>5} {r['wall_s']:>7.2f} {r['cases_per_min']:>9.1f} "
              f"{r['speedup_vs_1_worker'] or float('nan'):>7.2f} {r['mean_case_s']:>7.3f} "
              f"{r['mean_case_cpu_s'] if r['mean_case_cpu_s'] is not None else float('nan'):>6.3f} "
              f"{r['load_1min_before']:>5.2f}-{r['load_1min_after']:<5.2f}  {r['runs_on']}"
              + (f" (+{r['ray_startup_s']:.1f} s cluster start)" if r['ray_startup_s'] else ""))
    name = args.name or ("scaling" if args.workload == "cpu" else f"scaling_{args.workload.replace('-', '_')}")
    config = {k: v for k, v in vars(args).items()}
    path = save_results(name, {"config": config, "results": rows})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
