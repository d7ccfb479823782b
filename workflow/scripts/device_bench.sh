#!/usr/bin/env bash
# Throughput, DDP and CUDA-test measurements on a lent 2-GPU machine, in one call:
#   GPU 0+1   a mini training run with DDP on two GPUs (global batch 32), then
#   GPU 0     the same run on one GPU (same global batch), compared; `hybridlab benchmark` of every variant at
#             S1 shape at 4K context (issue 3's table) and at 16K; then the CUDA tests (tests/gpu)
#   GPU 1     every variant at S5 shape, 16K context; Full and SWA-128 compiled; both with d_ff 4416
# Every chain stops before BENCH_TIMEOUT seconds; every CSV is written row by row, so a cut chain keeps its rows.
# Usage (repo root, wheels in .whl/): BENCH_TIMEOUT=480 bash workflow/scripts/device_bench.sh
set -uo pipefail
T0=$(date +%s)
source workflow/scripts/device_env.sh
W=/tmp/bench; mkdir -p "$W"
nvidia-smi -L | tee "$W/gpus.txt"
LEFT=$(( ${BENCH_TIMEOUT:-480} ))
until_end() { echo $(( LEFT - ($(date +%s) - T0) )); }
VARIANTS="full swa128 swa512 swa2048 lightning mamba2 gdn swa128_ratio13 swa128_headwise swa128_nope"
bench() {  # bench GPU OUTCSV ARGS...: one benchmark table, cut at the deadline
  local gpu=$1 out=$2; shift 2
  CUDA_VISIBLE_DEVICES=$gpu timeout "$(until_end)" python3 -m hybridlab.cli benchmark --out "$W/$out" "$@" \
    >> "$W/log_gpu${gpu}.txt" 2>&1
  echo "$out exit $? at t=$(( $(date +%s) - T0 ))s" >> "$W/log_gpu${gpu}.txt"
}
COMMON="--steps 5 --set model.mixer_backend=torch"  # fla refuses the backward on Hopper/Triton 3.6 (see README)
# Phase 1, both cards: the DDP run (2 GPUs, global batch 32 = 2 ranks x 16). Phase 2 runs its 1-GPU twin.
if [ ! -f results/mini/data/manifest.json ]; then
  python3 -m hybridlab.cli prepare-data --scale mini --out results/mini/data > "$W/ddp_prepare.log" 2>&1
fi
DDP_ARGS="--scale mini --variant full --seed 0 --data results/mini/data train.steps=400 train.warmup_steps=40
          train.log_every=10 train.n_checkpoints=1"
CUDA_VISIBLE_DEVICES=0,1 timeout "$(until_end)" python3 -m hybridlab.cli train --out "$W/ddp2" $DDP_ARGS \
  train.devices=2 train.micro_batch_size=16 > "$W/ddp2.log" 2>&1
echo "ddp2 exit $? at t=$(( $(date +%s) - T0 ))s" >> "$W/ddp2.log"
( CUDA_VISIBLE_DEVICES=0 timeout "$(until_end)" python3 -m hybridlab.cli train --out "$W/ddp1" $DDP_ARGS \
    train.devices=1 train.micro_batch_size=32 > "$W/ddp1.log" 2>&1
  echo "ddp1 exit $? at t=$(( $(date +%s) - T0 ))s" >> "$W/ddp1.log"
  python3 workflow/scripts/compare_losses.py "$W/ddp1/metrics.csv" "$W/ddp2/metrics.csv" > "$W/ddp_compare.txt" 2>&1
  bench 0 bench_S1_4k.csv --variants $VARIANTS --sizes S1 --context 4096 --batch 4 $COMMON
  bench 0 bench_S1_16k.csv --variants $VARIANTS --sizes S1 --context 16384 --batch 4 $COMMON
  CUDA_VISIBLE_DEVICES=0 timeout "$(until_end)" python3 -m pytest -q -m gpu tests/gpu -p no:cacheprovider \
    > "$W/pytest_gpu.log" 2>&1; echo "pytest exit $? at t=$(( $(date +%s) - T0 ))s" >> "$W/pytest_gpu.log"
) &
( bench 1 bench_S5_16k.csv --variants $VARIANTS --sizes S5 --context 16384 --batch 1 $COMMON
  bench 1 bench_S5_16k_compiled.csv --variants full swa128 --sizes S5 --context 16384 --batch 1 --compile $COMMON
  bench 1 bench_S5_16k_dff4416.csv --variants full swa128 --sizes S5 --context 16384 --batch 1 $COMMON model.d_ff=4416
) &
wait
cp "$W/ddp1/metrics.csv" "$W/ddp1_metrics.csv" 2>/dev/null; cp "$W/ddp2/metrics.csv" "$W/ddp2_metrics.csv" 2>/dev/null
device_versions > "$W/versions.txt"
(cd "$W" && tar czf "$OUT/bench_results.tgz" --exclude='ddp1/*' --exclude='ddp2/*' --exclude=ddp1 --exclude=ddp2 .)
for f in "$W"/bench_*.csv; do echo "== $f"; cat "$f"; done
cat "$W/ddp_compare.txt"; tail -5 "$W/pytest_gpu.log"
echo "total t=$(( $(date +%s) - T0 ))s"
