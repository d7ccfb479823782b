# Sourced (from the repo root) by the device_*.sh scripts: the environment on a lent GPU machine whose image
# lacks Snakemake, Hydra and this package and reaches no package index. Installs the wheels carried in .whl/
# when they are missing, puts src/ and kernels/ on the path, writes `hybridlab` and `snakemake` wrappers, and
# sets what every run there wants (unbuffered output, no progress bars, a kept Triton cache, NVLink multicast
# off for NCCL). Defines `device_versions`, one line naming the software and the card.
# Leave pulp's wheel (16 MB) out of .whl/: the checkout plus wheels must stay under the device's 64 MiB, and
# without pulp Snakemake says "Falling back to greedy scheduler because no ILP solver is found" and runs on
# (checked on the CPU with pulp made unimportable).
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HYBRIDLAB_PROGRESS=0 TRITON_CACHE_DIR=/tmp/triton-cache
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if ! python3 -c "import snakemake, hydra" 2>/dev/null; then
  # A second call on the same machine finds /tmp/site in place (and jobs of a detached DAG importing from it):
  # never reinstall over it.
  if [ ! -d /tmp/site/snakemake ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
      || { echo "wheel install failed"; exit 1; }
  fi
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD/kernels:$PWD
fi
mkdir -p /tmp/bin
printf '#!/bin/sh\nexec python3 -m hybridlab.cli "$@"\n' > /tmp/bin/hybridlab
printf '#!/bin/sh\nexec python3 -m snakemake "$@"\n' > /tmp/bin/snakemake
chmod +x /tmp/bin/hybridlab /tmp/bin/snakemake
export PATH=/tmp/bin:$PATH

device_versions() {
  python3 - <<'PY'
import platform, torch, triton
try:
    import lightning as L
except ImportError:
    import pytorch_lightning as L
print(f"python {platform.python_version()} torch {torch.__version__} triton {triton.__version__} "
      f"lightning {L.__version__} cuda {torch.version.cuda} gpu {torch.cuda.get_device_name()}")
PY
}
