"""Score ceilings of predictors that cannot see the sign of the rotation-protocol turn.

    python benchmarks/freehand_sign_ceiling.py --test TEST/t90 TEST/t91 TEST/t92 TEST/t93

Speckle decorrelation, and every feature derived from it, is the same for a
motion and its z-mirror (M L M, M = diag(1, 1, -1, 1)). In the rotation
protocol the fan phases start in a fixed direction (a learnable prior), but
the ~90 degree turn about the depth axis goes either way at random. This
script scores *oracle* predictions built from the true local transforms of
each scan, so it bounds what any sign-blind method can reach:

- ``truth``: the true locals (score 1);
- ``mirror_turn``: the truth with the locals of the turn phase z-mirrored
  (a perfect predictor that picks the wrong turn direction);
- ``hedged_turn``: the truth with the rotation about the depth axis and the
  z translation of the turn-phase locals removed (the point-loss-optimal
  answer when the direction is a coin flip);
- ``mirror_all``: every local z-mirrored (all signs wrong).

The turn phase is found from the truth: the frames where the 31-frame moving
average of |rotation about the image y axis| exceeds half its maximum.
Prints a table and writes ``benchmarks/results/freehand_sign_ceiling.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from usnav import __version__
from usnav.geometry.tracking import chain_local
from usnav.io.tusrec import open_dataset
from usnav.metrics.tusrec import score_scan

ROOT = Path(__file__).resolve().parents[1]
M_MIRROR_Z = np.diag([1.0, 1.0, -1.0, 1.0])
VARIANTS = ("truth", "mirror_turn", "hedged_turn", "mirror_all")


def turn_phase(T_previous_from_image: np.ndarray) -> tuple[int, int]:
    """First and one-past-last local index of the turn about the image depth (y) axis."""
    ry = np.abs(Rotation.from_matrix(T_previous_from_image[:, :3, :3]).as_rotvec()[:, 1])
    smooth = np.convolve(ry, np.ones(31) / 31, "same")
    idx = np.flatnonzero(smooth > 0.5 * smooth.max())
    return int(idx.min()), int(idx.max()) + 1


def oracle_locals(T_previous_from_image: np.ndarray) -> dict[str, np.ndarray]:
    """The oracle local transforms of every variant."""
    L = T_previous_from_image
    a, b = turn_phase(L)
    mirror_turn = L.copy()
    mirror_turn[a:b] = M_MIRROR_Z @ L[a:b] @ M_MIRROR_Z
    hedged = L.copy()
    rotvec = Rotation.from_matrix(L[a:b, :3, :3]).as_rotvec()
    rotvec[:, 1] = 0.0
    hedged[a:b, :3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    hedged[a:b, 2, 3] = 0.0
    return {"truth": L, "mirror_turn": mirror_turn, "hedged_turn": hedged,
            "mirror_all": M_MIRROR_Z @ L @ M_MIRROR_Z}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--test", type=Path, nargs="+", required=True, help="test data set folder(s) with ground truth")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "freehand_sign_ceiling.json")
    a = p.parse_args()
    per_scan = []
    for root in a.test:
        ds = open_dataset(root)
        for ref in ds.scans:
            with ds.open_scan(ref) as scan:
                G, L = scan.T_image0_from_image, scan.T_previous_from_image
                row = {"scan": f"{root}:{ref}", "frames": scan.n_frames, "turn_locals": list(turn_phase(L))}
                for name, Lv in oracle_locals(L).items():
                    s = score_scan(ref.subject, ref.scan, chain_local(Lv), Lv, G, L,
                                   ds.calibration.T_mm_from_pixel, scan.frame_shape, scan.landmarks)
                    row[name] = {"score": s.score, "GPE": s.GPE, "GLE": s.GLE, "LPE": s.LPE, "LLE": s.LLE}
                per_scan.append(row)
    mean = {v: float(np.mean([r[v]["score"] for r in per_scan])) for v in VARIANTS}
    # a coin flip between the right and the wrong turn direction, in expectation
    mean["coin_flip_turn"] = 0.5 * (mean["truth"] + mean["mirror_turn"])

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"oracle scores of sign-blind predictions ({len(per_scan)} scans)")
    t.add_column("scan")
    t.add_column("turn locals", justify="right")
    for v in VARIANTS:
        t.add_column(v, justify="right")
    for r in per_scan:
        t.add_row(r["scan"], f"{r['turn_locals'][0]}-{r['turn_locals'][1]}", *(f"{r[v]['score']:.3f}" for v in VARIANTS))
    t.add_row("mean", "", *(f"{mean[v]:.3f}" for v in VARIANTS))
    Console().print(t)
    print(f"expected score of a coin flip on the turn direction (otherwise perfect): {mean['coin_flip_turn']:.3f}")
    out = {"config": {"test": [str(x) for x in a.test]}, "per_scan": per_scan, "mean_score": mean,
           "usnav_version": __version__,
           "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
