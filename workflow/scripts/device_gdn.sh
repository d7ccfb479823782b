#!/usr/bin/env bash
# Check the Gated DeltaNet hybrid's training speed against Lightning's on this GPU, then (if it is within
# MIN_RATIO of it) run its mini runs through the DAG. Usage: MIN_RATIO=0.3 DAG_TIMEOUT=450 bash <this>
set -uo pipefail
source workflow/scripts/device_env.sh
python3 -m hybridlab.cli benchmark --variants lightning gdn --sizes S1 --context 4096 --batch 4 --steps 5 \
  --set model.mixer_backend=torch --out "$OUT/bench_gdn_S1_4k.csv" 2>&1 | grep -v Warning | tail -4
ok=$(python3 -c "
import pandas as pd; t = pd.read_csv('$OUT/bench_gdn_S1_4k.csv').set_index('variant')['tokens_per_s']
print(int(t['gdn'] >= ${MIN_RATIO:-0.3} * t['lightning']))")
if [ "$ok" = 1 ]; then
  rm -rf results/mini/tables
  bash workflow/scripts/device_mini.sh 'variants=[gdn]'
else
  echo "gdn too slow for the mini DAG in this call; skipped"
fi
