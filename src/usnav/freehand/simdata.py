"""Time-cropped simulated TUS-REC scans for training and benchmarking on a small CPU budget.

``usnav simulate tusrec`` renders whole scans; a 1500-frame scan costs about
1500 frame renders. Rendering a short scan instead (``--frames 100``) would
squeeze the whole protocol into 100 frames and make the probe move ~15x
faster per frame than in a real 20 Hz sweep. This module keeps the
simulator's realistic timing: it plans the full-length scan with
:func:`usnav.sim.tusrec_sim.simulate_scan` (same scene, trajectory, tracker
and calibration as ``usnav simulate tusrec`` with the same seed) and renders
only a contiguous segment of it, written as its own scan
``<scan>_f<start>`` (train layout) with landmarks chosen inside the segment.

    python -m usnav.freehand.simdata OUT --anatomy forearm --protocol rotation \\
        --subject 10 --seed 101 --frames 1500 --segment 64 --segments 3 --frame-size 240x320
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

__all__ = ["write_segments"]


def write_segments(
    out: str | Path, anatomy: str, protocol: str, subject: int, seed: int, n_frames: int, segment: int,
    segments: int, frame_hw: tuple[int, int], scans: list[str] | None = None, log=print,
    start: int | None = None,
) -> list[tuple[str, str]]:
    """Render ``segments`` random segments of ``segment`` frames from each scan plan; returns (subject, scan) refs.

    ``start``: render the one segment starting at this frame instead (e.g. 0: the
    beginning of the protocol, as a real scan starts).
    """
    from usnav.io.tusrec import CALIB_FILENAME, write_calibration, write_landmarks, write_scan
    from usnav.sim.tusrec_sim import (SimConfig, choose_landmarks, dataset_calibration, render_scan, scan_names,
                                      simulate_scan, subject_name)

    out = Path(out)
    config = SimConfig(anatomy=anatomy, protocol=protocol, n_frames=n_frames, frame_hw=frame_hw, seed=seed)
    config.validate()
    probe = config.probe()
    out.mkdir(parents=True, exist_ok=True)
    if not (out / CALIB_FILENAME).exists():
        write_calibration(out / CALIB_FILENAME, dataset_calibration(seed, probe))
    rng = np.random.default_rng([seed, subject, 77])
    names = scans or scan_names(protocol)
    marks = {}
    refs = []
    for scan in names:
        scene, T_wi, tforms, _ = simulate_scan(config, subject, scan)
        if start is not None:
            starts = [start]
        else:
            starts = np.sort(rng.choice(np.arange(0, n_frames - segment), size=segments, replace=False))
        for a in starts:
            a = int(a)
            seg = slice(a, a + segment)
            parts = []
            for _, f in render_scan(config, scene, T_wi[seg]):
                parts.append(f)
                if len(parts) % 5 == 0:
                    log(f"  {scan}_f{a:04d}: {sum(len(q) for q in parts)}/{segment} frames rendered")
            frames = np.concatenate(parts)
            name = f"{scan}_f{a:04d}"
            write_scan(out, subject_name(subject), name, frames, tforms[seg], layout="train")
            marks[name] = choose_landmarks(scene, T_wi[seg], probe, np.random.default_rng([seed, subject, a]), k=20)
            refs.append((subject_name(subject), name))
            write_landmarks(out, subject_name(subject), marks)
            log(f"wrote {subject_name(subject)}/{name}: frames {a}..{a + segment - 1} of {n_frames}")
    return refs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--anatomy", default="forearm")
    p.add_argument("--protocol", default="rotation")
    p.add_argument("--subject", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=1500, help="full scan length the segments are cut from")
    p.add_argument("--segment", type=int, default=64)
    p.add_argument("--segments", type=int, default=2, help="segments per scan plan")
    p.add_argument("--frame-size", default="240x320")
    p.add_argument("--scans", default="", help="comma-separated scan names (default: all of the protocol)")
    p.add_argument("--start", type=int, default=None, help="render one segment starting at this frame (default: random)")
    a = p.parse_args(argv)
    hw = tuple(int(v) for v in a.frame_size.split("x"))
    write_segments(a.out, a.anatomy, a.protocol, a.subject, a.seed, a.frames, a.segment, a.segments, hw,
                   [s for s in a.scans.split(",") if s] or None, log=lambda m: print(m, flush=True), start=a.start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
