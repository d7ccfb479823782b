#!/usr/bin/env bash
# For a lent one-GPU machine whose image lacks Snakemake and Hydra and reaches no package index: the mini
# replication from an empty results folder, `make replicate-mini NO_VENV=1` (the image's Python with the wheels
# carried in .whl/), timed. A command there may run 10 minutes and the DAG takes longer, so it runs detached:
#   start  copies the checkout to /tmp/hl (so that a later call's copy of the working tree cannot touch the
#          running DAG), launches the DAG there from an empty results folder in its own session, then waits;
#   wait   waits again (call it right after `start` returns, while the machine is still warm).
# Each returns before WAIT seconds (default 570); the one that sees the DAG end packs the tables, logs, the
# per-run CSVs, the report and its figures into $OUT/mini.tgz and prints the wall time.
# FINAL=1 (the last call the device time allows): at its deadline, pack what the running DAG has written so far.
# SCALE=mini_grid runs `make replicate-grid` (the scaling grid) the same way; another SCALE runs that scale's DAG
# with the same GPU and training slots.
# MPS=N runs under a CUDA MPS daemon of the run's own (workflow/scripts/with_mps.sh, through `make replicate-mini
# MPS=1`) with N trainings sharing the card at once (no training lock); without MPS, one training at a time.
# Usage (repo root): [SCALE=S] bash workflow/scripts/device_mini.sh start   then   ... wait
set -uo pipefail
T0=$(date +%s)
export SCALE=${SCALE:-mini}
source workflow/scripts/device_env.sh
W=/tmp/mini_run; mkdir -p "$W"
R=/tmp/hl
if [ "$SCALE" = mini ] || [ "$SCALE" = mini_grid ]; then
  target=replicate-mini; [ "$SCALE" = mini ] || target=replicate-grid
  RUN="make $target NO_VENV=1${MPS:+ MPS=1 TRAIN_PER_GPU=$MPS JOBS_PER_GPU=$(( MPS + 2 ))}"
  [ -n "${MPS:-}" ] || RUN="$RUN MPS=0"
else
  RUN="env HYBRIDLAB_JOBS_PER_GPU=4 HYBRIDLAB_TRAIN_LOCK=/tmp/hybridlab-train-{gpu}.lock snakemake --cores all \
    --resources gpu=4 train=2 --config scale=$SCALE"
  [ -z "${MPS:-}" ] || RUN="workflow/scripts/with_mps.sh $RUN"
fi
if [ "${1:-}" = start ]; then
  rm -rf "$W"/* "$R"; mkdir -p "$R"
  tar cf - --exclude=./.whl --exclude=./.git --exclude="./results/$SCALE" --exclude="./paper/$SCALE" . | tar xf - -C "$R"
  nvidia-smi -L > "$W/gpus.txt"; device_versions > "$W/versions.txt"
  date +%s > "$W/t_start"
  setsid bash -c "( while sleep 15; do echo \"t=\$(( \$(date +%s) - $(cat "$W/t_start") ))s \$(nvidia-smi \
      --query-gpu=utilization.gpu,memory.used --format=csv,noheader)\"; done ) > $W/nvidia_smi.log 2>&1 &
    export PYTHONPATH=/tmp/site:$R/src:$R/kernels:$R; cd $R && $RUN > $W/make.log 2>&1; echo \$? > $W/exit_code; \
    date +%s > $W/t_end" \
    > /dev/null 2>&1 < /dev/null &
fi
deadline=$(( T0 + ${WAIT:-570} ))
while [ ! -f "$W/t_end" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 5; done
start=$(cat "$W/t_start")
if [ ! -f "$W/t_end" ]; then
  echo "DAG still running at t=$(( $(date +%s) - start ))s; $(grep -c 'Finished jobid' "$W/make.log") jobs done"
  tail -3 "$W/make.log"
  [ -n "${FINAL:-}" ] || exit 0
  echo "FINAL: packing the partial results"
else
  echo "DAG exit $(cat "$W/exit_code") after $(( $(cat "$W/t_end") - start )) s ($RUN)"
fi
pkill -f "nvidia-smi --query-gpu" 2>/dev/null
cd "$R"
tar czf "$OUT/$SCALE.tgz" --ignore-failed-read -C /tmp mini_run -C "$R" $(ls -d "results/$SCALE/tables" \
  "results/$SCALE/logs" "results/$SCALE/benchmarks" "results/$SCALE/data/manifest.json" "paper/$SCALE" 2>/dev/null) $(ls results/"$SCALE"/runs/*/*/*/*.csv \
  results/"$SCALE"/runs/*/*/*/*.json results/"$SCALE"/runs/*/*/*/budget*/*.csv 2>/dev/null)
ls -la "$OUT"; tail -5 "$W/make.log"
# Time left before BENCH_DEADLINE seconds after the DAG's start: the throughput rows of issue 15 that need a card
# of their own (S1 and S5 shapes at 16K), each cut at the deadline.
# Also bounded by this call's own limit (CALL_LIMIT seconds after this call began, default 590).
left=$(( ${BENCH_DEADLINE:-0} - ($(date +%s) - start) ))
call_left=$(( T0 + ${CALL_LIMIT:-590} - $(date +%s) ))
[ "$call_left" -lt "$left" ] && left=$call_left
if [ "$left" -gt 90 ]; then
  B=/tmp/bench_after; mkdir -p "$B"
  timeout $(( left / 2 )) python3 -m hybridlab.cli benchmark --out "$B/S1_16k.csv" --variants full mamba2 gdn \
    --sizes S1 --context 16384 --batch 4 --steps 5 > "$B/log.txt" 2>&1
  left=$(( ${BENCH_DEADLINE:-0} - ($(date +%s) - start) ))
  call_left=$(( T0 + ${CALL_LIMIT:-590} - $(date +%s) ))
  [ "$call_left" -lt "$left" ] && left=$call_left
  [ "$left" -gt 40 ] && timeout "$left" python3 -m hybridlab.cli benchmark --out "$B/S5_16k_compiled.csv" \
    --variants full swa128 --sizes S5 --context 16384 --batch 1 --steps 5 --compile >> "$B/log.txt" 2>&1
  device_versions > "$B/versions.txt"
  tar czf "$OUT/bench_after.tgz" -C /tmp bench_after
  cat "$B"/*.csv
fi
