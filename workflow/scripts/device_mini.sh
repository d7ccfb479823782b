#!/usr/bin/env bash
# The mini DAG (or another one-GPU preset, SCALE=mini_grid) on a lent GPU machine whose image lacks Snakemake and
# Hydra and reaches no package index: installs the wheels carried in .whl/, runs every GPU job on its own card
# slot (gpu_lock.py), stops the DAG before DAG_TIMEOUT seconds, and packs the small result files (tables, logs,
# per-run and per-branch CSVs) into $OUT.
# Usage (from the repo root): [SCALE=mini_grid] DAG_TIMEOUT=400 bash workflow/scripts/device_mini.sh [snakemake args]
set -uo pipefail
T0=$(date +%s)
export SCALE=${SCALE:-mini}
source workflow/scripts/device_env.sh
nvidia-smi -L | tee "$OUT/gpus.txt"
device_versions | tee "$OUT/versions.txt"
NGPU=$(nvidia-smi -L | grep -c '^GPU ')
export HYBRIDLAB_JOBS_PER_GPU=${JOBS_PER_GPU:-4}
SLOTS=$((NGPU * HYBRIDLAB_JOBS_PER_GPU))
( while sleep 15; do
    echo "t=$(( $(date +%s) - T0 ))s" >> "$OUT/nvidia_smi.log"
    nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader >> "$OUT/nvidia_smi.log"
    nvidia-smi --query-gpu=index,uuid,utilization.gpu,memory.used --format=csv,noheader >> "$OUT/nvidia_smi.log"
  done ) &
MON=$!
TARGETS=$(python3 - <<'PY'
import os
from hybridlab.analysis.schemas import RUN_FILES
from hybridlab.config import load_config
scale, t = os.environ["SCALE"], load_config(os.environ["SCALE"]).train
grid = ["budgets", "scaling_fit", "scaling_draws"] if t.schedule == "wsd" and t.budgets_k else []
print(" ".join(f"results/{scale}/tables/{k}.csv" for k in [*RUN_FILES, "train", *grid]),
      f"results/{scale}/tables/info.json")
PY
)
echo "start DAG at t=$(( $(date +%s) - T0 ))s with $SLOTS GPU slots"
timeout "${DAG_TIMEOUT:-400}" snakemake --cores "$(nproc)" --resources gpu="$SLOTS" --keep-going \
  --config scale="$SCALE" "$@" -- $TARGETS > "$OUT/snakemake.log" 2>&1
echo "DAG exit $? at t=$(( $(date +%s) - T0 ))s"
kill $MON 2>/dev/null
grep -h "gpu_lock: GPU" results/$SCALE/logs/*.log > "$OUT/gpu_assignments.txt" 2>/dev/null
tar czf "$OUT/${SCALE}_results.tgz" results/$SCALE/tables results/$SCALE/logs results/$SCALE/data/manifest.json \
  $(ls results/$SCALE/runs/*/*/*/*.csv results/$SCALE/runs/*/*/*/*.json results/$SCALE/runs/*/*/*/budget*/*.csv \
    results/$SCALE/runs/*/*/*/budget*/*.json 2>/dev/null)
ls -la "$OUT"; echo "total t=$(( $(date +%s) - T0 ))s"
