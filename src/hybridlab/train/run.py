"""The training stage: one (scale, variant, seed) run from prepared shards to a run folder.

Run folder layout:
  ckpt/tokens_{N:012d}.pt   trajectory checkpoints (weights only), log-spaced in steps, named by tokens seen
  last.ckpt                 full Lightning state for resume (model, optimizer, scheduler, step, metrics rows)
  metrics.csv               step, tokens, loss, lr, tokens_per_s, mfu, peak_mem_gb, lr_<group> per parameter
                            group; rewritten after every row while the run trains
  provenance.json           resolved config, the run's identity (hybridlab.identity), git commit, package
                            versions, seed, device; a branch's budget; changes made on purpose (--allow-change)
  sessions.jsonl            one line per training session: steps from and to, how it ended, wall time, host, SLURM
                            job (a requeued or resumed run keeps its history; Snakemake empties the job's log)
  train_done.json           written last: the run is complete, and the checkpoints it wrote
  .lock                     held while the folder trains
Re-running on a folder with `last.ckpt` resumes; on a folder with `train_done.json` it does nothing; either only
when the folder's run has this run's identity (else refused before anything is written). On SIGUSR1 or SIGTERM,
or shortly before its SLURM time limit, a run saves `last.ckpt` and exits (train/preempt.py).
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import time
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from hybridlab.data.shards import load_split, read_manifest
from hybridlab.digest import load_verified
from hybridlab.identity import (
    PROVENANCE,
    check_data,
    check_resume,
    check_run,
    check_stamp,
    folder_lock,
    run_identity,
    stamp,
    train_provenance,
)
from hybridlab.io import atomic_path, read_json, write_bytes, write_json
from hybridlab.models import HybridLM, build_model
from hybridlab.train.lit import (
    RESUME_COVERED,
    LitLM,
    RunRecorder,
    SLURMEnvironment,
    TrainData,
    ckpt_name,
    fork_path,
    pl,
)
from hybridlab.train.memory import check_memory
from hybridlab.train.preempt import StopOnSignal, Stopped, slurm_deadline
from hybridlab.train.schedule import (
    Branch,
    log_spaced_checkpoints,
    merge_steps,
    tokens_per_step,
    tokens_to_steps,
    wsd_branch_plan,
)

log = logging.getLogger("hybridlab")
# Dense bf16 tensor-core peak by device name, for MFU (datasheet numbers; CPU has none).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def experiment_logger(cfg: DictConfig, run_dir: Path):
    """The Lightning logger of train.logger under RUN/logs, or False (none): a view for TensorBoard or W&B
    (offline) next to metrics.csv, which is always written. One version per run folder, resumed in place."""
    kind = cfg.train.get("logger") or "none"
    if kind == "none":
        return False
    import hashlib
    import importlib
    import importlib.util

    package = LOGGER_PACKAGES.get(kind)
    if package is not None and importlib.util.find_spec(package) is None and not (
            kind == "tensorboard" and importlib.util.find_spec("tensorboardX")):
        from hybridlab.config import ConfigError

        raise ConfigError("train.logger", kind, f"none or csv: the {package} package is not installed (pip install "
                          f"{package})")
    loggers = importlib.import_module(f"{pl.__name__}.loggers")
    save = run_dir / "logs"
    if kind == "csv":
        return loggers.CSVLogger(save, name="", version=0)
    if kind == "tensorboard":
        return loggers.TensorBoardLogger(save, name="", version=0)
    run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]  # a resumed run continues its W&B run
    return loggers.WandbLogger(save_dir=save, offline=True, id=run_id, name=str(run_dir), resume="allow")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def provenance(cfg: DictConfig) -> dict:
    versions = {"python": platform.python_version(), "torch": torch.__version__, "lightning": pl.__version__}
    return {"config": OmegaConf.to_container(cfg, resolve=True), "git_commit": git_commit(),
            "versions": versions, "seed": int(cfg.seed), "host": platform.node(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"}


def resolve_budget(cfg: DictConfig, n_params: int) -> DictConfig:
    """With train.budget_k set, the run lasts ceil(k*N / tokens per step) steps (N: non-embedding params)."""
    t = cfg.train
    k = cfg.scale.get("budget_k_by_size", {}).get(cfg.model.name, t.budget_k)
    if k is not None:
        if k <= 0:
            from hybridlab.config import ConfigError

            raise ConfigError("train.budget_k", k, "a number > 0 (tokens = k * N)")
        t.steps = tokens_to_steps(int(k * n_params), int(t.batch_size), int(cfg.scale.context))
        from hybridlab.config import check_schedule

        check_schedule(t)  # the warmup and decay fit in the steps the budget gives
    return cfg


def checkpoint_steps(cfg: DictConfig, n_params: int | None = None) -> list[int]:
    """Log-spaced trajectory steps, plus the step at which each budget point of train.budgets_k is reached."""
    steps = int(cfg.train.steps)
    log_spaced = log_spaced_checkpoints(steps, int(cfg.train.n_checkpoints), first=max(1, steps // 50))
    budgets = [tokens_to_steps(int(k * n_params), int(cfg.train.batch_size), int(cfg.scale.context))
               for k in cfg.train.budgets_k] if n_params else []
    every = list(range(int(cfg.train.ckpt_every), steps + 1, int(cfg.train.ckpt_every))) if cfg.train.ckpt_every else []
    return merge_steps(log_spaced, every, [b for b in budgets if b <= steps])


def branch_plan(cfg: DictConfig, n_params: int) -> list[Branch]:
    """The WSD scaling grid: one decay branch per budget point of train.budgets_k (schedule wsd only). Each
    branch forks from the stable run decay_frac of its length before its end and ends exactly on its budget."""
    t = cfg.train
    if t.schedule != "wsd" or not t.budgets_k:
        return []
    per_step = tokens_per_step(int(t.batch_size), int(cfg.scale.context))
    reached = [int(k * n_params) for k in t.budgets_k if -(-int(k * n_params) // per_step) <= int(t.steps)]
    if not reached:
        return []
    try:
        return wsd_branch_plan(reached, per_step, float(t.decay_frac), int(t.warmup_steps))
    except ValueError as e:  # a budget too small for the warmup, or two budgets on one step: the user's grid
        from hybridlab.config import ConfigError

        raise ConfigError("train.budgets_k", list(t.budgets_k), f"budgets whose decay branches fit the schedule "
                          f"({e})") from None


def warm_batch(vocab: int, batch: int, length: int, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    """Random tokens shaped and strided like a training step's input: `LitLM.training_step` feeds the model
    `batch[:, :-1]` of a [B, L + 1] batch, a view with row stride L + 1. Compiling on another stride (a contiguous
    [B, L]) made Dynamo compile again at the first training step (measured on the H200: every train-group's first
    run took 20-175 s longer than the others)."""
    return torch.randint(0, vocab, (batch, length + 1), device=device, generator=gen)[:, :-1]


def compile_model(model: torch.nn.Module, mode: str | None = None):
    """torch.compile with train.compile_mode (None or "default": torch's own default)."""
    return torch.compile(model, mode=None if mode in (None, "default") else str(mode))


class SharedModel:
    """One model object reused by the runs of `train_group`: built and compiled (train.compile) once; each run
    loads its own seed's initialisation into it, so it trains exactly what a fresh model of that seed would.

    `lock`: a file to hold (flock, exclusive) from the end of the compilation until `release`: on a card shared by
    several training jobs, each compiles on the CPU while another trains, but only one trains at a time (processes
    time-slicing one GPU train slower together than one alone). "{gpu}" in the path becomes the job's card
    (CUDA_VISIBLE_DEVICES), so the jobs of different cards do not wait for each other."""

    def __init__(self, lock: str | Path | None = None) -> None:
        self.model: HybridLM | None = None
        self.step_model = None
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "0").replace(",", "_") or "none"
        self.lock_path, self._lock = (None if lock is None else str(lock).replace("{gpu}", gpu)), None

    def acquire(self) -> None:
        if self.lock_path is None or self._lock is not None:
            return
        import fcntl

        started = time.perf_counter()
        Path(self.lock_path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.lock_path, "a")  # noqa: SIM115 - held until release()
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        log.info("training lock %s taken after %.0f s", self.lock_path, time.perf_counter() - started)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor drops the flock
            self._lock = None

    def take(self, fresh: HybridLM, compile_: bool, warm: tuple[torch.device, int, int] | None = None,
             mode: str | None = None) -> tuple[HybridLM, object]:
        """(model, step_model) holding `fresh`'s weights. On first use with `compile_` and `warm` (device, micro
        batch, sequence length) the compiled forward and backward are built here, before training starts, so
        that no step's time includes compilation; if compiling fails, training runs eagerly, with a warning.
        `mode`: torch.compile's mode (train.compile_mode). Later runs load their weights into the same parameter
        tensors (load_state_dict copies in place), so CUDA graphs captured on them stay valid."""
        if self.model is None:
            self.model = fresh
            self.step_model = compile_model(fresh, mode) if compile_ else fresh
            if compile_ and warm is not None:
                self._warm(*warm)
            self.acquire()
        else:
            self.model.load_state_dict(fresh.state_dict())
        return self.model, self.step_model

    def _warm(self, device: torch.device, batch: int, length: int) -> None:
        started = time.perf_counter()
        self.model.to(device).train()
        gen = torch.Generator(device=device).manual_seed(0)
        x = warm_batch(self.model.shape.vocab_size, batch, length, device, gen)
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = self.step_model(x)
            torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), x.flatten()).backward()
        except Exception as e:  # a compiler failure must not cost the run: the eager model computes the same
            log.warning("torch.compile failed (%s: %s); training eagerly", type(e).__name__, str(e).splitlines()[0])
            self.step_model = self.model
        finally:
            self.model.zero_grad(set_to_none=True)
        log.info("compiled forward and backward in %.0f s", time.perf_counter() - started)


def train(cfg: DictConfig, data_dir: str | Path, run_dir: str | Path, shared: SharedModel | None = None,
          identity: dict | None = None, branch: dict | None = None, allow: tuple[str, ...] = ()) -> dict:
    """One run from prepared shards to its run folder (module docstring); `shared` reuses a model object across
    the runs of one process (`train_group`). Before anything is written, the data folder and whatever run the
    folder holds (provenance.json, last.ckpt) are checked against this run's `identity` (default: the config's;
    a WSD branch passes its stable run's and its `branch`), except for the keys in `allow` (hybridlab.identity);
    the folder is locked while it trains."""
    run_dir = Path(run_dir)
    identity = identity or run_identity(cfg)
    check_data(data_dir, cfg, "train")
    changes = check_resume(run_dir, identity, branch, allow)
    check_memory(cfg, int(read_manifest(data_dir)["vocab_size"]))
    done = run_dir / "train_done.json"
    if done.exists():
        log.info("%s: already trained", run_dir)
        return read_json(done)
    last = run_dir / "last.ckpt"
    if last.exists():  # refuse a damaged or foreign resume point here, naming it, rather than deep inside Lightning
        state = load_verified(last, covered=RESUME_COVERED)
        check_stamp(last, state, identity, allow)
        resumed_step = int(state["global_step"])
        del state
    else:
        resumed_step = 0
    with folder_lock(run_dir):
        if done.exists():  # finished by another process meanwhile
            return read_json(done)
        return _train(cfg, data_dir, run_dir, shared, identity, branch, changes, resumed_step)


def _train(cfg: DictConfig, data_dir: str | Path, run_dir: Path, shared: SharedModel | None, identity: dict,
           branch: dict | None, changes: list[dict], resumed_step: int) -> dict:
    last = run_dir / "last.ckpt"
    manifest = read_manifest(data_dir)
    tokens, _ = load_split(data_dir, "train")
    torch.manual_seed(int(cfg.seed))
    model = build_model(cfg, manifest["vocab_size"])
    n_params = model.non_embedding_params()
    cfg = resolve_budget(cfg, n_params)
    t = cfg.train
    on_gpu = torch.cuda.is_available() and cfg.scale.accelerator != "cpu"
    if on_gpu:  # float32 matmuls (the recurrent mixers' chunked math) on TF32 tensor cores
        torch.set_float32_matmul_precision("high")
    warm = (torch.device("cuda"), int(t.micro_batch_size), int(cfg.scale.context) - 1) if on_gpu else None
    model, step_model = (shared or SharedModel()).take(model, bool(t.compile), warm, t.get("compile_mode"))
    step_tokens = tokens_per_step(int(t.batch_size), int(cfg.scale.context))
    recorder = run_recorder(cfg, run_dir, model, n_params)
    lit = LitLM(model, cfg, step_model)
    lit.identity = recorder.identity = stamp(identity)
    stopper = StopOnSignal(last, slurm_deadline(), ddp_every=int(t.log_every))
    trainer = lightning_trainer(cfg, run_dir, on_gpu, [recorder, stopper], experiment_logger(cfg, run_dir))
    if trainer.is_global_zero:
        write_json(run_dir / PROVENANCE, train_provenance(provenance(cfg), identity, branch, changes))
        log.info("%s: %s, %d steps of %d tokens", run_dir, f"resuming from {last}" if last.exists() else "starting",
                 int(t.steps), step_tokens)
    session_start = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "from_step": resumed_step}
    started = time.perf_counter()
    fit(trainer, lit, TrainData(tokens, cfg, int(cfg.seed)), last if last.exists() else None)
    if trainer.is_global_zero:
        record_session(run_dir, session_start, int(trainer.global_step), stop_reason(trainer, stopper, cfg),
                       time.perf_counter() - started)
    if stopper.signum is not None:
        raise Stopped(stopper.signum, int(trainer.global_step))
    return finish_run(cfg, run_dir, trainer, recorder, n_params, started)


def run_recorder(cfg: DictConfig, run_dir: Path, model: HybridLM, n_params: int, save=None,
                 progress: bool = True) -> RunRecorder:
    """The run's RunRecorder: its trajectory steps, resume points, forks and FLOPs per step (one run's share)."""
    t = cfg.train
    step_tokens = tokens_per_step(int(t.batch_size), int(cfg.scale.context))
    forks = [b.fork_step for b in branch_plan(cfg, n_params) if b.end_step < int(t.steps)]
    return RunRecorder(run_dir, checkpoint_steps(cfg, n_params), step_tokens,
                       3 * model.flops_per_sequence(int(cfg.scale.context) - 1) * int(t.batch_size), peak_flops(),
                       int(t.log_every), int(t.last_every or max(1, int(t.steps) // 10)), fork_steps=forks,
                       progress=progress and not progress_bar(), save=save)


def progress_bar() -> bool:
    """Lightning's progress bar (off inside Snakemake jobs, whose logs get one line per metrics row instead)."""
    return os.environ.get("HYBRIDLAB_PROGRESS", "1") != "0"


def lightning_trainer(cfg: DictConfig, run_dir: Path, on_gpu: bool, callbacks: list, logger) -> pl.Trainer:
    """The Trainer of one training process: train.* settings, DDP over devices x nodes (gloo on CPU, NCCL on GPU),
    no Lightning checkpointing (the callbacks write everything)."""
    t = cfg.train
    devices, nodes = int(t.devices), int(t.num_nodes)
    precision = t.precision if t.precision != "auto" else ("bf16-mixed" if on_gpu else "32-true")
    warnings.filterwarnings("ignore", ".*The `srun` command is available.*")  # one-process jobs on SLURM hosts
    # Inside SLURM, Lightning's own auto-requeue (a mid-step save to hpc_ckpt_N.ckpt in the working directory,
    # which a later fresh run there would resume from) is off: StopOnSignal saves last.ckpt and requeues.
    slurm = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
    return pl.Trainer(
        max_steps=int(t.stop_after or t.steps), max_epochs=-1, accelerator="gpu" if on_gpu else "cpu", devices=devices,
        num_nodes=nodes,
        precision=precision, gradient_clip_val=float(t.grad_clip) or None,
        accumulate_grad_batches=int(t.batch_size) // (int(t.micro_batch_size) * devices * nodes),
        logger=logger, log_every_n_steps=int(t.log_every), enable_checkpointing=False,
        callbacks=callbacks, use_distributed_sampler=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, enable_progress_bar=progress_bar(),
        plugins=slurm, default_root_dir=run_dir,
    )


def fit(trainer: pl.Trainer, lit, data, ckpt: Path | None) -> None:
    """trainer.fit from `ckpt` (a resume point) or from the start, without the warnings that do not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*resuming from a checkpoint that ended before the epoch.*")
        warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")  # torch 2.13
        trainer.fit(lit, datamodule=data, ckpt_path=None if ckpt is None else str(ckpt), weights_only=True)


def stop_reason(trainer: pl.Trainer, stopper: StopOnSignal, cfg: DictConfig) -> str:
    return stopper.reason or ("finished" if trainer.global_step >= int(cfg.train.steps) else "train.stop_after")


def finish_run(cfg: DictConfig, run_dir: Path, trainer: pl.Trainer, recorder: RunRecorder, n_params: int,
               started: float) -> dict:
    """After fit: the run's summary; when it reached train.steps, its final metrics.csv and train_done.json."""
    t = cfg.train
    step_tokens = tokens_per_step(int(t.batch_size), int(cfg.scale.context))
    metrics = recorder.metrics()
    if trainer.global_step < int(t.steps):
        log.info("%s: stopped at step %d of %d; re-run to resume", run_dir, trainer.global_step, int(t.steps))
        return {"steps": int(trainer.global_step), "finished": False}
    if not trainer.is_global_zero:  # rank 0 writes the run's tables
        return {"steps": int(trainer.global_step), "rank": trainer.global_rank}
    recorder.write_metrics(trainer)
    summary = {"steps": int(trainer.global_step), "tokens": int(trainer.global_step) * step_tokens,
               "final_loss": float(metrics["loss"].iloc[-1]) if len(metrics) else float("nan"),
               "wall_s_last_session": time.perf_counter() - started,
               "non_embedding_params": n_params,
               "checkpoints": [ckpt_name(s * step_tokens) for s in sorted(recorder.ckpt_steps)]}
    write_json(run_dir / "train_done.json", summary)
    return summary


def record_session(run_dir: Path, start: dict, to_step: int, ended: str, wall_s: float) -> None:
    """Append this session to RUN/sessions.jsonl (the file rewritten atomically)."""
    import json

    path = run_dir / "sessions.jsonl"
    line = {**start, "to_step": to_step, "ended": ended, "wall_s": round(wall_s, 1), "host": platform.node(),
            "slurm_job": os.environ.get("SLURM_JOB_ID")}
    old = path.read_bytes() if path.exists() else b""
    write_bytes(path, old + (json.dumps(line, sort_keys=True) + "\n").encode())


def train_group(cfgs: list[DictConfig], data_dir: str | Path, run_dirs: list[str | Path]) -> list[dict]:
    """Several runs (the seeds of one variant) in this process on one model object, compiled once: the compile and
    the process start are paid once, and each run is still exactly its own (its seed's initialisation and data
    order, its own folder, checkpoints and tables; tests/unit/test_train.py). With train.stack_seeds the runs not
    yet done train together in one stacked step where they can (train/stacked.py), else one after another. With
    $HYBRIDLAB_TRAIN_LOCK set, the runs train while holding that lock (SharedModel)."""
    if len(cfgs) != len(run_dirs):
        raise ValueError(f"train_group: {len(cfgs)} configs for {len(run_dirs)} run folders")
    for cfg, run_dir in zip(cfgs, run_dirs, strict=True):  # every folder checked before the first run trains
        check_data(data_dir, cfg, "train")
        check_resume(run_dir, run_identity(cfg))
        check_memory(cfg, int(read_manifest(data_dir)["vocab_size"]))
    shared = SharedModel(os.environ.get("HYBRIDLAB_TRAIN_LOCK") or None)
    summaries: dict[int, dict] = {}
    try:
        pending = [i for i, d in enumerate(run_dirs) if not (Path(d) / "train_done.json").exists()]
        if cfgs[0].train.get("stack_seeds") and len(pending) > 1:
            from hybridlab.train.stacked import resume_steps, train_stacked, why_not_stacked

            group = [cfgs[i] for i in pending]
            reason = why_not_stacked(group)
            steps = set() if reason else set(resume_steps([Path(run_dirs[i]) for i in pending],
                                                          [run_identity(c) for c in group]))
            if len(steps) > 1:
                reason = f"the runs resume from different steps {sorted(steps)}"
            if reason is None:
                started = time.perf_counter()
                for i, s in zip(pending, train_stacked(group, data_dir, [run_dirs[i] for i in pending], shared,
                                                       steps.pop()), strict=True):
                    summaries[i] = s
                log.info("%d runs of %s stacked: done in %.0f s", len(pending), cfgs[0].variant.name,
                         time.perf_counter() - started)
            else:
                log.info("train.stack_seeds: %s; the runs train one after another", reason)
        for i, (cfg, run_dir) in enumerate(zip(cfgs, run_dirs, strict=True)):
            if i in summaries:
                continue
            started = time.perf_counter()
            summaries[i] = train(cfg, data_dir, run_dir, shared)
            log.info("run %d/%d (%s seed %d) done in %.0f s", i + 1, len(cfgs), cfg.variant.name, int(cfg.seed),
                     time.perf_counter() - started)
    finally:
        shared.release()
    return [summaries[i] for i in range(len(cfgs))]


def train_branch(cfg: DictConfig, data_dir: str | Path, stable_dir: str | Path, budget_k: float,
                 out_dir: str | Path) -> dict:
    """One decay branch of the WSD grid: resume the stable run's state at the branch's fork step and train to
    the budget with the decay of a run of exactly that length. The largest budget's branch is the stable run's
    own end, so its final checkpoint is taken over instead of recomputed."""
    import shutil

    from hybridlab.config import ConfigError

    stable_dir, out = Path(stable_dir), Path(out_dir)
    identity = run_identity(cfg)  # the stable run's: a branch is that run, decayed at one budget
    check_run(stable_dir, cfg)
    with torch.device("meta"):
        n_params = build_model(cfg, read_manifest(data_dir)["vocab_size"]).non_embedding_params()
    cfg = resolve_budget(cfg, n_params)  # the stable run's steps: a preset's train.steps is not its length
    plan = {b.budget_tokens: b for b in branch_plan(cfg, n_params)}
    branch = plan.get(int(budget_k * n_params))
    if branch is None:
        raise ConfigError("budget", budget_k, f"one of train.budgets_k {list(cfg.train.budgets_k)} (schedule wsd)")
    info = {"budget_k": float(budget_k), "fork_step": branch.fork_step, "end_step": branch.end_step,
            "stable": str(stable_dir)}
    check_data(data_dir, cfg, "train")
    check_resume(out, identity, info)
    if (out / "train_done.json").exists():
        return read_json(out / "train_done.json")
    stable = read_json(stable_dir / "train_done.json") if (stable_dir / "train_done.json").exists() else None
    if stable is not None and branch.end_step == stable["steps"]:
        final = stable_dir / "ckpt" / stable["checkpoints"][-1]
        with folder_lock(out):
            with atomic_path(out / "ckpt" / final.name) as tmp:
                shutil.copyfile(final, tmp)
            write_json(out / PROVENANCE, train_provenance(read_json(stable_dir / PROVENANCE), identity, info, []))
            summary = {**stable, "branch_of": str(stable_dir), "fork_step": branch.fork_step,
                       "checkpoints": [final.name]}
            write_json(out / "train_done.json", summary)
        return summary
    fork = fork_path(stable_dir, branch.fork_step)
    if not fork.exists():
        raise FileNotFoundError(f"{fork}: missing; the stable run has not reached step {branch.fork_step}")
    if not (out / "last.ckpt").exists():
        check_stamp(fork, load_verified(fork, covered=RESUME_COVERED), identity)
        with folder_lock(out), atomic_path(out / "last.ckpt") as tmp:
            shutil.copyfile(fork, tmp)
    bcfg = cfg.copy()
    bcfg.train.budget_k, bcfg.train.budgets_k, bcfg.train.steps = None, [], branch.end_step
    bcfg.train.n_checkpoints, bcfg.train.ckpt_every = 1, None  # the budget's point: the decayed end only
    return train(bcfg, data_dir, out, identity=identity, branch=info)
