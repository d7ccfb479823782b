#!/usr/bin/env bash
# Throughput tables of issue 15 on a lent one-GPU machine, in one call (each table written row by row, each cut at
# the call's deadline), the rows that choose the mini DAG's mechanism first:
#   the mini DAG's own shape (scale vocabulary, batch 32 x 1024, compiled): 8 seeds of Full and of SWA-128
#     batched into one step (--ensemble 8, hybridlab.train.ensemble); Full and GDN alone; Full and GDN with 4
#     processes at once under CUDA MPS (when the image has nvidia-cuda-mps-control), then Full's 4 time-sliced;
#     a kernel-time profile of Full alone;
#   S1 shape at 16K, batch 4: Full, Mamba-2, GDN (eager);
#   S5 shape at 16K, batch 1, compiled: Full and SWA-128 (MFU; SWA-128's speed-up over Full);
#   Full at the mini shape with CUDA graphs (train.compile_mode=reduce-overhead).
# Usage (repo root, wheels in .whl/): BENCH_TIMEOUT=560 bash workflow/scripts/device_bench.sh
set -uo pipefail
T0=$(date +%s)
source workflow/scripts/device_env.sh
W=/tmp/bench; mkdir -p "$W"
until_end() { echo $(( ${BENCH_TIMEOUT:-560} - ($(date +%s) - T0) )); }
bench() {  # bench OUTCSV ARGS...: one table, cut at the deadline; skipped once it has passed (`timeout 0` would
  # not limit it at all); every table so far copied to $OUT after each, so a call cut by its own limit keeps them
  local out=$1 left; shift
  left=$(until_end)
  if [ "$left" -lt 15 ]; then echo "$out skipped: ${left}s left" | tee -a "$W/log.txt"; return; fi
  timeout "$left" python3 -m hybridlab.cli benchmark --out "$W/$out" "$@" >> "$W/log.txt" 2>&1
  echo "$out exit $? at t=$(( $(date +%s) - T0 ))s" | tee -a "$W/log.txt"
  cp "$W"/*.csv "$W/log.txt" "$OUT/" 2>/dev/null
}
MINI32="--scale mini --sizes mini --context 1024 --batch 32 --steps 30 --compile"
# ROWS picks the tables and their order (default: the mechanism rows first, then the 16K rows); ENSEMBLE8 and
# ENSEMBLE4 name the variants stacked 8 and 4 to a step (the mini DAG stacks 8 seeds of the attention variants, 4
# of the recurrent ones).
row() {
  case $1 in
    ensemble8) bench mini32_ensemble8.csv $MINI32 --variants ${ENSEMBLE8:-full swa128} --ensemble 8 ;;
    ensemble4) bench mini32_ensemble4.csv $MINI32 --variants ${ENSEMBLE4:-gdn mamba2 lightning} --ensemble 4 ;;
    x1) bench mini32_x1.csv $MINI32 --variants full gdn ;;
    mps)
      if command -v nvidia-cuda-mps-control > /dev/null; then
        export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
        mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
        if nvidia-cuda-mps-control -d; then
          bench mini32_x4_mps.csv $MINI32 --variants full gdn --concurrent 4
          echo quit | nvidia-cuda-mps-control
          cp -r "$CUDA_MPS_LOG_DIRECTORY" "$W/mps-log" 2>/dev/null
        else
          echo "MPS daemon did not start" | tee -a "$W/log.txt"
        fi
        unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
      else
        echo "no nvidia-cuda-mps-control in this image: no MPS rows" | tee -a "$W/log.txt"
      fi ;;
    x4) bench mini32_full_x4.csv $MINI32 --variants full --concurrent 4 ;;
    profile) bench mini32_full_profile.csv $MINI32 --variants full --profile ;;
    S1) bench S1_16k.csv --variants full mamba2 gdn --sizes S1 --context 16384 --batch 4 --steps 5 ;;
    S5) bench S5_16k_compiled.csv --variants full swa128 --sizes S5 --context 16384 --batch 1 --steps 5 --compile ;;
    cudagraphs) bench mini32_full_cudagraphs.csv $MINI32 --variants full --set train.compile_mode=reduce-overhead ;;
    *) echo "device_bench.sh: unknown row $1 (ensemble8 ensemble4 x1 mps x4 profile S1 S5 cudagraphs)"; exit 2 ;;
  esac
}
for r in ${ROWS:-ensemble8 x1 mps x4 profile S1 S5 cudagraphs}; do row "$r"; done
device_versions > "$W/versions.txt"
(cd "$W" && tar czf "$OUT/bench.tgz" --exclude='*/barrier' .)
for f in "$W"/*.csv; do echo "== $f"; python3 -c "
import pandas as pd, sys; d = pd.read_csv(sys.argv[1])
cols = [c for c in ('variant','size','concurrent','tokens_per_s','step_ms','mfu','peak_mem_gb','attn_backend','mixer_backend','status','kernel','time_ms','share') if c in d]
print(d[cols].head(12).to_string(index=False))" "$f"; done
echo "total t=$(( $(date +%s) - T0 ))s"
