"""What each job of the workflow asks its executor for (CPU threads, memory, wall time), from the scale's config
and the model size. The rules (workflow/rules/*.smk) take `threads:` and `resources:` from `job_size`; the GPUs
are the rules' own (`gpu`, one card per job on GPU scales); a profile may override any of them per rule
(`set-threads`, `set-resources`). Torch-free: the Snakefile imports it for every dry run.

The numbers are generous upper bounds, not predictions:
  model    parameters and FLOPs of the size with the Full layout (the hybrids are within 0.3% in parameters and
           cheaper in FLOPs: SWA and recurrent layers do less than full attention), counted from the shapes.
  memory   the process's baseline (Python, torch, Lightning; on a GPU node also the CUDA context and the compile
           workers, and 1 GB per data-loader worker) plus the model in host memory: 16 bytes per parameter when
           training (weights, two optimizer moments, the copy a checkpoint save makes), 8 otherwise; on a CPU also
           one micro-batch's activations. Times 1.5, in MB rounded up to 512.
  runtime  start-up plus the work at a planning throughput: the FLOPs (training: 3x the forward) at PLAN_MFU of
           the GPU's peak or at CPU_FLOPS per CPU thread, and at least STEP_FLOOR_S per optimizer step on a GPU
           (small models are launch-bound). Times 2, in minutes, at least MIN_RUNTIME and at most MAX_RUNTIME.
           A training longer than MAX_RUNTIME runs in slices of it: it stops before its time limit with a
           resume point and is requeued (train/preempt.py).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from omegaconf import DictConfig

MIN_RUNTIME = 10  # minutes
MAX_RUNTIME = 24 * 60  # minutes: a common partition limit; longer trainings run in slices of this
PLAN_MFU = 0.10  # of the GPU's peak: below every H200 row at 16K in results/benchmarks/2026-11-27_h200 but GDN's
PEAK_FLOPS = 989e12  # H100/H200 dense bf16
CPU_FLOPS = 4e9  # per thread: half what the smoke training did on the loaded 2-core CI machine (docs/cluster.md)
STEP_FLOOR_S = 0.05  # seconds per optimizer step on a GPU, whatever the model's size
START_S = {"cpu": 60, "gpu": 600}  # imports, data, CUDA and compile warm-up, checkpoint writes
BASE_MB = {"cpu": 1000, "gpu": 6000}  # the process before any model state
WORKER_MB = 1000  # per data-loader worker process
MARGIN_MEM, MARGIN_TIME = 1.5, 2.0

# The kinds of job the rules declare; every other rule (tables, figures) is small.
KINDS = ("prepare_data", "train", "train_branch", "evaluate", "evaluate_branch", "receptive", "analyze", "probe",
         "gradinf", "evaluate_group", "lm_eval", "small")
# evaluate_group (eval.group_runs) makes every per-run table of its runs in one process: these kinds' work.
GROUPED_KINDS = ("evaluate", "receptive", "analyze", "probe", "gradinf")
# lm_eval's work depends on the lm-eval tasks, unknown until the harness loads them: a fixed allowance on the
# final checkpoint (a profile's set-resources says more for long task lists, e.g. RULER at 16K).
LM_EVAL_S = 4 * 3600


@dataclass(frozen=True)
class JobSize:
    threads: int
    mem_mb: int
    runtime: int  # minutes


@dataclass(frozen=True)
class ModelCost:
    """Parameters and forward FLOPs per token (at the scale's context) of a size, with the Full layout."""

    params: int  # all of them, embeddings included
    non_embedding: int
    flops_per_token: float
    activation_bytes_per_token: float


def model_cost(cfg: DictConfig) -> ModelCost:
    m, ctx = cfg.model, int(cfg.scale.context)
    d, width, layers = int(m.d_model), int(m.n_heads) * int(m.head_dim), int(m.n_layers)
    vocab = vocab_size(cfg)
    block = 4 * d * width + 3 * d * int(m.d_ff)
    non_embedding = layers * (block + 2 * d) + d
    attention = layers * 4 * width * ctx  # scores and values over the whole context: an upper bound
    return ModelCost(params=non_embedding + 2 * vocab * d, non_embedding=non_embedding,
                     flops_per_token=2 * (layers * block + vocab * d) + attention,
                     activation_bytes_per_token=4 * (layers * (12 * d + 3 * int(m.d_ff)) + 2 * vocab))


def vocab_size(cfg: DictConfig) -> int:
    if cfg.data.source == "synthetic":
        from hybridlab.data.synthetic import CorpusSpec

        return CorpusSpec.from_config(cfg.data).vocab.size
    return int(cfg.data.tokenizer.vocab_size)


def training_steps(cfg: DictConfig, cost: ModelCost) -> int:
    """train.steps, or the steps of the token budget k*N (train.budget_k, per size scale.budget_k_by_size)."""
    t = cfg.train
    k = cfg.scale.get("budget_k_by_size", {}).get(cfg.model.name, t.budget_k)
    if k is None:
        return int(t.steps)
    return -(-int(k * cost.non_embedding) // (int(t.batch_size) * int(cfg.scale.context)))


def n_checkpoints(cfg: DictConfig, steps: int) -> int:
    """An upper bound on a run's trajectory checkpoints (log-spaced, every ckpt_every, budget points)."""
    t = cfg.train
    every = steps // int(t.ckpt_every) if t.get("ckpt_every") else 0
    return int(t.n_checkpoints) + every + len(t.get("budgets_k") or [])


def eval_tokens(cfg: DictConfig, kind: str, checkpoints: int) -> float:
    """Tokens through the model (forward-equivalent) of one evaluation or analysis job."""
    e, ctx = cfg.eval, int(cfg.scale.context)
    lengths = sum(float(f) for f in e.niah_lengths) * ctx
    niah = int(e.niah_samples) * lengths
    if kind in ("evaluate", "evaluate_branch"):
        ruler = int(e.get("ruler_samples", 0)) * len(e.get("ruler_tasks", [])) * lengths
        return checkpoints * (int(e.val_batches) * int(e.batch_size) * ctx + niah + ruler)
    if kind == "analyze":  # head scores per checkpoint (attention kept: 2x), then masking on the final one
        masking = 2 * len(e.masking_k) * int(e.masking_draws) * int(e.niah_samples) * ctx
        return checkpoints * 2 * int(e.niah_samples) * ctx + masking
    if kind == "receptive":
        return (1 + 2 * len(e.receptive_windows)) * int(e.val_batches) * int(e.batch_size) * ctx
    if kind == "probe":
        return (checkpoints if e.get("probe_all_checkpoints") else 1) * int(e.get("probe_samples", 0)) * lengths
    if kind == "gradinf":  # a backward pass per sample: 3x
        return (checkpoints if e.get("gradinf_all_checkpoints") else 1) * 3 * int(e.gradinf_samples) * ctx
    raise ValueError(f"eval_tokens: unknown kind {kind!r}")


def _minutes(seconds: float) -> int:
    return int(min(MAX_RUNTIME, max(MIN_RUNTIME, math.ceil(MARGIN_TIME * seconds / 60))))


def _mb(megabytes: float) -> int:
    return int(math.ceil(MARGIN_MEM * megabytes / 512) * 512)


def job_size(cfg: DictConfig, kind: str, n_runs: int = 1, budget_k: float | None = None) -> JobSize:
    """The threads, memory (MB) and wall time (minutes) of one job of `kind` (KINDS): `n_runs` trainings one after
    another (train_group), `budget_k` the budget of a WSD decay branch (train_branch)."""
    if kind not in KINDS:
        raise ValueError(f"job_size: kind {kind!r}; allowed: {', '.join(KINDS)}")
    device = "cpu" if cfg.scale.accelerator == "cpu" else "gpu"
    if kind == "small":
        return JobSize(1, _mb(BASE_MB["cpu"]), MIN_RUNTIME)
    if kind == "prepare_data":
        return _prepare_size(cfg)
    cost, t = model_cost(cfg), cfg.train
    steps = training_steps(cfg, cost)
    if kind in ("train", "train_branch"):
        if kind == "train_branch":  # the decay of a branch ending at k*N tokens (or the copy of the stable end)
            steps = math.ceil(float(t.decay_frac) * -(-int(float(budget_k) * cost.non_embedding) // (
                int(t.batch_size) * int(cfg.scale.context))))
        tokens = n_runs * steps * int(t.batch_size) * int(cfg.scale.context)
        threads = 1 + int(t.num_workers) if device == "gpu" else 1
        state = 16 * cost.params
        work_s = _seconds(3 * cost.flops_per_token * tokens, device, threads, n_runs * steps)
    else:
        checkpoints = 1 if kind == "evaluate_branch" else n_checkpoints(cfg, steps)
        threads, state = 1, 8 * cost.params
        kinds = GROUPED_KINDS if kind == "evaluate_group" else (kind,)
        work_s = LM_EVAL_S if kind == "lm_eval" else n_runs * sum(
            _seconds(cost.flops_per_token * eval_tokens(cfg, k, checkpoints), device, threads, 0) for k in kinds)
    activations = 0.0 if device == "gpu" else (
        cost.activation_bytes_per_token * int(t.micro_batch_size) * int(cfg.scale.context) * 2)
    workers = WORKER_MB * int(t.num_workers) if kind.startswith("train") and device == "gpu" else 0
    mem = BASE_MB[device] + workers + (state + activations) / 2**20
    return JobSize(threads, _mb(mem), _minutes(START_S[device] + work_s))


def _seconds(flops: float, device: str, threads: int, steps: int) -> float:
    if device == "gpu":
        return max(flops / (PLAN_MFU * PEAK_FLOPS), steps * STEP_FLOOR_S)
    return flops / (CPU_FLOPS * threads)


def _prepare_size(cfg: DictConfig) -> JobSize:
    """The synthetic corpus (generated in parallel: about one process per 2M tokens, at most 16) and the eval
    sets; the real-text mix, which only concatenates the prepared groups, is one process."""
    d, ctx = cfg.data, int(cfg.scale.context)
    tokens = (int(d.n_train_seqs) + int(d.n_val_seqs)) * ctx
    if d.source != "synthetic":
        return JobSize(1, 8192, 120)
    threads = max(1, min(16, tokens // 2_000_000))
    mem = BASE_MB["cpu"] + threads * 300 + 12 * tokens / 2**20  # per-process buffers; token and distance arrays
    return JobSize(threads, _mb(mem), _minutes(60 + tokens / (1e6 * threads)))


@functools.cache
def planned_size(scale: str, overrides: tuple[str, ...], size: str, kind: str, n_runs: int = 1,
                 budget_k: float | None = None) -> JobSize:
    """`job_size` for a size of a scale (the config composed once per size): what the rules call per job."""
    return job_size(_config(scale, overrides, size), kind, n_runs, budget_k)


@functools.cache
def _config(scale: str, overrides: tuple[str, ...], size: str) -> DictConfig:
    from hybridlab.config import load_config

    return load_config(scale, "full", 0, list(overrides), size)
