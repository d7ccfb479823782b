"""Every per-run evaluation and analysis of several runs in one process (`hybridlab evaluate-group`).

The per-run stages (evaluate, receptive, analyze, probe, gradinf) are one process each: at the mini scale that
is 300 processes, each importing torch, setting up CUDA and reading the data folder before a second or two of GPU
work (measured on the H200, 2026-12-01: about 17 s a job beside a training, 81 jobs in 712 s on two card slots).
This runs all of them for the seeds of one variant in one process. Each run's tables are exactly what the single
stages write: the same functions, the same files (analysis/schemas.py RUN_FILES) in the same run folders.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from hybridlab.analysis.schemas import RUN_FILES
from hybridlab.io import write_table

log = logging.getLogger("hybridlab")
ANALYZE_TABLES = ("heads", "trajectory", "traced", "onset", "masking")


def evaluate_one(cfg: DictConfig, data_dir: str | Path, run_dir: str | Path) -> dict[str, Path]:
    """Every per-run table of one run, written to its folder; returns the paths by table kind."""
    from hybridlab.analysis.analyze import analyze_run
    from hybridlab.analysis.gradinf import gradinf_run
    from hybridlab.analysis.probe import probe_run
    from hybridlab.analysis.receptive import receptive_run
    from hybridlab.evals.evaluate import evaluate_run

    run_dir = Path(run_dir)
    tables = {"eval": evaluate_run(cfg, data_dir, run_dir), "receptive": receptive_run(cfg, data_dir, run_dir),
              **analyze_run(cfg, data_dir, run_dir), "probe": probe_run(cfg, data_dir, run_dir),
              "gradinf": gradinf_run(cfg, data_dir, run_dir)}
    missing = set(RUN_FILES) - set(tables)
    if missing:
        raise AssertionError(f"evaluate_one: no table for {sorted(missing)}")
    paths = {}
    for kind, name in RUN_FILES.items():
        paths[kind] = run_dir / name
        write_table(paths[kind], tables[kind])
    return paths


def evaluate_group(cfgs: list[DictConfig], data_dir: str | Path, run_dirs: list[str | Path]) -> list[dict]:
    """`evaluate_one` for each (config, run folder), one after another; logs one line per run."""
    if len(cfgs) != len(run_dirs):
        raise ValueError(f"evaluate_group: {len(cfgs)} configs for {len(run_dirs)} run folders")
    out = []
    for i, (cfg, run_dir) in enumerate(zip(cfgs, run_dirs, strict=True)):
        started = time.perf_counter()
        out.append(evaluate_one(cfg, data_dir, run_dir))
        log.info("evaluated %d/%d (%s seed %d) in %.0f s", i + 1, len(cfgs), cfg.variant.name, int(cfg.seed),
                 time.perf_counter() - started)
    return out
