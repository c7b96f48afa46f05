#!/usr/bin/env bash
# Training throughput of two builds of the train example, in ABBA order (before, after, after,
# before; so a drifting machine favours neither), with each run's context switches (perf stat).
# Prints one line per run: binary, images/s of training-step time, context switches.
#
#   benches/ab_train.sh A B DATA SIZE LATENT G_WIDTHS D_WIDTHS BATCH STEPS ROUNDS
#   benches/ab_train.sh /work/train-old target/x86_64-unknown-linux-gnu/release/examples/train \
#     /work/data/lorelei 96 100 128,64,32,16 16,32,64,128 16 100 3
set -euo pipefail
[ $# -eq 10 ] || { sed -n 2,9p "$0"; exit 2; }
A=$1 B=$2 data=$3 size=$4 latent=$5 widths=$6 d_widths=$7 batch=$8 steps=$9 rounds=${10}
one() {
  local dir
  dir=$(mktemp -d)
  RAYON_NUM_THREADS="${THREADS:-2}" perf stat -e context-switches -x, -o "$dir/stat" \
    "$1" --data "$data" --size "$size" --latent "$latent" --widths "$widths" --d-widths "$d_widths" \
    --batch "$batch" --steps "$steps" --max-images 2000 --run-dir "$dir/run" \
    --sample-every 1000000 --checkpoint-every 1000000 >/dev/null 2>&1
  python3 - "$1" "$dir" <<'PY'
import json, sys
state = json.load(open(f"{sys.argv[2]}/run/checkpoint/state.json"))
switches = next(l.split(",")[0] for l in open(f"{sys.argv[2]}/stat") if "context-switches" in l)
print(sys.argv[1], round(state["images_seen"] / state["train_seconds"], 1), switches)
PY
  rm -rf "$dir"
}
for _ in $(seq 1 "$rounds"); do one "$A"; one "$B"; one "$B"; one "$A"; done
