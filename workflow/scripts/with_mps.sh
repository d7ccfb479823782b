#!/usr/bin/env bash
# Run a command with a CUDA MPS daemon of its own: started here (private pipe and log folders), stopped when the
# command ends, whatever its exit. Under MPS the kernels of several processes on one card run side by side
# instead of taking turns (the mini DAG's trainings: results/benchmarks/2026-12-01_h200_mechanism).
# Usage: workflow/scripts/with_mps.sh [--or-without] COMMAND [ARGS...]
#   --or-without: if the daemon cannot start (no permission, a GPU in a mode that refuses it), warn and run the
#   command without MPS instead of failing (make replicate-mini with MPS=auto; MPS=1 insists).
set -u
fallback=
if [ "${1:-}" = --or-without ]; then fallback=1; shift; fi
if ! command -v nvidia-cuda-mps-control > /dev/null; then
  echo "with_mps.sh: nvidia-cuda-mps-control is not on PATH (CUDA MPS needs the NVIDIA driver's tools); run with" \
       "MPS=0 to train one job at a time instead" >&2
  exit 2
fi
base=$(mktemp -d "${TMPDIR:-/tmp}/hybridlab-mps.XXXXXX")
export CUDA_MPS_PIPE_DIRECTORY="$base/pipe" CUDA_MPS_LOG_DIRECTORY="$base/log"
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
if ! nvidia-cuda-mps-control -d; then
  if [ -n "$fallback" ]; then
    echo "with_mps.sh: the MPS daemon did not start (logs: $CUDA_MPS_LOG_DIRECTORY); running without MPS" >&2
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    exec "$@"
  fi
  echo "with_mps.sh: the MPS daemon did not start (logs: $CUDA_MPS_LOG_DIRECTORY); run with MPS=0" >&2
  exit 2
fi
stop() { echo quit | nvidia-cuda-mps-control; }
trap stop EXIT
echo "with_mps.sh: CUDA MPS daemon started (pipe $CUDA_MPS_PIPE_DIRECTORY)" >&2
"$@"
