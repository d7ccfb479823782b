#!/usr/bin/env bash
# For a lent one-GPU machine: the pilot sweep of candidate mini designs (workflow/scripts/design_sweep.py), one
# process per design side by side on the card (eager training: each process is launch-bound, so they share the
# card well; the sweep's tokens/s are therefore not throughput numbers), pilot seeds 100 and 101 that the final
# run never uses, Full and SWA-2048. Copies the summaries, curves and logs to $OUT.
# Usage (repo root, wheels in .whl/): SWEEP_TIMEOUT=400 bash workflow/scripts/device_sweep.sh
set -uo pipefail
T0=$(date +%s)
source workflow/scripts/device_env.sh
W=/tmp/sweep; rm -rf "$W"; mkdir -p "$W"
nvidia-smi -L > "$OUT/versions.txt"; device_versions >> "$OUT/versions.txt"; cat "$OUT/versions.txt"
DESIGNS=${DESIGNS:-"v4= order2=data.markov_order=2 copies32=data.copies_per_token=0.03125 order2_copies32=data.markov_order=2,data.copies_per_token=0.03125"}
names=(); pids=()
for d in $DESIGNS; do
  n=${d%%=*}; names+=("$n")
  OMP_NUM_THREADS=2 timeout "${SWEEP_TIMEOUT:-400}" python3 workflow/scripts/design_sweep.py --out "$W" \
    --seeds ${SEEDS:-100 101} --variants ${VARIANTS:-full swa2048} --workers 3 \
    --scale "${SWEEP_SCALE:-mini}" --common train.compile=false model.attn_backend=sdpa ${EXTRA:-} --design "$d" > "$W/$n.log" 2>&1 &
  pids+=($!)
done
( while sleep 15; do echo "t=$(( $(date +%s) - T0 ))s $(nvidia-smi --query-gpu=utilization.gpu,memory.used \
    --format=csv,noheader)"; done ) > "$W/nvidia_smi.log" 2>&1 &
MON=$!
wait "${pids[@]}"
kill $MON 2>/dev/null
echo "sweep processes done at t=$(( $(date +%s) - T0 ))s"
python3 workflow/scripts/design_sweep.py --out "$W" --merge "${names[@]}" 2>&1 | tee "$OUT/merge.txt"
cp "$W/summary.csv" "$W/curves.csv" "$OUT/" 2>/dev/null
tar czf "$OUT/sweep_logs.tgz" --exclude='*/data' --exclude='*.ckpt' --exclude='*/ckpt' -C /tmp sweep
grep -h "^\[" "$W"/*.log | tail -40
echo "total t=$(( $(date +%s) - T0 ))s"
