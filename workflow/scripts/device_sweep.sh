#!/usr/bin/env bash
# For a lent one-GPU machine: the pilot sweep of candidate mini designs (workflow/scripts/design_sweep.py), one
# process per design side by side on the card (eager training: each process is launch-bound, so they share the
# card well; the sweep's tokens/s are therefore not throughput numbers), pilot seeds 100 and 101 that the final
# run never uses, Full and SWA-2048. Copies the summaries, curves and logs to $OUT.
# COMMON: overrides for every design (default: eager SDPA, the first sweep's); MPS=1: the whole sweep under a CUDA
# MPS daemon of its own (workflow/scripts/with_mps.sh), so compiled designs share the card as the mini DAG does;
# SIDE_DESIGN=NAME=overrides with SIDE_VARIANTS: one more process beside the sweep (e.g. a short check of other
# variants), trained and read like a design but left out of the rule's pick.
# Usage (repo root, wheels in .whl/): SWEEP_TIMEOUT=400 bash workflow/scripts/device_sweep.sh
set -uo pipefail
if [ -n "${MPS:-}" ] && [ -z "${CUDA_MPS_PIPE_DIRECTORY:-}" ]; then
  exec workflow/scripts/with_mps.sh --or-without bash "$0" "$@"
fi
T0=$(date +%s)
source workflow/scripts/device_env.sh
W=/tmp/sweep; rm -rf "$W"; mkdir -p "$W"
nvidia-smi -L > "$OUT/versions.txt"; device_versions >> "$OUT/versions.txt"; cat "$OUT/versions.txt"
DESIGNS=${DESIGNS:-"v4= order2=data.markov_order=2 copies32=data.copies_per_token=0.03125 order2_copies32=data.markov_order=2,data.copies_per_token=0.03125"}
COMMON=${COMMON-train.compile=false model.attn_backend=sdpa}
names=(); pids=()
sweep() {  # design variants...
  local d=$1; shift
  OMP_NUM_THREADS=2 timeout "${SWEEP_TIMEOUT:-400}" python3 workflow/scripts/design_sweep.py --out "$W" \
    --seeds ${SEEDS:-100 101} --variants "$@" --workers 3 \
    --scale "${SWEEP_SCALE:-mini}" --common $COMMON ${EXTRA:-} --design "$d" > "$W/${d%%=*}.log" 2>&1 &
  pids+=($!)
}
for d in $DESIGNS; do
  names+=("${d%%=*}")
  sweep "$d" ${VARIANTS:-full swa2048}
done
[ -z "${SIDE_DESIGN:-}" ] || sweep "$SIDE_DESIGN" ${SIDE_VARIANTS:-gdn}
( while sleep 15; do echo "t=$(( $(date +%s) - T0 ))s $(nvidia-smi --query-gpu=utilization.gpu,memory.used \
    --format=csv,noheader)"; done ) > "$W/nvidia_smi.log" 2>&1 &
MON=$!
wait "${pids[@]}"
kill $MON 2>/dev/null
echo "sweep processes done at t=$(( $(date +%s) - T0 ))s"
python3 workflow/scripts/design_sweep.py --out "$W" --merge "${names[@]}" 2>&1 | tee "$OUT/merge.txt"
cp "$W/summary.csv" "$W/curves.csv" "$OUT/" 2>/dev/null
[ -z "${SIDE_DESIGN:-}" ] || cp "$W/${SIDE_DESIGN%%=*}/summary.csv" "$OUT/side_summary.csv" 2>/dev/null
cp "$W/nvidia_smi.log" "$OUT/" 2>/dev/null
tar czf "$OUT/sweep_logs.tgz" --exclude='*/data' --exclude='*.ckpt' --exclude='*/ckpt' -C /tmp sweep
grep -h "^\[" "$W"/*.log | tail -40
echo "total t=$(( $(date +%s) - T0 ))s"
