#!/usr/bin/env bash
# The noise reference for the DDP comparison (device_bench.sh): the same one-GPU mini run with another
# micro-batch split (16 x 2 accumulation instead of 32), i.e. the same global batch summed in another order,
# then the original one-GPU configuration again (run-to-run nondeterminism). Usage: bash <this>
set -uo pipefail
source workflow/scripts/device_env.sh
python3 -m hybridlab.cli prepare-data --scale mini --out /tmp/data > /dev/null 2>&1
ARGS="--scale mini --variant full --seed 0 --data /tmp/data train.steps=400 train.warmup_steps=40 train.log_every=10
      train.n_checkpoints=1 train.devices=1"
for run in micro16:16 repeat32:32; do
  name=${run%%:*}
  python3 -m hybridlab.cli train --out /tmp/$name $ARGS train.micro_batch_size=${run##*:} > /tmp/$name.log 2>&1
  echo "$name exit $?"; cp /tmp/$name/metrics.csv "$OUT/ddp_noise_${name}_metrics.csv"
done
