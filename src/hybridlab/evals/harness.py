"""`hybridlab lm-eval`: lm-evaluation-harness tasks on a run's checkpoints, as a tidy table (lmeval.csv).

What runs comes from eval.lm_eval (conf/eval/default.yaml): `run` names suites of eval.lm_eval.suites and/or
lm-eval task names; a suite is a label, the tasks it averages with the metric read from each, and task metadata
(RULER's max_seq_lengths). The documented suites:
  short_avg   "ShortAvg": 19 zero-shot short-context tasks. The paper does not list its 19; these are the
              common zero-shot set (project choice), each with its usual metric (acc or acc_norm)
  ruler       "RULER": lm-eval's 13 RULER tasks at 16K and 32K (string_match_all, in [0, 1])
  ruler_niah  "RULER-NIAH": the 8 needle-in-a-haystack tasks of RULER
  longbench   "LongBench": the 16 English tasks of LongBench (each task's own score), at the adapter's
              max_length (the training context unless eval.lm_eval.max_length)
Tasks resolve from eval.lm_eval.include_path (a folder of task YAMLs) and, unless every task is found there,
lm-eval's own. The model is scored through evals/lm_adapter.py at the final checkpoint (every checkpoint with
eval.lm_eval.all_checkpoints), with the data folder's tokenizer (or the HF folder's own, for an HF --run).

Output columns LMEVAL_COLUMNS (analysis/schemas.py), one row per (checkpoint, task, metric, filter, length):
  task, metric, filter   lm-eval's names ("acc", "none"); RULER's per-length metrics become metric "score"
                         with `length` the sequence length (lengths it did not run, reported as -1, are dropped)
  length                 the evaluated sequence length (RULER), else the adapter's max_length
  value, stderr          lm-eval's value and standard error (NaN when it gives none)
plus, per suite, rows task = the suite's label, metric "suite_mean", filter "", value = the mean over its tasks
of the named metric at that length (NaN if one is missing).
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from hybridlab.analysis.schemas import LMEVAL_COLUMNS

log = logging.getLogger("hybridlab")


def _config_error(key: str, value, allowed: str):
    from hybridlab.config import ConfigError

    return ConfigError(key, value, allowed)


def plan(lm_cfg) -> tuple[list[str], dict[str, dict], dict]:
    """(task names, the suites asked for, merged task metadata) of eval.lm_eval."""
    suites_cfg = OmegaConf.to_container(lm_cfg.suites, resolve=True) if lm_cfg.get("suites") else {}
    tasks, suites = [], {}
    metadata = OmegaConf.to_container(lm_cfg.metadata, resolve=True) if lm_cfg.get("metadata") else {}
    for name in lm_cfg.get("run") or []:
        if name in suites_cfg:
            suite = suites_cfg[name]
            suites[name] = suite
            tasks += [t for t in suite["tasks"] if t not in tasks]
            for k, v in (suite.get("metadata") or {}).items():
                metadata.setdefault(k, v)
        elif name not in tasks:
            tasks.append(name)
    if not tasks:
        raise _config_error("eval.lm_eval.run", list(lm_cfg.get("run") or []),
                            f"a non-empty list of suites ({', '.join(suites_cfg)}) and/or lm-eval task names")
    return tasks, suites, metadata


def task_manager(tasks: list[str], include_path: str | None):
    """lm-eval's TaskManager: the include_path alone when it defines every task (fast, offline), else with
    lm-eval's own tasks too; an unknown task is an error naming it."""
    from lm_eval.tasks import TaskManager

    if include_path:
        path = Path(include_path).expanduser()
        if not path.is_dir():
            raise _config_error("eval.lm_eval.include_path", include_path, "null or a folder of task YAML files")
        local = TaskManager(include_path=str(path), include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    manager = TaskManager(include_path=str(Path(include_path).expanduser()) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise _config_error("eval.lm_eval.run", unknown, "suites of eval.lm_eval.suites or task names lm-eval knows "
                            "(`lm_eval ls tasks`, or task YAMLs in eval.lm_eval.include_path)")
    return manager


def result_rows(results: dict, max_length: int) -> list[dict]:
    """lm-eval's results dict as rows (task, metric, filter, length, value, stderr); see the module docstring."""
    rows = []
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or not isinstance(value, int | float):
                continue
            metric, filt = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            length = max_length
            if metric.isdigit():  # RULER's per-length metrics
                if value == -1:
                    continue
                metric, length = "score", int(metric)
            rows.append({"task": task, "metric": metric, "filter": filt, "length": length, "value": float(value),
                         "stderr": float(stderr) if isinstance(stderr, int | float) else math.nan})
    return rows


def suite_rows(rows: list[dict], suites: dict[str, dict]) -> list[dict]:
    """Per suite and length, the mean over its tasks of each task's named metric (first filter found)."""
    out = []
    for suite in suites.values():
        lengths = sorted({r["length"] for r in rows if r["task"] in suite["tasks"]})
        for length in lengths:
            values = []
            for task, metric in suite["tasks"].items():
                found = [r["value"] for r in rows if r["task"] == task and r["metric"] == metric
                         and r["length"] == length]
                values.append(found[0] if found else math.nan)
            out.append({"task": suite["label"], "metric": "suite_mean", "filter": "", "length": length,
                        "value": float(sum(values) / len(values)), "stderr": math.nan})
    return out


def evaluate_tasks(lm, tasks: list[str], suites: dict[str, dict], metadata: dict, lm_cfg) -> list[dict]:
    """Rows of one model (an lm-eval LM, here HybridLabLM) on the tasks, suite means included."""
    from lm_eval import simple_evaluate

    manager = task_manager(tasks, lm_cfg.get("include_path"))
    with tempfile.TemporaryDirectory(prefix="hybridlab_tok_") as tok_dir:
        lm.tokenizer.save_pretrained(tok_dir)  # RULER builds its inputs with the model's tokenizer, by path
        results = simple_evaluate(model=lm, tasks=tasks, num_fewshot=lm_cfg.get("num_fewshot"),
                                  limit=lm_cfg.get("limit"), task_manager=manager, log_samples=False,
                                  bootstrap_iters=int(lm_cfg.get("bootstrap_iters", 1000)),
                                  metadata={"tokenizer": tok_dir, **metadata})
    rows = result_rows(results, lm.max_length)
    return rows + suite_rows(rows, suites)


def run_tokenizer(cfg, data_dir: str | Path, run_dir: str | Path, manifest: dict):
    """An HF --run folder's own tokenizer when it has one, else the data folder's."""
    from hybridlab.evals.hf_model import hf_model_dirs
    from hybridlab.export.tokenizer import data_tokenizer

    hf = hf_model_dirs(run_dir)
    if hf and any((hf[-1] / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(hf[-1]), local_files_only=True)
    return data_tokenizer(cfg, data_dir, manifest)


def lm_eval_run(cfg, data_dir: str | Path, run_dir: str | Path) -> pd.DataFrame:
    from hybridlab.data.shards import read_manifest
    from hybridlab.evals.checkpoints import pick_device, selected_checkpoints
    from hybridlab.evals.lm_adapter import HybridLabLM

    lm_cfg = cfg.eval.lm_eval
    tasks, suites, metadata = plan(lm_cfg)
    manifest = read_manifest(data_dir)
    device = pick_device(cfg)
    tokenizer = run_tokenizer(cfg, data_dir, run_dir, manifest)
    max_length = int(lm_cfg.get("max_length") or manifest["context"])
    every = bool(lm_cfg.get("all_checkpoints", False))
    rows = []
    for model, info in selected_checkpoints(cfg, run_dir, manifest["vocab_size"], device, every):
        lm = HybridLabLM(model, tokenizer, max_length, int(lm_cfg.batch_size), int(lm_cfg.max_gen_toks), device)
        log.info("lm-eval: %d tasks at step %s", len(tasks), info["step"])
        base = {"variant": cfg.variant.name, "seed": int(cfg.seed), **info}
        rows += [{**base, **r} for r in evaluate_tasks(lm, tasks, suites, metadata, lm_cfg)]
    return pd.DataFrame(rows, columns=list(LMEVAL_COLUMNS))
