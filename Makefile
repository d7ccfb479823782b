# hybridlab: two set-up commands for a fresh machine, `make replicate` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SCALE  ?= smoke
CORES  ?= all
RESULTS ?= results
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: venv replicate replicate-mini test lint figures report-html clean-smoke

# The virtual environment, from the pinned lock (torch 2.13.0 CPU build here; a GPU machine keeps its own torch).
$(BIN)/.installed: pyproject.toml envs/requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r envs/requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

venv: $(BIN)/.installed

## replicate: run the whole DAG at the smoke scale (or SCALE=mini on a GPU machine); figures + report in paper/
replicate: venv
	$(BIN)/snakemake --cores $(CORES) --config scale=$(SCALE)
	@echo "report: paper/$(SCALE)/report.md"

replicate-mini:
	$(MAKE) replicate SCALE=mini

## test: the whole test suite (unit, integration smoke DAG, kernels under the Triton interpreter, reliability)
test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check src tests kernels workflow
	$(BIN)/snakemake --lint

## figures: rebuild every figure, table and the report from the tables in RESULTS/SCALE (no training, no torch)
figures: venv
	$(BIN)/snakemake --cores 1 figures_only --config scale=$(SCALE) results_dir=$(RESULTS)

clean-smoke:
	rm -rf results/smoke paper/smoke

## lock: regenerate envs/requirements.lock from the current venv
lock:
	(echo "# Pinned environment for hybridlab (pip freeze of a working venv, Python 3.11, CPU). Regenerate with"; \
	 echo "# 'make lock'. torch 2.13.0 is the CPU build on CI machines; the GPU image keeps its own torch 2.11."; \
	 $(BIN)/python -m pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+cpu/torch==\1/') > envs/requirements.lock
