#!/bin/bash
# Simulated data of the freehand default weights and benchmark (docs/freehand.md):
#   OUT/TR/     66 whole scans at 480x640 (forearm + brain; rotation + 2024 protocols)
#   OUT/DEMO/   24 demo-like cases (usnav.pipeline.demo_case, seeds 1000-1023; the demo uses seed 0)
#   OUT/TEST/   4 held-out forearm rotation scans, first 1000 of 1500 frames (subjects 90-93)
# About 45 minutes of rendering on 2 cores; every line is seeded, so the data are reproducible.
# Usage: bash benchmarks/freehand_data.sh [OUT]   (run from the repository root)
set -euo pipefail
OUT=${1:-fh_data}
PY=${PYTHON:-.venv/bin/python}
G="$PY -m usnav.freehand.simdata"
TR=$OUT/TR
hand() { [ $(($1 % 2)) -eq "$2" ] && echo LH || echo RH; }

# one round of training scans; group B's subjects are B+k (forearm rotation), B+20+k (brain rotation),
# B+30+k (forearm 2024) and B+40+k (brain 2024 Per_L), each with seed 100 * (group base) + k
one_round() {
  local B=$1 n_fa=$2 lh_parity=$3 br_even=$4 nf_even=$5 br_odd=$6 nf_odd=$7; shift 7; local p24=("$@") k s scan nf
  for k in $(seq 0 $((n_fa - 1))); do s=$((B + k))
    $G $TR/fa_rot_$s --anatomy forearm --protocol rotation --subject $s --seed $((100 * B + k)) --frames 1500 --segment 1500 --segments 1 --start 0 --scans "$(hand $k "$lh_parity")_rotation" --frame-size 480x640
  done
  for k in 0 1 2 3; do s=$((B + 20 + k))
    $G $TR/br_rot_$s --anatomy brain --protocol rotation --subject $s --seed $((100 * (B + 20) + k)) --frames 1500 --segment 1500 --segments 1 --start 0 --scans "$(hand $k "$lh_parity")_rotation" --frame-size 480x640
  done
  for k in $(seq 0 7); do s=$((B + 30 + k))
    $G $TR/fa_24_$s --anatomy forearm --protocol 2024 --subject $s --seed $((100 * (B + 30) + k)) --frames 600 --segment 600 --segments 1 --start 0 --scans ${p24[$k]} --frame-size 480x640
  done
  for k in $(seq 0 5); do s=$((B + 40 + k))
    if [ $((k % 2)) -eq 0 ]; then scan=$br_even; nf=$nf_even; else scan=$br_odd; nf=$nf_odd; fi
    $G $TR/br_24_$s --anatomy brain --protocol 2024 --subject $s --seed $((100 * (B + 40) + k)) --frames $nf --segment $nf --segments 1 --start 0 --scans $scan --frame-size 480x640
  done
}

# round 1: forearm rotation 100-113, brain rotation 120-123, forearm 2024 130-137, brain 2024 140-145
one_round 100 14 0 LH_Per_L_DtP 160 RH_Per_L_PtD 300 \
  LH_Per_L_DtP RH_Par_C_PtD LH_Per_S_PtD RH_Per_C_DtP LH_Par_L_DtP RH_Per_L_PtD LH_Par_S_DtP RH_Per_S_DtP

# held-out test set (subjects and seeds used nowhere else)
for k in 0 1 2 3; do s=$((90 + k))
  $G $OUT/TEST/t$s --anatomy forearm --protocol rotation --subject $s --seed $((9090 + 101 * k)) \
      --frames 1500 --segment 1000 --segments 1 --start 0 --scans "$(hand $k 0)_rotation" --frame-size 480x640
done

# round 2: forearm rotation 200-215, brain rotation 220-223, forearm 2024 230-237, brain 2024 240-245
one_round 200 16 1 RH_Per_L_DtP 200 LH_Per_L_PtD 240 \
  RH_Per_L_DtP LH_Par_C_DtP RH_Per_S_DtP LH_Per_C_PtD RH_Par_L_PtD LH_Per_L_PtD RH_Par_S_PtD LH_Per_S_DtP

# demo-like cases: brain shift, craniotomy, Per_L_DtP sweep, 160 (even seed) or 200 (odd seed) frames
$PY - "$OUT/DEMO" <<'EOF'
import sys
from usnav.pipeline.demo_case import simulate_demo_case, write_demo_case
for seed in range(1000, 1024):
    case = simulate_demo_case(seed=seed, n_frames=160 if seed % 2 == 0 else 200, frame_hw=(480, 640))
    write_demo_case(case, f"{sys.argv[1]}/d{seed}")
    print("demo-like case", seed, flush=True)
EOF
echo "data written to $OUT"
