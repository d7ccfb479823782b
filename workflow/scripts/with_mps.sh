#!/usr/bin/env bash
# Run a command with a CUDA MPS daemon of its own: started here (private pipe and log folders), stopped when the
# command ends, whatever its exit. Under MPS the kernels of several processes on one card run side by side
# instead of taking turns (the mini DAG's trainings: results/benchmarks/2026-12-01_h200_mechanism).
# Usage: workflow/scripts/with_mps.sh COMMAND [ARGS...]   (make replicate-mini wraps Snakemake in it, MPS=auto)
set -u
if ! command -v nvidia-cuda-mps-control > /dev/null; then
  echo "with_mps.sh: nvidia-cuda-mps-control is not on PATH (CUDA MPS needs the NVIDIA driver's tools); run with" \
       "MPS=0 to train one job at a time instead" >&2
  exit 2
fi
base=$(mktemp -d "${TMPDIR:-/tmp}/hybridlab-mps.XXXXXX")
export CUDA_MPS_PIPE_DIRECTORY="$base/pipe" CUDA_MPS_LOG_DIRECTORY="$base/log"
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
if ! nvidia-cuda-mps-control -d; then
  echo "with_mps.sh: the MPS daemon did not start (logs: $CUDA_MPS_LOG_DIRECTORY); run with MPS=0" >&2
  exit 2
fi
stop() { echo quit | nvidia-cuda-mps-control; }
trap stop EXIT
echo "with_mps.sh: CUDA MPS daemon started (pipe $CUDA_MPS_PIPE_DIRECTORY)" >&2
"$@"
