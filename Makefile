# hybridlab: two set-up commands for a fresh machine, `make replicate` and `make test`; `make` alone lists every
# target (each documented by its `## target: what it does` line).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SCALE  ?= smoke
CORES  ?=
RESULTS ?= results
PAPER  ?= paper
# A machine whose Python already holds the environment (a lent GPU image with the wheels installed) sets
# NO_VENV=1: the targets then use the snakemake on PATH instead of building .venv.
NO_VENV ?=
SNAKEMAKE ?= $(if $(NO_VENV),snakemake,$(BIN)/snakemake)
# The Snakemake profile: profiles/default (one machine; Snakemake would find it by itself), or e.g.
# PROFILE=profiles/slurm to run the same targets on a SLURM cluster (docs/cluster.md).
PROFILE ?= profiles/default
# CORES=N caps the cores used (default: the profile's; profiles/default uses all of them).
CORES_ARG := $(if $(CORES),--cores $(CORES))
ENV_DEP := $(if $(NO_VENV),,venv)
HYBRIDLAB ?= $(if $(NO_VENV),hybridlab,$(BIN)/hybridlab)
# GPU jobs per card (evaluation and analysis jobs share a card; see workflow/scripts/gpu_lock.py) and training
# jobs per card: 2, of which one trains while the other compiles on the CPU (HYBRIDLAB_TRAIN_LOCK: one card's
# trainings take turns; processes time-slicing one GPU train slower together than one alone).
NGPU ?= $(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || echo 0)
# replicate-mini under CUDA MPS (workflow/scripts/with_mps.sh: a daemon of its own for the run): 4 trainings and
# 6 GPU jobs a card side by side, no training lock (measured faster on an H200: results/mini/README.md).
# MPS=auto: when nvidia-cuda-mps-control is on PATH (without MPS if its daemon will not start); MPS=1: always
# (fails without it); MPS=0: never.
MPS ?= auto
USE_MPS := $(if $(filter 0,$(MPS)),,$(if $(filter 1,$(MPS)),1,$(if $(shell command -v nvidia-cuda-mps-control 2>/dev/null),1,)))
ifeq ($(USE_MPS),1)
JOBS_PER_GPU ?= 6
TRAIN_PER_GPU ?= 4
TRAIN_LOCK ?=
endif
MPS_WRAP := $(if $(USE_MPS),workflow/scripts/with_mps.sh $(if $(filter 1,$(MPS)),,--or-without),)
JOBS_PER_GPU ?= 4
TRAIN_PER_GPU ?= 2
# One card's trainings take turns through this lock; TRAIN_LOCK= (empty) lets TRAIN_PER_GPU trainings share the
# card at once (e.g. under CUDA MPS, which runs their kernels side by side: workflow/scripts/device_mini.sh MPS=1).
TRAIN_LOCK ?= $${TMPDIR:-/tmp}/hybridlab-train-{gpu}.lock
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: help venv replicate replicate-mini replicate-grid test lint docs figures report-html clean-smoke lock
.DEFAULT_GOAL := help

## help: list the targets (variables: SCALE=smoke, RESULTS=results, PAPER=paper, CORES=all)
help:
	@echo "make TARGET [SCALE=smoke|mini|...] [RESULTS=results] [PAPER=paper]   (hybridlab --help: the CLI)"
	@sed -n 's/^## \([^:]*\): \(.*\)/  \1\t\2/p' $(MAKEFILE_LIST) | expand -t 18

# The virtual environment, from the pinned lock (torch 2.13.0 CPU build here; a GPU machine keeps its own torch).
$(BIN)/.installed: pyproject.toml envs/requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r envs/requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

## venv: the virtual environment .venv from the pinned lock (every other target makes it when needed)
venv: $(BIN)/.installed

## replicate: run the whole DAG at the smoke scale (or SCALE=mini on a GPU machine); figures + report in paper/
replicate: $(ENV_DEP)
	$(SNAKEMAKE) --workflow-profile $(PROFILE) $(CORES_ARG) --config scale=$(SCALE) results_dir=$(RESULTS) paper_dir=$(PAPER)
	@echo "report: $(PAPER)/$(SCALE)/report.md"

# A one-GPU-machine scale's DAG on this machine's GPUs ($(1): the scale), with the slots and MPS set above.
define GPU_DAG
	@test "$(NGPU)" -gt 0 || { echo "$@ needs a GPU (nvidia-smi lists none)"; exit 2; }
	HYBRIDLAB_JOBS_PER_GPU=$(JOBS_PER_GPU) HYBRIDLAB_TRAIN_LOCK=$(TRAIN_LOCK) \
	  $(MPS_WRAP) $(SNAKEMAKE) --workflow-profile $(PROFILE) $(CORES_ARG) \
	  --resources gpu=$$(( $(NGPU) * $(JOBS_PER_GPU) )) train=$$(( $(NGPU) * $(TRAIN_PER_GPU) )) \
	  --config scale=$(1) results_dir=$(RESULTS) paper_dir=$(PAPER)
	@echo "report: $(PAPER)/$(1)/report.md"
endef

## replicate-mini: the mini scale on this machine's GPUs (888 s on one H200 under CUDA MPS; results/mini/README.md)
replicate-mini: $(ENV_DEP)
	$(call GPU_DAG,mini)

## replicate-grid: the one-GPU scaling grid (scale mini_grid: Fig. 2 and C1 off the grid) on this machine's GPUs
replicate-grid: $(ENV_DEP)
	$(call GPU_DAG,mini_grid)

## test: the whole test suite (unit, integration smoke DAG, kernels under the Triton interpreter, reliability)
test: venv
	$(BIN)/python -m pytest -q

## lint: ruff on the code, snakemake --lint on the workflow
lint: venv
	$(BIN)/ruff check src tests kernels workflow
	$(BIN)/snakemake --lint

## docs: regenerate docs/config.md (every config key) from src/hybridlab/settings.py and the composed configs
docs: venv
	$(BIN)/python -m hybridlab.config_doc docs/config.md

## figures: rebuild every figure, table and the report from the tables in RESULTS/SCALE (no training, no torch);
## the new paper/SCALE/ replaces the old one only when complete (Snakemake would delete the old outputs first)
figures: $(ENV_DEP)
	mkdir -p '$(RESULTS)/$(SCALE)/logs'
	$(HYBRIDLAB) figures --scale '$(SCALE)' --tables '$(RESULTS)/$(SCALE)/tables' --out '$(PAPER)/$(SCALE)' \
	  > '$(RESULTS)/$(SCALE)/logs/figures_only.log' 2>&1 || { tail -n 20 '$(RESULTS)/$(SCALE)/logs/figures_only.log'; exit 1; }
	$(HYBRIDLAB) report-index --paper '$(PAPER)'

## report-html: figures, then the browsable Snakemake report of them: PAPER/SCALE/snakemake_report.html
report-html: figures
	$(SNAKEMAKE) --cores 1 --config scale=$(SCALE) results_dir=$(RESULTS) paper_dir=$(PAPER) figures_only=true \
	  --report $(PAPER)/$(SCALE)/snakemake_report.html
	@echo "report: $(PAPER)/$(SCALE)/snakemake_report.html"

## clean-smoke: delete the smoke scale's results and paper folders
clean-smoke:
	rm -rf $(RESULTS)/smoke $(PAPER)/smoke

## lock: regenerate envs/requirements.lock from the current venv
lock:
	(echo "# Pinned environment for hybridlab (pip freeze of a working venv, Python 3.11, CPU). Regenerate with"; \
	 echo "# 'make lock'. torch 2.13.0 is the CPU build on CI machines; the GPU image keeps its own torch 2.11."; \
	 $(BIN)/python -m pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+cpu/torch==\1/') > envs/requirements.lock
