"""Lightning pieces: the LightningModule around HybridLM, the step-indexed data stream, and the callback that
writes trajectory checkpoints, the resumable `last.ckpt` and the metrics table (rewritten as each row comes, so a
running job's `metrics.csv` shows how far it got; inside Snakemake, where the progress bar is off, each row is also
one progress line in the job's log).

The data order is a pure function of (seed, global step): on resume the stream restarts exactly at the
restored step, so an interrupted run ends where an uninterrupted one does.
"""

from __future__ import annotations

import functools
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from hybridlab.analysis.schemas import TRAIN_COLUMNS
from hybridlab.digest import DIGEST_KEY, tensor_digest
from hybridlab.identity import IDENTITY_KEY
from hybridlab.io import atomic_path, write_table
from hybridlab.models import HybridLM
from hybridlab.progress import clock

try:
    import lightning.pytorch as pl
    from lightning.pytorch.plugins.environments import SLURMEnvironment  # noqa: F401 (for run.py)
except ImportError:  # the GPU image ships the standalone package
    import pytorch_lightning as pl
    from pytorch_lightning.plugins.environments import SLURMEnvironment  # noqa: F401 (for run.py)

log = logging.getLogger("hybridlab")


def _quiet_lightning_logging() -> None:
    """One line per Lightning message: `lightning` gives its logger a console handler of its own and lets the
    records propagate too, so under a configured root logger (the CLI's) every line printed twice; and its
    advertising tips go."""
    if logging.getLogger().hasHandlers():
        lightning_log = logging.getLogger("lightning")
        lightning_log.handlers = [h for h in lightning_log.handlers if type(h) is not logging.StreamHandler]
    for name in ("lightning.pytorch.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero"):
        logging.getLogger(name).addFilter(lambda record: not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB}"))


_quiet_lightning_logging()

# The parts of last.ckpt its checksum covers: weights and optimizer state (what a flipped byte would corrupt).
RESUME_COVERED = ("state_dict", "optimizer_states")


class NonFiniteLossError(RuntimeError):
    pass


class TokenDataset(Dataset):
    def __init__(self, tokens: np.ndarray):
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.tokens[i], dtype=np.int64))


class StepSampler(Sampler[list[int]]):
    """Yields this rank's micro-batches for global steps [start, total): global step s takes sequences
    perm_e[(s*B) mod N ...] of the epoch-e permutation, split across ranks and then into micro-batches."""

    def __init__(self, n_seqs: int, batch: int, micro: int, seed: int, total_steps: int, start_fn,
                 rank: int = 0, world: int = 1):
        self.n, self.batch, self.micro, self.seed, self.total = n_seqs, batch, micro, seed, total_steps
        self.start_fn, self.rank, self.world = start_fn, rank, world
        if batch % (micro * world):
            raise ValueError(f"train.batch_size={batch} must be a multiple of micro_batch_size*devices "
                             f"({micro}*{world})")

    @functools.lru_cache(maxsize=2)  # noqa: B019 - a sampler lives for one run; two epochs meet at a boundary
    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def global_batch(self, step: int) -> np.ndarray:
        idx = np.arange(step * self.batch, (step + 1) * self.batch)
        epochs, pos = idx // self.n, idx % self.n
        return np.array([self.permutation(int(e))[p] for e, p in zip(epochs, pos, strict=True)])

    def __iter__(self):
        per_rank = self.batch // self.world
        for step in range(self.start_fn(), self.total):
            mine = self.global_batch(step)[self.rank * per_rank:(self.rank + 1) * per_rank]
            for j in range(0, per_rank, self.micro):
                yield mine[j:j + self.micro].tolist()

    def __len__(self) -> int:
        return (self.total - self.start_fn()) * (self.batch // self.world // self.micro)


def lr_multiplier(step: int, cfg) -> float:
    """Warmup then cosine (or warmup-stable-decay) multiplier of the base learning rate."""
    from hybridlab.train.schedule import warmup_cosine, wsd

    t = cfg.train
    if t.schedule == "wsd":
        decay = max(1, int(round(t.steps * t.get("decay_frac", 0.2))))
        return wsd(step, t.steps - decay, decay, t.warmup_steps, t.final_lr_ratio)
    return warmup_cosine(step, t.steps, t.warmup_steps, t.final_lr_ratio)


class LitLM(pl.LightningModule):
    """`model` is the plain module (its state is what checkpoints hold); the forward of `step_model` (the same
    module compiled, or `model` itself) is what trains. The training step never waits for the GPU: losses
    stay on the device, and their finiteness is checked where the recorder writes anything (`check_finite`)."""

    def __init__(self, model: HybridLM, cfg, step_model=None):
        super().__init__()
        self.model, self.cfg = model, cfg
        self._step_model = (model if step_model is None else step_model,)  # a tuple: not a second submodule
        self.micro_losses: list[torch.Tensor] = []  # this rank's micro-batch losses since the last optimizer step
        self._first_bad: torch.Tensor | None = None  # step of the first non-finite loss, -1 while all are finite
        self.identity: str | None = None  # the run's identity, stamped into every checkpoint (hybridlab.identity)

    def check_finite(self) -> None:
        """Raise NonFiniteLossError, naming the first bad step, if any loss so far was not finite (a sync)."""
        if self._first_bad is not None and (step := int(self._first_bad)) >= 0:
            raise NonFiniteLossError(
                f"non-finite loss at step {step}; the last good checkpoint is kept (lower train.lr or enable "
                "train.grad_clip)")

    def step_loss(self) -> float:
        """The loss of the optimizer step just taken: the mean over micro-batches and (under DDP) over ranks,
        so one-GPU and multi-GPU runs of one global batch log the same number. A collective: every rank calls it."""
        loss = torch.stack(self.micro_losses).mean()
        self.micro_losses.clear()
        return float(self.trainer.strategy.reduce(loss, reduce_op="mean"))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        logits = self._step_model[0](batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())
        detached = loss.detach()
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(detached) & (self._first_bad < 0)
        self._first_bad = torch.where(bad, self.global_step, self._first_bad)
        self.micro_losses.append(detached)
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[DIGEST_KEY] = tensor_digest({k: checkpoint.get(k) for k in RESUME_COVERED})
        if self.identity is not None:
            checkpoint[IDENTITY_KEY] = self.identity

    def configure_optimizers(self):
        t = self.cfg.train
        if t.optimizer == "muon":
            from hybridlab.train.muon import build_optimizers

            opt = build_optimizers(self.model, lr=t.lr, muon_lr=t.muon_lr, weight_decay=t.weight_decay,
                                   betas=tuple(t.betas))
        else:
            from hybridlab.train.muon import adamw_groups

            # foreach, not fused: Lightning refuses gradient clipping with a fused optimizer
            opt = torch.optim.AdamW(adamw_groups(self.model, float(t.weight_decay)), lr=t.lr,
                                    betas=tuple(t.betas))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, self.cfg))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class TrainData(pl.LightningDataModule):
    def __init__(self, tokens: np.ndarray, cfg, seed: int):
        super().__init__()
        self.tokens, self.cfg, self.seed = tokens, cfg, seed

    def train_dataloader(self) -> DataLoader:
        t = self.cfg.train
        trainer = self.trainer
        sampler = StepSampler(len(self.tokens), t.batch_size, t.micro_batch_size, self.seed, t.steps,
                              lambda: trainer.global_step, trainer.global_rank, trainer.world_size)
        return DataLoader(TokenDataset(self.tokens), batch_sampler=sampler, num_workers=t.num_workers,
                          pin_memory=torch.cuda.is_available())


class RunRecorder(pl.Callback):
    """Trajectory checkpoints (weights only, named by tokens seen), `last.ckpt` for resume, metrics rows.

    Its state (the metrics rows) travels inside `last.ckpt`, so a resumed run's table is complete. Rank 0 rewrites
    `metrics.csv` (atomically) when a session starts and after every row: TRAIN_COLUMNS, then `lr_<group>` for
    every parameter group of the optimizer (`lr` is the first group's). With `progress` each row is also logged
    as one line (step, loss, learning rate, tokens/s, elapsed and remaining time of this session).

    A trajectory checkpoint's weights are copied off the GPU at its step and written (digest, atomic rename) by a
    background thread, so training does not wait for the disk. Every write has finished before a resume point
    (last.ckpt, a fork, a stop on a signal) is saved, since a run resumed from step s never writes the
    checkpoints of steps up to s again, and when training ends (or raised)."""

    def __init__(self, run_dir: Path, ckpt_steps: list[int], tokens_per_step: int, flops_per_step: float,
                 peak_flops: float | None, log_every: int, last_every: int, fork_steps: list[int] = (),
                 progress: bool = False, save=None):
        self.save = save or save_state  # save(trainer, path): a resume point (stacked runs write their own share)
        self.run_dir, self.ckpt_steps, self.fork_steps = Path(run_dir), set(ckpt_steps), set(fork_steps)
        self.tokens_per_step, self.flops_per_step, self.peak = tokens_per_step, flops_per_step, peak_flops
        self.log_every, self.last_every, self.progress = log_every, last_every, progress
        self.rows: list[dict] = []
        self._t0 = self._session_t0 = time.perf_counter()
        self._last_step_logged = self._session_step0 = self._step_seen = 0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-writer")
        self._writes: list[Future] = []
        self.identity: str | None = None  # stamped into each trajectory checkpoint

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.rows = list(state["rows"])

    def metrics(self) -> pd.DataFrame:
        """The metrics table so far: TRAIN_COLUMNS, then the per-group learning rates."""
        extra = sorted({k for row in self.rows for k in row} - set(TRAIN_COLUMNS))
        return pd.DataFrame(self.rows, columns=[*TRAIN_COLUMNS, *extra])

    def write_metrics(self, trainer) -> None:
        if trainer.is_global_zero:
            write_table(self.run_dir / "metrics.csv", self.metrics())

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = self._session_t0 = time.perf_counter()
        self._last_step_logged = self._session_step0 = self._step_seen = trainer.global_step
        self.write_metrics(trainer)  # a resumed run's table is there from the start (Snakemake removes outputs)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._step_seen:
            return  # still accumulating gradients (the step was handled when it ended)
        self._step_seen = step
        last_point = step % self.last_every == 0 or step == trainer.max_steps
        resume_point = last_point or step in self.fork_steps
        if resume_point or step in self.ckpt_steps:
            pl_module.check_finite()  # nothing non-finite is ever saved
        if step % self.log_every == 0 or step in self.ckpt_steps:
            self._log_row(trainer, pl_module, step)
        else:
            pl_module.micro_losses.clear()
        if trainer.is_global_zero and step in self.ckpt_steps:
            state = weights_on_cpu(pl_module.model)
            self._writes.append(self._writer.submit(write_weights, state, self.run_dir / "ckpt", step,
                                                    step * self.tokens_per_step, self.identity))
        if resume_point:
            self.flush()  # a resume point comes after the trajectory checkpoints of its steps
        if step in self.fork_steps:  # full state: a WSD decay branch starts here
            self.save(trainer, fork_path(self.run_dir, step))
        if last_point:
            self.save(trainer, self.run_dir / "last.ckpt")

    def on_train_end(self, trainer, pl_module) -> None:
        self.flush()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.flush(raise_errors=False)

    def flush(self, raise_errors: bool = True) -> None:
        """Wait for every checkpoint write; re-raise the first that failed."""
        writes, self._writes = self._writes, []
        errors = [e for e in (f.exception() for f in writes) if e is not None]
        if errors and raise_errors:
            raise errors[0]

    def _log_row(self, trainer, pl_module, step: int) -> None:
        pl_module.check_finite()
        loss = pl_module.step_loss()
        dt = time.perf_counter() - self._t0
        n = step - self._last_step_logged
        tok_s = n * self.tokens_per_step / dt if dt > 0 else float("nan")
        groups = trainer.optimizers[0].param_groups
        row = {"step": step, "tokens": step * self.tokens_per_step, "loss": loss, "lr": groups[0]["lr"],
               "tokens_per_s": tok_s,
               "mfu": (n * self.flops_per_step / dt / (self.peak * trainer.world_size)) if self.peak and dt > 0
               else float("nan"),
               "peak_mem_gb": (torch.cuda.max_memory_allocated() / 2**30) if torch.cuda.is_available() else 0.0,
               **{f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(groups)}}
        self.rows.append(row)
        self.write_metrics(trainer)
        if self.progress and trainer.is_global_zero:
            self._progress_line(trainer, row)
        for logger in trainer.loggers:  # train.logger's view (TensorBoard, W&B, CSV): the same row at its step
            logger.log_metrics({k: v for k, v in row.items() if k != "step" and v == v}, step=step)
        pl_module.log("tok/s", tok_s, prog_bar=True, logger=False, on_step=True, on_epoch=False)
        self._t0, self._last_step_logged = time.perf_counter(), step

    def _progress_line(self, trainer, row: dict) -> None:
        step, total = row["step"], trainer.max_steps
        elapsed = time.perf_counter() - self._session_t0
        done = step - self._session_step0
        eta = elapsed / done * (total - step) if done > 0 else float("nan")
        lrs = " ".join(f"{k}={v:.3g}" for k, v in row.items() if k.startswith("lr_"))
        log.info("step %d/%d (%.0f%%) loss %.4f %s %.3g tokens/s elapsed %s eta %s", step, total,
                 100 * step / total, row["loss"], lrs, row["tokens_per_s"], clock(elapsed), clock(eta))


def ckpt_name(tokens: int) -> str:
    return f"tokens_{tokens:012d}.pt"


def weights_on_cpu(model: HybridLM) -> dict[str, torch.Tensor]:
    """A copy of the model's weights on the CPU (the training step may change the originals right after)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def save_weights(model: HybridLM, folder: Path, step: int, tokens: int) -> Path:
    """A trajectory checkpoint: plain tensors only, loadable with torch.load(weights_only=True)."""
    return write_weights(weights_on_cpu(model), folder, step, tokens)


def write_weights(state: dict[str, torch.Tensor], folder: Path, step: int, tokens: int,
                  identity: str | None = None) -> Path:
    path = folder / ckpt_name(tokens)
    blob = {"model": state, "step": step, "tokens": tokens, DIGEST_KEY: tensor_digest({"model": state})}
    if identity is not None:
        blob[IDENTITY_KEY] = identity
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return path


def fork_path(run_dir: Path, step: int) -> Path:
    """The full training state at a WSD branch's fork step, from which `train_branch` resumes."""
    return Path(run_dir) / "forks" / f"step_{step:08d}.ckpt"


def save_state(trainer, path: Path) -> None:
    """Full training state (resume point) written atomically to `path`."""
    # Trainer.save_checkpoint is a collective (it ends in a barrier): every rank calls it, and Lightning's
    # strategy writes on global rank 0 alone, which alone goes through the atomic temporary file.
    # weights_only=False (the full state) said explicitly, so Lightning does not log its default on every save.
    if trainer.is_global_zero:
        with atomic_path(path) as tmp:
            trainer.save_checkpoint(tmp, weights_only=False)
    else:
        trainer.save_checkpoint(path, weights_only=False)

