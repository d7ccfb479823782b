#!/usr/bin/env bash
# For a lent one-GPU machine (image without Snakemake and Hydra, no package index), before the mini run: the CUDA
# tests of the new fast paths, then a pilot of the mini preset on seeds the final run never uses (100 and 101) for
# four variants (full, swa2048, swa128_nope, gdn), every stage of the DAG, to see the onset timing and the
# throughput of the training path. Packs logs and tables into $OUT/pilot.tgz.
# Usage (repo root, wheels in .whl/): PILOT_TIMEOUT=420 bash workflow/scripts/device_pilot.sh
set -uo pipefail
T0=$(date +%s)
source workflow/scripts/device_env.sh
W=/tmp/pilot; mkdir -p "$W"
stamp() { echo "$1 at t=$(( $(date +%s) - T0 ))s" | tee -a "$W/timeline.txt"; }
nvidia-smi -L > "$W/gpus.txt"; device_versions | tee "$W/versions.txt"
[ -n "${SKIP_TESTS:-}" ] || timeout 150 python3 -m pytest -q -p no:cacheprovider kernels/tests/test_chunk_state.py tests/gpu/test_recurrent_cuda.py \
  > "$W/pytest_gpu.log" 2>&1
stamp "pytest exit $?"; tail -3 "$W/pytest_gpu.log"
( while sleep 10; do echo "t=$(( $(date +%s) - T0 ))s $(nvidia-smi --query-gpu=utilization.gpu,memory.used \
    --format=csv,noheader)"; done ) > "$W/nvidia_smi.log" 2>&1 &
MON=$!
rm -rf results/mini paper/mini
timeout $(( ${PILOT_TIMEOUT:-420} - ($(date +%s) - T0) )) env HYBRIDLAB_JOBS_PER_GPU=6 snakemake --cores all \
  --resources gpu=6 train=2 --keep-going --config scale=mini 'variants=[full,swa2048,swa128_nope,gdn]' \
  'seeds=[100,101]' > "$W/snakemake.log" 2>&1
stamp "pilot DAG exit $?"
kill $MON 2>/dev/null
grep -h "compiled forward\|run [0-9]/\|trained\|WARNING\|Error" results/mini/logs/train_*.log > "$W/train_summary.txt" 2>/dev/null
tar czf "$OUT/pilot.tgz" -C /tmp pilot -C "$PWD" $(ls -d results/mini/tables results/mini/logs paper/mini/report.md 2>/dev/null) \
  $(ls results/mini/runs/*/*/*/metrics.csv results/mini/runs/*/*/*/onset.csv results/mini/runs/*/*/*/traced.csv 2>/dev/null)
cat "$W/timeline.txt" "$W/train_summary.txt"
python3 - <<'PY'
import pandas as pd, glob
for f in sorted(glob.glob("results/mini/runs/*/*/*/onset.csv")):
    d = pd.read_csv(f); d = d[(d.selection == "any_full") & (d.metric == "onset_tokens")]
    m = pd.read_csv(f.replace("onset.csv", "metrics.csv"))
    print(f.split("/")[-3], f.split("/")[-2], "onset", d.value.tolist(), "tok/s med", int(m.tokens_per_s.median()),
          "loss", round(m.loss.iloc[-1], 4))
PY
echo "total t=$(( $(date +%s) - T0 ))s"
