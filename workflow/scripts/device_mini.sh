#!/usr/bin/env bash
# The mini DAG on a lent GPU machine whose image lacks Snakemake and Hydra and reaches no package index:
# installs the wheels carried in .whl/, runs every GPU job on its own card slot (gpu_lock.py), stops the DAG
# before DAG_TIMEOUT seconds, and packs the small result files (tables, logs, per-run CSVs) into $OUT.
# Usage (from the repo root): DAG_TIMEOUT=400 bash workflow/scripts/device_mini.sh [extra snakemake args]
set -uo pipefail
T0=$(date +%s)
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
from hybridlab.analysis.schemas import RUN_FILES
print(" ".join(f"results/mini/tables/{k}.csv" for k in [*RUN_FILES, "train"]) + " results/mini/tables/info.json")
PY
)
echo "start DAG at t=$(( $(date +%s) - T0 ))s with $SLOTS GPU slots"
timeout "${DAG_TIMEOUT:-400}" snakemake --cores "$(nproc)" --resources gpu="$SLOTS" --keep-going \
  --config scale=mini "$@" -- $TARGETS > "$OUT/snakemake.log" 2>&1
echo "DAG exit $? at t=$(( $(date +%s) - T0 ))s"
kill $MON 2>/dev/null
grep -h "gpu_lock: GPU" results/mini/logs/*.log > "$OUT/gpu_assignments.txt" 2>/dev/null
tar czf "$OUT/mini_results.tgz" results/mini/tables results/mini/logs results/mini/data/manifest.json \
  $(ls results/mini/runs/*/*/*/*.csv results/mini/runs/*/*/*/*.json 2>/dev/null)
ls -la "$OUT"; echo "total t=$(( $(date +%s) - T0 ))s"
